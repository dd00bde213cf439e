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
from collections.abc import Callable, Iterator
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


class ShardWriter:
    """Writes samples into size-bounded shards, then the index files and the manifest.

    Use as a context manager; the manifest is written last (atomically), so a folder with a
    manifest is complete and a folder without one is an interrupted write.
    """

    def __init__(
        self,
        out_dir: str | Path,
        samples_per_shard: int = 1000,
        max_shard_bytes: int = 1 << 30,
        lineage: dict[str, Any] | None = None,
    ) -> None:
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "index").mkdir(exist_ok=True)
        self.samples_per_shard = samples_per_shard
        self.max_shard_bytes = max_shard_bytes
        self.lineage = lineage or {}
        self.shards: list[dict[str, Any]] = []
        self.modalities = {"text": 0, "image": 0, "waveform": 0}
        self.keys: set[str] = set()
        self._fh: Any = None
        self._hash: _Hashing | None = None
        self._offset = self._written_back = 0
        self._index: dict[str, dict[str, list[int]]] = {}
        self._name = ""

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self._abort()

    def _open(self) -> None:
        self._name = f"shard-{len(self.shards):06d}.tar"
        tmp = self.out / f".{self._name}.tmp"
        self._fh = open(tmp, "wb", buffering=1 << 16)  # noqa: SIM115 - closed in _finish
        self._hash = _Hashing()
        self._offset = self._written_back = 0
        self._index = {}

    def _emit(self, data: bytes) -> None:
        assert self._hash is not None
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

    def _add_file(self, name: str, source: DicomFile) -> list[int]:
        """Copy ``source`` in: one read of each byte, checked against its pinned sha256 (by
        ``_Hashing``, which reports a difference shortly after)."""
        assert self._hash is not None
        try:
            src = open(source.path, "rb", buffering=0)  # noqa: SIM115 - closed below
        except OSError as exc:
            raise ShardFormatError(
                f"{source.label}: file unreadable ({type(exc).__name__})"
            ) from None
        with src:
            size = os.fstat(src.fileno()).st_size
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

    def write(self, sample: Sample) -> None:
        """Append one sample; starts a new shard when the current one is full.

        A DICOM file that cannot be copied, or differs from its sha256, raises here or at a
        later ``write``/``close``, and leaves the shard unfinished: abandon the writer.
        """
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
        _read_ahead(sample.dicom)
        if self._fh is None:
            self._open()
        assert self._hash is not None
        meta = {"format_version": FORMAT_VERSION, **sample.meta}
        meta.setdefault("modalities", sample.modalities)
        if sample.dicom:
            meta["dicom"] = [f.sha256 for f in sample.dicom]
        members = {"json": json.dumps(meta, sort_keys=True).encode()}
        if sample.text:
            members["txt"] = sample.text.encode("utf-8")
        for i, array in enumerate(sample.images):
            members["img.npy" if i == 0 else f"img{i}.npy"] = _npy_bytes(array)
        if sample.wave is not None:
            members["wav.npy"] = _npy_bytes(sample.wave)
        index = {ext: self._add(f"{key}.{ext}", data) for ext, data in members.items()}
        for n, source in enumerate(sample.dicom):
            ext = f"{n:04d}.dcm"
            index[ext] = self._add_file(f"{key}.{ext}", source)
        if (error := self._hash.error()) is not None:  # this sample's files or earlier ones
            raise ShardFormatError(error)
        self._index[key] = index
        self.keys.add(key)
        for modality in sample.modalities:
            self.modalities[modality] += 1
        if len(self._index) >= self.samples_per_shard or self._offset >= self.max_shard_bytes:
            self._finish()

    def _finish(self) -> None:
        if self._fh is None:
            return
        assert self._hash is not None
        self._emit(_END)
        self._pad_record()
        self._fh.flush()
        digest = self._hash.hexdigest()
        if (error := self._hash.error()) is not None:
            self._abort()
            raise ShardFormatError(error)
        os.fsync(self._fh.fileno())
        self._fh.close()
        final = self.out / self._name
        os.replace(self.out / f".{self._name}.tmp", final)
        index = {"format_version": FORMAT_VERSION, "shard": self._name, "samples": self._index}
        write_atomic(self.out / "index" / f"{final.stem}.json", json.dumps(index).encode())
        self.shards.append(
            {
                "name": self._name,
                "sha256": digest,
                "bytes": self._offset,
                "samples": len(self._index),
            }
        )
        self._fh = self._hash = None

    def _pad_record(self) -> None:
        # Like tarfile and GNU tar: the archive is a whole number of 10 KiB records.
        if self._offset % tarfile.RECORDSIZE:
            self._emit(tarfile.NUL * (tarfile.RECORDSIZE - self._offset % tarfile.RECORDSIZE))

    def _abort(self) -> None:
        if self._fh is not None:
            self._fh.close()
            if self._hash is not None:
                self._hash.hexdigest()  # stops the helper threads
            (self.out / f".{self._name}.tmp").unlink(missing_ok=True)
            self._fh = self._hash = None

    def close(self) -> dict[str, Any]:
        """Finish the open shard and write ``manifest.json``; returns the manifest."""
        self._finish()
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
        fh = self._handle(number)
        fh.seek(loc[0])
        data = fh.read(loc[1])
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
