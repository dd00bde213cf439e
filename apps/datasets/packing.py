"""Turning de-identified files into shard samples: readers, grouping, the metadata record.

Django-free on purpose (plain dataclasses in, ``trainer.data.shards.Sample`` out), so the
grouping and the readers are tested without a database and a benchmark can drive them alone.
Everything here is deterministic: the same files give the same samples, byte for byte.

DICOM files are not decoded here: they go into the shard byte for byte (the writer copies
them, checking each against its recorded sha256) and the trainer's reader decodes them
(``trainer.data.dicom``). The packer only reads each file's preamble and file meta group, to
skip what is not DICOM Part 10 or needs a codec the reader may lack. EDF/EDF+ and WFDB
(formats 16, 212 and 80) are read by small numpy readers into ``wav.npy``; text as UTF-8.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainer.data.shards import DicomFile, Sample

PACKER = "medctl-pack/2"
SAMPLE_KEY_PREFIX = "s"

IMAGE_KINDS = frozenset({"dicom"})
TEXT_KINDS = frozenset({"text"})
WAVE_KINDS = frozenset({"edf", "wfdb_header"})
COMPANION_KINDS = frozenset({"wfdb_signal"})  # packed through their header's record
# Transfer syntaxes the trainer's reader decodes: those pydicom decodes on its own
# (uncompressed, deflated, RLE), the JPEG family that pylibjpeg-libjpeg decodes and JPEG 2000
# that pylibjpeg-openjpeg decodes (all in the `trainer` extra of pyproject.toml, as in the
# `deid` extra). Others (HTJ2K, which pylibjpeg-openjpeg may decode but no sample here proves,
# JPEG XL, MPEG/H.264/HEVC video) are skipped with their reason.
DECODABLE_TRANSFER_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2",  # implicit VR little endian
        "1.2.840.10008.1.2.1",  # explicit VR little endian
        "1.2.840.10008.1.2.1.99",  # deflated explicit VR little endian
        "1.2.840.10008.1.2.2",  # explicit VR big endian (retired)
        "1.2.840.10008.1.2.5",  # RLE lossless (pydicom's numpy decoder)
        "1.2.840.10008.1.2.4.50",  # JPEG baseline (pylibjpeg-libjpeg)
        "1.2.840.10008.1.2.4.51",  # JPEG extended
        "1.2.840.10008.1.2.4.57",  # JPEG lossless
        "1.2.840.10008.1.2.4.70",  # JPEG lossless, first-order prediction
        "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
        "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
        "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless (pylibjpeg-openjpeg)
        "1.2.840.10008.1.2.4.91",  # JPEG 2000
    }
)
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


class PackError(ValueError):
    """A file could not be turned into sample data; ``reason`` is a PHI-free code."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class SourceFile:
    """One released, de-identified file as the packer sees it (ids and hashes only)."""

    result_id: int
    raw_file_id: int
    raw_sha256: str
    run_id: int
    kind: str
    modality: str
    path: Path  # absolute path of the de-identified output
    relpath: str  # relative to the run's output root (pseudonymized components)
    output_sha256: str
    patient_pseudonym: str
    study_key: str
    profile: str  # de-id profile fingerprint

    @property
    def group_key(self) -> str:
        """Study when known, else patient + kind of data, else the file itself."""
        if self.study_key:
            return f"study:{self.study_key}"
        if self.patient_pseudonym:
            return f"patient:{self.patient_pseudonym}:{modality_of_kind(self.kind)}"
        return f"file:{self.output_sha256}"


@dataclass
class PlannedSample:
    """The files of one sample, before any pixel is read."""

    key: str
    images: list[SourceFile] = field(default_factory=list)
    texts: list[SourceFile] = field(default_factory=list)
    waves: list[SourceFile] = field(default_factory=list)
    # wfdb header result id -> its signal files
    companions: dict[int, list[SourceFile]] = field(default_factory=dict)

    @property
    def files(self) -> list[SourceFile]:
        out = [*self.images, *self.texts, *self.waves]
        for extra in self.companions.values():
            out.extend(extra)
        return sorted(out, key=lambda f: f.result_id)

    @property
    def patient(self) -> str:
        names = sorted({f.patient_pseudonym for f in self.files if f.patient_pseudonym})
        return names[0] if names else ""


def modality_of_kind(kind: str) -> str:
    if kind in IMAGE_KINDS:
        return "image"
    if kind in TEXT_KINDS:
        return "text"
    if kind in WAVE_KINDS or kind in COMPANION_KINDS:
        return "waveform"
    return "other"


def sample_key(group_key: str) -> str:
    """A pseudonymous, stable key: the same study gets the same key in every version, so a
    label set can follow it, but the key reveals nothing (a hash of keyed hashes)."""
    digest = hashlib.sha256(f"medctl-sample-1\x1f{group_key}".encode()).hexdigest()
    return SAMPLE_KEY_PREFIX + digest[:24]


def plan_samples(files: Iterable[SourceFile]) -> tuple[list[PlannedSample], dict[str, int]]:
    """Group files into samples, sorted by key; returns (samples, skipped reason -> count).

    WFDB signal files join the sample of the header that names them (same output folder);
    kinds the shard format has no place for (WFDB annotations, unknown) are skipped.
    """
    skipped: dict[str, int] = defaultdict(int)
    all_files = sorted(files, key=lambda f: f.result_id)
    by_path = {(f.run_id, f.relpath): f for f in all_files}
    samples: dict[str, PlannedSample] = {}
    claimed: set[int] = set()
    headers = [f for f in all_files if f.kind == "wfdb_header"]
    companions: dict[int, list[SourceFile]] = {}
    for header in headers:
        found = []
        for name in wfdb_signal_files(header.path):
            rel = str(Path(header.relpath).parent / name)  # companions sit beside it
            sig = by_path.get((header.run_id, rel))
            if sig is not None and sig.result_id not in claimed:
                found.append(sig)
                claimed.add(sig.result_id)
        companions[header.result_id] = found
    for f in all_files:
        if f.result_id in claimed:
            continue
        kind_group = modality_of_kind(f.kind)
        if kind_group == "other" or f.kind in COMPANION_KINDS:
            skipped["not_packable_kind" if kind_group == "other" else "wfdb_signal_orphan"] += 1
            continue
        key = sample_key(f.group_key)
        sample = samples.setdefault(key, PlannedSample(key=key))
        if kind_group == "image":
            sample.images.append(f)
        elif kind_group == "text":
            sample.texts.append(f)
        else:
            sample.waves.append(f)
            if f.result_id in companions:
                sample.companions[f.result_id] = companions[f.result_id]
    ordered = [samples[k] for k in sorted(samples)]
    for s in ordered:
        s.images.sort(key=lambda f: (f.relpath, f.result_id))
        s.texts.sort(key=lambda f: (f.relpath, f.result_id))
        s.waves.sort(key=lambda f: (f.relpath, f.result_id))
    return ordered, dict(sorted(skipped.items()))


# --- DICOM ---------------------------------------------------------------------------------

_META_PREFIX = 8 << 10  # preamble + file meta group; the group is a few hundred bytes


def transfer_syntax(head: bytes) -> str | None:
    """The transfer syntax UID in the file meta group of a DICOM Part 10 file's first bytes,
    else None (no ``DICM`` magic, or no (0002,0010) element in ``head``).

    The file meta group is always explicit VR little endian, so a short walk finds it.
    """
    if head[128:132] != b"DICM":
        return None
    pos = 132
    while pos + 8 <= len(head):
        group, element = int.from_bytes(head[pos : pos + 2], "little"), head[pos + 2 : pos + 4]
        if group != 2:
            return None
        vr = head[pos + 4 : pos + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            length, pos = int.from_bytes(head[pos + 8 : pos + 12], "little"), pos + 12
        else:
            length, pos = int.from_bytes(head[pos + 6 : pos + 8], "little"), pos + 8
        if element == b"\x10\x00":  # (0002,0010) TransferSyntaxUID
            return head[pos : pos + length].rstrip(b"\x00 ").decode("ascii", "replace")
        pos += length
    return None


def check_dicom(f: SourceFile) -> DicomFile:
    """``f`` as a file for the writer to copy, once its first bytes show DICOM Part 10 in a
    transfer syntax the reader decodes; the writer checks its sha256."""
    with open(f.path, "rb") as fh:
        head = fh.read(_META_PREFIX)
    syntax = transfer_syntax(head)
    if syntax is None:
        raise PackError(f"{f.relpath}: not a DICOM Part 10 file", "dicom_unreadable")
    if syntax not in DECODABLE_TRANSFER_SYNTAXES:
        raise PackError(f"{f.relpath}: compressed transfer syntax", "dicom_compressed")
    return DicomFile(path=f.path, sha256=f.output_sha256, label=f"de-id result {f.result_id}")


# --- waveforms -----------------------------------------------------------------------------


def _ascii(raw: bytes) -> str:
    return raw.decode("ascii", errors="replace").strip()


def read_edf(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """EDF/EDF+ -> float32 ``[channels, samples]`` in physical units.

    Channels must share one rate to fit one array: the rate most channels use is kept (ties:
    the higher), annotation channels are dropped, and the dropped labels are recorded.
    """
    data = path.read_bytes()
    try:
        header_bytes = int(_ascii(data[184:192]))
        n_records = int(_ascii(data[236:244]))
        duration = float(_ascii(data[244:252]))
        ns = int(_ascii(data[252:256]))
    except ValueError:
        raise PackError(f"{path.name}: EDF header unreadable", "edf_bad_header") from None

    def fields(offset: int, width: int) -> list[str]:
        start = 256 + offset * ns
        return [_ascii(data[start + i * width : start + (i + 1) * width]) for i in range(ns)]

    labels = fields(0, 16)
    units = fields(16 + 80, 8)
    try:
        pmin = [float(v) for v in fields(16 + 80 + 8, 8)]
        pmax = [float(v) for v in fields(16 + 80 + 16, 8)]
        dmin = [float(v) for v in fields(16 + 80 + 24, 8)]
        dmax = [float(v) for v in fields(16 + 80 + 32, 8)]
        per_record = [int(v) for v in fields(16 + 80 + 40 + 80, 8)]
    except ValueError:
        raise PackError(f"{path.name}: EDF signal header unreadable", "edf_bad_header") from None
    record_len = sum(per_record)
    body = np.frombuffer(data, dtype="<i2", offset=header_bytes)
    if n_records < 0:
        n_records = len(body) // max(record_len, 1)
    if len(body) < n_records * record_len:
        raise PackError(f"{path.name}: EDF data truncated", "edf_truncated")
    records = body[: n_records * record_len].reshape(n_records, record_len)
    signal = [i for i in range(ns) if labels[i] != "EDF Annotations"]
    if not signal:
        raise PackError(f"{path.name}: EDF has no signal channels", "edf_no_signal")
    counts: dict[int, int] = defaultdict(int)
    for i in signal:
        counts[per_record[i]] += 1
    keep_rate = max(counts, key=lambda r: (counts[r], r))
    keep = [i for i in signal if per_record[i] == keep_rate]
    starts = np.cumsum([0, *per_record])
    channels = []
    for i in keep:
        digital = records[:, starts[i] : starts[i + 1]].reshape(-1).astype(np.float64)
        gain = (pmax[i] - pmin[i]) / ((dmax[i] - dmin[i]) or 1.0)
        channels.append((digital - dmin[i]) * gain + pmin[i])
    wave = np.stack(channels).astype(np.float32)
    meta = {
        "format": "edf",
        "sampling_rate": keep_rate / duration if duration else float(keep_rate),
        "channels": [labels[i] for i in keep],
        "units": [units[i] for i in keep],
        "dropped_channels": [labels[i] for i in signal if i not in keep],
    }
    return wave, meta


def wfdb_signal_files(header_path: Path) -> list[str]:
    """Signal file names a WFDB header refers to, in order (no duplicates)."""
    try:
        lines = header_path.read_text("utf-8", errors="replace").splitlines()
    except OSError:
        return []
    body = [ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    names: list[str] = []
    for ln in body[1:]:
        name = ln.split()[0]
        if name not in names and name != "~":
            names.append(name)
    return names


def _decode_wfdb(raw: bytes, fmt: int, nsig: int) -> np.ndarray:
    """Digital samples ``[frames, nsig]`` of one signal file."""
    if fmt == 16:
        data = np.frombuffer(raw[: len(raw) // 2 * 2], dtype="<i2").astype(np.int32)
    elif fmt == 80:
        data = np.frombuffer(raw, dtype=np.uint8).astype(np.int32) - 128
    elif fmt == 212:
        b = np.frombuffer(raw[: len(raw) // 3 * 3], dtype=np.uint8).astype(np.int32)
        b = b.reshape(-1, 3)
        first = b[:, 0] | ((b[:, 1] & 0x0F) << 8)
        second = b[:, 2] | ((b[:, 1] & 0xF0) << 4)
        data = np.stack([first, second], axis=1).reshape(-1)
        data = np.where(data > 2047, data - 4096, data)
    else:
        raise PackError(f"WFDB format {fmt} is not supported", "wfdb_format")
    frames = len(data) // nsig
    return data[: frames * nsig].reshape(frames, nsig)


_GAIN = re.compile(r"^([-+0-9.eE]+)(?:\(([-0-9]+)\))?(?:/(\S+))?$")


def read_wfdb(header: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """A WFDB record (header + signal files next to it) -> float32 ``[channels, samples]``."""
    lines = header.read_text("utf-8", errors="replace").splitlines()
    body = [ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    try:
        rec = body[0].split()
        nsig = int(rec[1])
        rate = float(rec[2].split("/")[0]) if len(rec) > 2 else 250.0
    except (IndexError, ValueError):
        raise PackError(f"{header.name}: WFDB record line unreadable", "wfdb_bad_header") from None
    specs = []
    for ln in body[1 : 1 + nsig]:
        parts = ln.split()
        fmt = int(re.match(r"\d+", parts[1]).group())  # type: ignore[union-attr]
        gain, baseline, unit = 200.0, 0, "mV"
        if len(parts) > 2 and (m := _GAIN.match(parts[2])):
            gain = float(m.group(1)) or 200.0
            baseline = int(m.group(2)) if m.group(2) else (int(parts[4]) if len(parts) > 4 else 0)
            unit = m.group(3) or unit
        description = " ".join(parts[8:]) if len(parts) > 8 else f"ch{len(specs)}"
        specs.append((parts[0], fmt, gain, baseline, unit, description))
    if len(specs) != nsig:
        raise PackError(
            f"{header.name}: {len(specs)} signal lines, expected {nsig}", "wfdb_bad_header"
        )
    by_file: dict[str, list[int]] = defaultdict(list)
    for i, spec in enumerate(specs):
        by_file[spec[0]].append(i)
    channels: list[np.ndarray | None] = [None] * nsig
    for name, idx in by_file.items():
        path = header.parent / name
        if not path.is_file():
            raise PackError(f"{header.name}: signal file missing", "wfdb_signal_missing")
        digital = _decode_wfdb(path.read_bytes(), specs[idx[0]][1], len(idx))
        for col, i in enumerate(idx):
            _name, _fmt, gain, baseline, _unit, _desc = specs[i]
            channels[i] = (digital[:, col] - baseline) / gain
    length = min(len(c) for c in channels if c is not None)
    wave = np.stack([c[:length] for c in channels if c is not None]).astype(np.float32)
    meta = {
        "format": "wfdb",
        "sampling_rate": rate,
        "channels": [s[5] for s in specs],
        "units": [s[4] for s in specs],
        "dropped_channels": [],
    }
    return wave, meta


def read_waveform(f: SourceFile) -> tuple[np.ndarray, dict[str, Any]]:
    try:
        if f.kind == "edf":
            return read_edf(f.path)
        return read_wfdb(f.path)
    except PackError:
        raise
    except (OSError, ValueError, IndexError, AttributeError) as exc:
        raise PackError(
            f"{f.relpath}: waveform unreadable ({type(exc).__name__})", "waveform_unreadable"
        ) from None


# --- text and tokens -------------------------------------------------------------------------


def read_text(f: SourceFile) -> str:
    try:
        return f.path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise PackError(f"{f.relpath}: report is not UTF-8", "text_not_utf8") from None


def estimate_tokens(text: str) -> int:
    """The seed's estimate (words x 1.3, appendix E) with each CJK character one token,
    since Chinese has no spaces to split on. Cheap, and only a planning figure."""
    if not text:
        return 0
    cjk = len(_CJK.findall(text))
    words = len(_CJK.sub(" ", text).split())
    return int(cjk + words * 1.3)


# --- the sample ------------------------------------------------------------------------------


def build_sample(planned: PlannedSample) -> tuple[list[Sample], int]:
    """Read a planned sample's files into shard samples; returns (samples, text tokens).

    The shard format carries one waveform per sample: a study with several records gets the
    first (by path) in the main sample and each further one in a follow-on sample
    ``<key>-w<n>`` with the same patient and study metadata.
    """
    dicom = [check_dicom(f) for f in planned.images]
    text = "\n\n".join(read_text(f) for f in planned.texts) if planned.texts else None
    waves = [read_waveform(f) for f in planned.waves]
    profiles = sorted({f.profile for f in planned.files if f.profile})

    def meta_for(files: list[SourceFile]) -> dict[str, Any]:
        return {
            "patient": planned.patient,
            "deid_profile": "+".join(profiles),
            "sources": sorted(f.output_sha256 for f in files),
            "packer": PACKER,
        }

    main_files = [*planned.images, *planned.texts]
    main = Sample(key=planned.key, text=text, dicom=dicom)
    if waves:
        wave, wave_meta = waves[0]
        main.wave = wave
        main.meta["waveform"] = {**wave_meta, "shape": list(wave.shape)}
        first = planned.waves[0]
        main_files += [first, *planned.companions.get(first.result_id, [])]
    main.meta.update(meta_for(main_files))
    out = [main]
    for n, ((wave, wave_meta), f) in enumerate(zip(waves[1:], planned.waves[1:], strict=True), 1):
        extra = Sample(key=f"{planned.key}-w{n}", wave=wave)
        extra.meta["waveform"] = {**wave_meta, "shape": list(wave.shape)}
        extra.meta.update(meta_for([f, *planned.companions.get(f.result_id, [])]))
        extra.meta["follows"] = planned.key
        out.append(extra)
    return out, estimate_tokens(text or "")


def _build_or_reason(planned: PlannedSample) -> tuple[list[Sample], int] | str:
    # Runs in worker processes too: a PackError travels back as its reason code.
    try:
        return build_sample(planned)
    except PackError as exc:
        return exc.reason


def build_samples(
    planned: list[PlannedSample], workers: int = 1
) -> Iterator[tuple[PlannedSample, list[Sample], int, str]]:
    """``(planned, samples, text tokens, skip reason)`` for each planned sample, in order.

    With ``workers > 1`` the files are read and converted in that many processes (spawned,
    so no database connection or lock is inherited); results come back in plan order and at
    most ``4 * workers`` are in flight, so the output is byte-identical to the serial path
    and memory stays bounded.
    """
    if workers <= 1 or len(planned) < 2:
        for plan in planned:
            result = _build_or_reason(plan)
            if isinstance(result, str):
                yield plan, [], 0, result
            else:
                yield plan, result[0], result[1], ""
        return
    import multiprocessing
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        window: deque[tuple[PlannedSample, Any]] = deque()
        pending = iter(planned)
        for plan in itertools.islice(pending, 4 * workers):
            window.append((plan, pool.submit(_build_or_reason, plan)))
        while window:
            plan, future = window.popleft()
            nxt = next(pending, None)
            if nxt is not None:
                window.append((nxt, pool.submit(_build_or_reason, nxt)))
            result = future.result()
            if isinstance(result, str):
                yield plan, [], 0, result
            else:
                yield plan, result[0], result[1], ""


def member_of(planned: PlannedSample, f: SourceFile) -> tuple[str, str]:
    """(sample key, member) that carries file ``f`` of ``planned`` (for lineage rows)."""
    if f in planned.images:
        return planned.key, "img"
    if f in planned.texts:
        return planned.key, "txt"
    for n, wave in enumerate(planned.waves):
        if f == wave or f in planned.companions.get(wave.result_id, []):
            return (planned.key if n == 0 else f"{planned.key}-w{n}"), "wav"
    raise KeyError(f.result_id)
