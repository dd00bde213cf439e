"""The shard format shared by the packing step (writer) and the trainer (reader).

A dataset version is a folder::

    shard-000000.tar ...          WebDataset tars: members <key>.json, <key>.txt,
                                  <key>.0000.dcm (<key>.0001.dcm ...), <key>.img.npy
                                  (<key>.img1.npy ...), <key>.wav.npy
    index/shard-000000.json       {"format_version", "shard",
                                  "samples": {key: {ext: [offset, length]}}}
    manifest.json                 {"format", "format_version", "shards": [{name, sha256, bytes,
                                  samples}], "samples", "modalities": {text, image, waveform},
                                  "lineage": {...}}

``offset`` is the byte offset of the member's data inside the tar and ``length`` its size, so
a reader seeks straight to one sample. The tars are plain USTAR files that ``webdataset``
reads as they are. Pure Python + numpy (no torch): ``apps/datasets`` imports the writer.

Format 2 added the ``.dcm`` members: de-identified DICOM files copied byte for byte, in the
order the packer gives them, and listed in the sample's ``json`` as ``dicom`` (the source
sha256 of member n at position n). The reader decodes them into the same int16/uint8 stacks
(and ``meta["images"]`` records) that format 1 stored as ``img.npy`` (``trainer.data.dicom``),
so packing copies bytes and the decoding happens once per read, in the loader's workers.

The writer frames the tar itself (fixed USTAR headers: mtime 0, uid/gid 0, no names, mode
0444). It reads each DICOM file once; two helper threads hash what it writes, one checking each
file against its pinned sha256, one hashing the shard for the manifest (no shard is read back).

Change the format only by raising ``FORMAT_VERSION`` and keeping readers of the old one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import queue
import re
import tarfile
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "medctl-shards"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
_KEY = re.compile(r"^[A-Za-z0-9_\-]+$")  # WebDataset splits member names at the first dot
_DICOM = re.compile(r"^(\d+)\.dcm$")
_CHUNK = 1 << 20  # bytes read, written and hashed at a time when copying a file
_END = tarfile.NUL * (2 * tarfile.BLOCKSIZE)  # end-of-archive marker
# Written bytes handed to the kernel for writeback at a time, so the disk writes while the
# next files are copied and hashed instead of all at the closing fsync.
_WRITEBACK = 16 << 20


class ShardFormatError(ValueError):
    """A dataset folder, shard or sample does not follow the format; the message names it."""


@dataclass(frozen=True)
class DicomFile:
    """A DICOM file to copy into a shard byte for byte, pinned by its sha256: the writer hashes
    the bytes as it copies them and refuses the file when they differ. ``label`` names the
    file in errors (an id, never a path)."""

    path: Path
    sha256: str
    label: str


@dataclass
class Sample:
    """One study or encounter: metadata, optional report text, images, waveform.

    Images are either arrays (``images``) or DICOM files (``dicom``, written as ``.dcm``
    members); a sample read back has them all decoded in ``images``.
    """

    key: str
    meta: dict[str, Any] = field(default_factory=dict)
    text: str | None = None
    images: list[np.ndarray] = field(default_factory=list)  # int16 [S,R,C] or uint8 [S,R,C,3]
    wave: np.ndarray | None = None  # float32 [channels, samples]
    dicom: list[DicomFile] = field(default_factory=list)  # written as 0000.dcm, 0001.dcm, ...

    @property
    def modalities(self) -> list[str]:
        """Modalities present, in a fixed order."""
        out = []
        if self.text:
            out.append("text")
        if self.images or self.dicom:
            out.append("image")
        if self.wave is not None:
            out.append("waveform")
        return out


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(path: str | Path) -> None:
    """fsync a directory so a rename inside it survives a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary name, fsync, rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _check_image(key: str, array: np.ndarray) -> None:
    gray = array.dtype == np.int16 and array.ndim == 3
    colour = array.dtype == np.uint8 and array.ndim == 4 and array.shape[-1] == 3
    if not (gray or colour):
        raise ShardFormatError(
            f"sample {key}: image must be int16 [slices, rows, cols] or uint8 "
            f"[slices, rows, cols, 3], got {array.dtype} {list(array.shape)}"
        )


class _Hashing:
    """The writer's two SHA-256 jobs, on two helper threads in a chain, fed with the bytes as
    they are written: the first checks each copied file against its pinned sha256, the
    second hashes the shard (for the manifest; the shard is never read back).

    hashlib releases the GIL on large buffers, so the writing thread only reads and writes.
    File bytes travel in pooled buffers that the last stage hands back (no fresh memory, and
    its page faults, per file). A file that differs is reported through ``error()`` a little
    after it was written: the writer checks after each sample and before finishing a shard.
    """

    def __init__(self, buffers: int = 16) -> None:
        self._shard = hashlib.sha256()
        self._errors: list[str] = []
        self._check_q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._shard_q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        for _ in range(buffers):
            self._free.put(bytearray(_CHUNK))
        self._threads = [
            threading.Thread(target=self._check, name="file-sha256", daemon=True),
            threading.Thread(target=self._hash_shard, name="shard-sha256", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _check(self) -> None:
        digest = hashlib.sha256()
        while (item := self._check_q.get()) is not None:
            if isinstance(item, DicomFile):  # the file's last chunk came before it
                if digest.hexdigest() != item.sha256:
                    self._errors.append(f"{item.label}: file does not match its recorded sha256")
                digest = hashlib.sha256()
                continue
            if isinstance(item, tuple):
                digest.update(memoryview(item[0])[: item[1]])
            self._shard_q.put(item)
        self._shard_q.put(None)

    def _hash_shard(self) -> None:
        while (item := self._shard_q.get()) is not None:
            if isinstance(item, tuple):
                buffer, length = item
                self._shard.update(memoryview(buffer)[:length])
                self._free.put(buffer)
            else:
                self._shard.update(item)

    def buffer(self) -> bytearray:
        """A pooled buffer of ``_CHUNK`` bytes, for ``file_chunk`` or ``release``."""
        return self._free.get()

    def release(self, buffer: bytearray) -> None:
        self._free.put(buffer)

    def update(self, data: bytes) -> None:
        """Bytes written that are not part of a checked file (headers, padding, JSON)."""
        self._check_q.put(data)

    def file_chunk(self, buffer: bytearray, length: int) -> None:
        self._check_q.put((buffer, length))

    def file_end(self, source: DicomFile) -> None:
        self._check_q.put(source)

    def error(self) -> str | None:
        return self._errors[0] if self._errors else None

    def hexdigest(self) -> str:
        """Wait for both threads to finish; the shard's sha256."""
        if self._threads[0].is_alive():
            self._check_q.put(None)
        for thread in self._threads:
            thread.join()
        return self._shard.hexdigest()


def _header(name: str, size: int) -> bytes:
    """A USTAR header with nothing that varies between builds (tarfile's defaults: uid/gid 0,
    no user or group names) but the name and size."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o444
    info.mtime = 0  # reproducible shards: same samples, same bytes, same sha256
    try:
        return info.tobuf(tarfile.USTAR_FORMAT, tarfile.ENCODING, "surrogateescape")
    except ValueError as exc:
        raise ShardFormatError(f"member {name!r} cannot be a USTAR member: {exc}") from None


def _read_ahead(files: list[DicomFile]) -> None:
    """Ask the kernel to start reading a sample's files now (POSIX_FADV_WILLNEED), so the disk
    works on the next files while the first is copied and hashed. Only a hint: a file that
    cannot be opened here fails, with its reason, when it is copied."""
    if not hasattr(os, "posix_fadvise"):
        return
    for source in files:
        try:
            fd = os.open(source.path, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)


def _member_bytes(size: int) -> int:
    """Bytes a member of ``size`` takes in a tar: header, data, padding to the block."""
    return tarfile.BLOCKSIZE + size + (-size % tarfile.BLOCKSIZE)


@dataclass
class _Prepared:
    """A sample encoded for a shard: its in-memory members (JSON, text, arrays) as bytes and
    the files to copy with the size they had when planned, so the writer knows, before any
    file is copied, exactly how many bytes the sample adds to a shard."""

    key: str
    members: list[tuple[str, bytes]]
    files: list[tuple[str, DicomFile, int]]

    @property
    def size(self) -> int:
        return sum(_member_bytes(len(data)) for _, data in self.members) + sum(
            _member_bytes(size) for _, _, size in self.files
        )


class _ShardJob:
    """Writes one shard: members, copied files, end-of-archive, fsync, rename, index file.

    One job is used by one thread at a time; jobs of different shards share nothing, so a
    writer with ``workers > 1`` runs several at once.
    """

    def __init__(self, out: Path, number: int, stop: threading.Event) -> None:
        self.out = out
        self.name = f"shard-{number:06d}.tar"
        self.tmp = out / f".{self.name}.tmp"
        self._stop = stop
        self._fh: Any = open(self.tmp, "wb", buffering=1 << 16)  # noqa: SIM115 - closed in finish
        self._hash = _Hashing()
        self._offset = self._written_back = 0
        self._index: dict[str, dict[str, list[int]]] = {}

    def _emit(self, data: bytes) -> None:
        self._fh.write(data)
        self._hash.update(data)
        self._offset += len(data)

    def _pad(self, size: int) -> None:
        if size % tarfile.BLOCKSIZE:
            self._emit(tarfile.NUL * (tarfile.BLOCKSIZE - size % tarfile.BLOCKSIZE))

    def _add(self, name: str, data: bytes) -> list[int]:
        self._emit(_header(name, len(data)))
        start = self._offset  # the member's bytes follow its header
        self._emit(data)
        self._pad(len(data))
        return [start, len(data)]

    def _add_file(self, name: str, source: DicomFile, planned: int) -> list[int]:
        """Copy ``source`` in: one read of each byte, checked against its pinned sha256 (by
        ``_Hashing``, which reports a difference shortly after)."""
        try:
            src = open(source.path, "rb", buffering=0)  # noqa: SIM115 - closed below
        except OSError as exc:
            raise ShardFormatError(
                f"{source.label}: file unreadable ({type(exc).__name__})"
            ) from None
        with src:
            size = os.fstat(src.fileno()).st_size
            if size != planned:  # the shard's cut was planned from the size: it must not move
                raise ShardFormatError(f"{source.label}: file changed size while being packed")
            self._emit(_header(name, size))
            start = self._offset
            left = size
            while left:
                buffer = self._hash.buffer()
                n = src.readinto(memoryview(buffer)[: min(_CHUNK, left)])
                if not n:
                    self._hash.release(buffer)
                    raise ShardFormatError(f"{source.label}: file shrank while being copied")
                self._fh.write(memoryview(buffer)[:n])
                self._hash.file_chunk(buffer, n)
                self._offset += n
                left -= n
        self._hash.file_end(source)
        self._pad(size)
        if self._offset - self._written_back >= _WRITEBACK:
            self._start_writeback()
        return [start, size]

    def _start_writeback(self) -> None:
        # On Linux, DONTNEED starts writeback of the dirty range without waiting for it (and
        # drops pages already clean): the shard is never read back here, so nothing is lost.
        if hasattr(os, "posix_fadvise"):
            self._fh.flush()
            length = self._offset - self._written_back
            os.posix_fadvise(self._fh.fileno(), self._written_back, length, os.POSIX_FADV_DONTNEED)
        self._written_back = self._offset

    def add(self, sample: _Prepared) -> None:
        if self._stop.is_set():
            raise ShardFormatError("packing stopped")
        _read_ahead([source for _, source, _ in sample.files])
        index = {ext: self._add(f"{sample.key}.{ext}", data) for ext, data in sample.members}
        for ext, source, size in sample.files:
            index[ext] = self._add_file(f"{sample.key}.{ext}", source, size)
        if (error := self._hash.error()) is not None:  # this sample's files or earlier ones
            raise ShardFormatError(error)
        self._index[sample.key] = index

    def finish(self) -> dict[str, Any]:
        """End the archive, make it durable under its final name; the manifest's record."""
        self._emit(_END)
        # Like tarfile and GNU tar: the archive is a whole number of 10 KiB records.
        if self._offset % tarfile.RECORDSIZE:
            self._emit(tarfile.NUL * (tarfile.RECORDSIZE - self._offset % tarfile.RECORDSIZE))
        self._fh.flush()
        digest = self._hash.hexdigest()
        if (error := self._hash.error()) is not None:
            raise ShardFormatError(error)
        os.fsync(self._fh.fileno())
        self._fh.close()
        final = self.out / self.name
        os.replace(self.tmp, final)
        index = {"format_version": FORMAT_VERSION, "shard": self.name, "samples": self._index}
        write_atomic(self.out / "index" / f"{final.stem}.json", json.dumps(index).encode())
        return {
            "name": self.name,
            "sha256": digest,
            "bytes": self._offset,
            "samples": len(self._index),
        }

    def abort(self) -> None:
        if not self._fh.closed:
            self._fh.close()
        self._hash.hexdigest()  # stops the helper threads
        self.tmp.unlink(missing_ok=True)


def _write_shard(
    out: Path, number: int, samples: list[_Prepared], stop: threading.Event
) -> dict[str, Any]:
    job = _ShardJob(out, number, stop)
    try:
        for sample in samples:
            job.add(sample)
        return job.finish()
    except BaseException:
        job.abort()
        raise


class ShardWriter:
    """Writes samples into size-bounded shards, then the index files and the manifest.

    Use as a context manager; the manifest is written last (atomically), so a folder with a
    manifest is complete and a folder without one is an interrupted write.

    Where a shard ends is decided from the samples alone (each sample's exact size in the tar
    is known before any file is copied: the in-memory members are encoded, the files'
    sizes read), so ``workers > 1`` can write that many shards at once, each on its own
    thread with its own two hash streams, and the output is byte-identical to
    ``workers=1``. With one worker the samples are written as they come; with more, the
    in-memory members (JSON, text, arrays; never the copied files) of up to ``workers + 1``
    shards are held at once.
    """

    def __init__(
        self,
        out_dir: str | Path,
        samples_per_shard: int = 1000,
        max_shard_bytes: int = 1 << 30,
        lineage: dict[str, Any] | None = None,
        workers: int = 1,
    ) -> None:
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "index").mkdir(exist_ok=True)
        self.samples_per_shard = samples_per_shard
        self.max_shard_bytes = max_shard_bytes
        self.lineage = lineage or {}
        self.workers = max(1, int(workers))
        self.shards: list[dict[str, Any]] = []
        self.modalities = {"text": 0, "image": 0, "waveform": 0}
        self.keys: set[str] = set()
        self._stop = threading.Event()
        self._number = 0  # the shard being filled
        self._count = self._bytes = 0  # its samples and bytes so far
        self._job: _ShardJob | None = None  # workers == 1: written as samples come
        self._batch: list[_Prepared] = []  # workers > 1: handed to a thread when cut
        self._pool: ThreadPoolExecutor | None = None
        self._running: deque[Future[dict[str, Any]]] = deque()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:
            self._abort()
            return
        try:
            self.close()
        except BaseException:
            self._abort()
            raise

    def _prepare(self, sample: Sample) -> _Prepared:
        key = sample.key
        if not _KEY.match(key):
            raise ShardFormatError(f"sample key {key!r} must match {_KEY.pattern}")
        if key in self.keys:
            raise ShardFormatError(f"sample key {key!r} written twice")
        for array in sample.images:
            _check_image(key, array)
        if sample.wave is not None and (sample.wave.dtype != np.float32 or sample.wave.ndim != 2):
            raise ShardFormatError(
                f"sample {key}: waveform must be float32 [channels, samples], got "
                f"{sample.wave.dtype} {list(sample.wave.shape)}"
            )
        meta = {"format_version": FORMAT_VERSION, **sample.meta}
        meta.setdefault("modalities", sample.modalities)
        if sample.dicom:
            meta["dicom"] = [f.sha256 for f in sample.dicom]
        members = [("json", json.dumps(meta, sort_keys=True).encode())]
        if sample.text:
            members.append(("txt", sample.text.encode("utf-8")))
        for i, array in enumerate(sample.images):
            members.append(("img.npy" if i == 0 else f"img{i}.npy", _npy_bytes(array)))
        if sample.wave is not None:
            members.append(("wav.npy", _npy_bytes(sample.wave)))
        files = []
        for n, source in enumerate(sample.dicom):
            try:
                size = os.stat(source.path).st_size
            except OSError as exc:
                raise ShardFormatError(
                    f"{source.label}: file unreadable ({type(exc).__name__})"
                ) from None
            files.append((f"{n:04d}.dcm", source, size))
        return _Prepared(key, members, files)

    def write(self, sample: Sample) -> None:
        """Append one sample; starts a new shard when the current one is full.

        A DICOM file that cannot be copied, or differs from its sha256, raises here or at a
        later ``write``/``close``, and leaves the shard unfinished: abandon the writer.
        """
        prepared = self._prepare(sample)
        if self.workers == 1:
            if self._job is None:
                self._job = _ShardJob(self.out, self._number, self._stop)
            self._job.add(prepared)
        else:
            self._raise_failed()
            self._batch.append(prepared)
        self.keys.add(sample.key)
        for modality in sample.modalities:
            self.modalities[modality] += 1
        self._count += 1
        self._bytes += prepared.size
        if self._count >= self.samples_per_shard or self._bytes >= self.max_shard_bytes:
            self._cut()

    def _cut(self) -> None:
        """The shard being filled is complete: finish it (or hand it to a thread)."""
        if self._count == 0:
            return
        if self.workers == 1:
            assert self._job is not None
            self.shards.append(self._job.finish())
            self._job = None
        else:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="shard")
            while len(self._running) >= self.workers:  # bounded: wait for the oldest
                self.shards.append(self._running.popleft().result())
            batch, self._batch = self._batch, []
            self._running.append(
                self._pool.submit(_write_shard, self.out, self._number, batch, self._stop)
            )
        self._number += 1
        self._count = self._bytes = 0

    def _raise_failed(self) -> None:
        for future in self._running:
            if future.done() and future.exception() is not None:
                future.result()

    def _abort(self) -> None:
        self._stop.set()
        if self._job is not None:
            self._job.abort()
            self._job = None
        for future in self._running:
            future.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=True)  # a failed or stopped job removes its own file
            self._pool = None
        self._running.clear()
        self._batch = []

    def close(self) -> dict[str, Any]:
        """Finish the open shard(s) and write ``manifest.json``; returns the manifest."""
        self._cut()
        while self._running:
            self.shards.append(self._running.popleft().result())
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "shards": self.shards,
            "samples": sum(s["samples"] for s in self.shards),
            "modalities": self.modalities,
            "lineage": self.lineage,
        }
        write_atomic(self.out / "manifest.json", json.dumps(manifest, indent=1).encode())
        return manifest


def read_manifest(root: str | Path) -> dict[str, Any]:
    """Load and check a dataset's manifest; raises ShardFormatError naming the problem."""
    path = Path(root) / "manifest.json"
    if not path.exists():
        raise ShardFormatError(f"{path}: missing (not a dataset folder, or an interrupted write)")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ShardFormatError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    if manifest.get("format_version") not in READABLE_VERSIONS:
        raise ShardFormatError(
            f"{path}: format_version {manifest.get('format_version')!r} is not readable "
            f"(this reader knows {READABLE_VERSIONS})"
        )
    return manifest


class ShardReader:
    """Random access to the samples of a dataset folder through its index files.

    ``resolve(shard_name) -> path`` lets a node-local cache serve shard files; by default they
    are read in place. Sample ``i`` is the ``i``-th key in shard order (manifest then index).
    """

    def __init__(
        self,
        root: str | Path,
        resolve: Callable[[str], Path] | None = None,
        verify: bool = False,
    ) -> None:
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        self.resolve = resolve or (lambda name: self.root / name)
        self.keys: list[str] = []
        self.locations: list[tuple[int, dict[str, list[int]]]] = []
        self.shard_of: list[int] = []
        for number, shard in enumerate(self.manifest["shards"]):
            stem = Path(shard["name"]).stem
            index = json.loads((self.root / "index" / f"{stem}.json").read_text())
            if len(index["samples"]) != shard["samples"]:
                raise ShardFormatError(
                    f"{self.root}/index/{stem}.json: {len(index['samples'])} samples, manifest "
                    f"says {shard['samples']}"
                )
            if verify:
                actual = sha256_file(self.root / shard["name"])
                if actual != shard["sha256"]:
                    raise ShardFormatError(
                        f"{self.root / shard['name']}: sha256 {actual} does not match the "
                        f"manifest's {shard['sha256']}"
                    )
            for key, members in index["samples"].items():
                self.keys.append(key)
                self.locations.append((number, members))
                self.shard_of.append(number)
        self._handles: dict[int, Any] = {}

    @property
    def shard_names(self) -> list[str]:
        """Shard file names in manifest order."""
        return [s["name"] for s in self.manifest["shards"]]

    def __len__(self) -> int:
        return len(self.keys)

    def _handle(self, number: int) -> Any:
        fh = self._handles.get(number)
        if fh is None:
            fh = open(self.resolve(self.shard_names[number]), "rb")  # noqa: SIM115 - cached
            self._handles[number] = fh
        return fh

    def read_member(self, i: int, ext: str) -> bytes | None:
        """Raw bytes of member ``ext`` of sample ``i`` (None when the sample has no such member)."""
        number, members = self.locations[i]
        loc = members.get(ext)
        if loc is None:
            return None
        # pread: no shared file position, so threads reading through one reader (a loader's
        # prefetch thread and the caller) cannot interleave a seek with another's read.
        fd = self._handle(number).fileno()
        data = os.pread(fd, loc[1], loc[0])
        while len(data) < loc[1]:  # a regular file returns short only at EOF or past 2 GiB
            more = os.pread(fd, loc[1] - len(data), loc[0] + len(data))
            if not more:
                break
            data += more
        if len(data) != loc[1]:
            raise ShardFormatError(
                f"{self.shard_names[number]}: member {self.keys[i]}.{ext} is truncated"
            )
        return data

    def __getitem__(self, i: int) -> Sample:
        _number, members = self.locations[i]
        meta = json.loads(self.read_member(i, "json") or b"{}")
        txt = self.read_member(i, "txt")
        images = []
        for ext in sorted((e for e in members if e.startswith("img")), key=lambda e: (len(e), e)):
            data = self.read_member(i, ext)
            if data is None:
                raise ShardFormatError(f"sample {i}: member {ext} listed but unreadable")
            images.append(np.load(io.BytesIO(data), allow_pickle=False))
        dicom = sorted((e for e in members if _DICOM.match(e)), key=lambda e: int(e.split(".")[0]))
        if dicom:
            stacks, records = self._decode_dicom(i, dicom, meta.get("dicom") or [])
            images.extend(stacks)
            meta["images"] = [*meta.get("images", []), *records]
        wav = self.read_member(i, "wav.npy")
        return Sample(
            key=self.keys[i],
            meta=meta,
            text=txt.decode("utf-8") if txt is not None else None,
            images=images,
            wave=np.load(io.BytesIO(wav), allow_pickle=False) if wav is not None else None,
        )

    def _decode_dicom(
        self, i: int, exts: list[str], sources: list[str]
    ) -> tuple[list[np.ndarray], list[dict[str, Any]]]:
        from trainer.data.dicom import DicomDecodeError, image_stacks

        if len(sources) != len(exts):
            raise ShardFormatError(
                f"sample {self.keys[i]}: {len(exts)} DICOM members, metadata lists {len(sources)}"
            )
        members = [
            (f"{self.keys[i]}.{ext}", self.read_member(i, ext) or b"", sha)
            for ext, sha in zip(exts, sources, strict=True)
        ]
        try:
            return image_stacks(members)
        except DicomDecodeError as exc:
            raise ShardFormatError(f"sample {self.keys[i]}: {exc}") from None

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self[i]

    def close(self) -> None:
        """Close cached shard file handles."""
        for fh in self._handles.values():
            fh.close()
        self._handles.clear()
