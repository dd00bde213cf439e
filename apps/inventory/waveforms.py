"""Tiny readers for EDF/EDF+ and WFDB signals, enough for data QA (no extra dependency).

Pure (no Django). Samples are memory-mapped, so a multi-gigabyte recording is checked without
loading it. Patient and recording header fields are never returned: only labels' modality
guess, rates, digital ranges and the samples.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

EDF_ANNOTATIONS = "EDF Annotations"
_ECG_LABEL = re.compile(r"\b(ECG|EKG)\b|^(I|II|III|AVR|AVL|AVF|V[1-6])$", re.IGNORECASE)


class WaveformError(ValueError):
    """The recording cannot be read as its header describes (truncated, bad header)."""


@dataclass
class Channel:
    """One signal: digital samples, their legal range, and the digital→physical mapping."""

    index: int
    rate_hz: float
    digital: np.ndarray  # shape: [samples], integer
    dig_min: int
    dig_max: int
    gain: float  # physical = (digital - offset) * gain, NaN/inf when the header is degenerate
    offset: float
    invalid: int | None = None  # a sentinel that marks "no sample" (WFDB)

    def physical(self) -> np.ndarray:
        values = (self.digital.astype(np.float64) - self.offset) * self.gain
        if self.invalid is not None:
            values[self.digital == self.invalid] = np.nan
        return values


@dataclass
class Recording:
    channels: list[Channel] = field(default_factory=list)


# --- EDF ---------------------------------------------------------------------------------------


def _num(raw: bytes) -> float:
    text = raw.decode("ascii", "replace").strip()
    try:
        return float(text)
    except ValueError:
        raise WaveformError(f"header field is not a number: {text[:16]!r}") from None


def edf_modality(head: bytes) -> str:
    """'ECG' when a signal label names an ECG lead, else 'EEG' (EDF's usual content)."""
    try:
        ns = int(head[252:256])
        labels = [
            head[256 + 16 * i : 256 + 16 * (i + 1)].decode("ascii", "replace").strip()
            for i in range(ns)
        ]
    except ValueError:
        return ""
    return "ECG" if any(_ECG_LABEL.search(label) for label in labels) else "EEG"


def read_edf(path: Path | str) -> Recording:
    """Channels of an EDF/EDF+ file; the annotation channel of EDF+ is left out."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(256)
        if len(head) < 256:
            raise WaveformError("EDF header is truncated")
        ns = int(_num(head[252:256]))
        if ns <= 0 or ns > 4096:
            raise WaveformError(f"EDF declares {ns} signals")
        sig = fh.read(256 * ns)
    if len(sig) < 256 * ns:
        raise WaveformError("EDF signal header is truncated")
    n_records = int(_num(head[236:244]))
    duration = _num(head[244:252])

    def fields(offset: int, width: int) -> list[bytes]:
        base = offset * ns
        return [sig[base + i * width : base + (i + 1) * width] for i in range(ns)]

    # Offsets in units of ns: label 16, transducer 80, dimension 8, then the numbers.
    labels = [f.decode("ascii", "replace").strip() for f in fields(0, 16)]
    phys_min = [_num(f) for f in fields(104, 8)]
    phys_max = [_num(f) for f in fields(112, 8)]
    dig_min = [int(_num(f)) for f in fields(120, 8)]
    dig_max = [int(_num(f)) for f in fields(128, 8)]
    spr = [int(_num(f)) for f in fields(216, 8)]
    if any(n <= 0 for n in spr):
        raise WaveformError("EDF declares a signal with no samples per record")
    record_samples = sum(spr)
    data_bytes = size - 256 * (ns + 1)
    available = data_bytes // (2 * record_samples)
    if n_records < 0:  # -1: unknown while recording; trust the file size
        n_records = available
    if available < n_records:
        raise WaveformError(f"EDF is truncated: {available} of {n_records} data records present")
    data = np.memmap(
        path,
        dtype="<i2",
        mode="r",
        offset=256 * (ns + 1),
        shape=(n_records, record_samples),
    )
    recording = Recording()
    start = 0
    for i in range(ns):
        columns = slice(start, start + spr[i])
        start += spr[i]
        if labels[i] == EDF_ANNOTATIONS:
            continue
        span = dig_max[i] - dig_min[i]
        with np.errstate(divide="ignore", invalid="ignore"):
            gain = (phys_max[i] - phys_min[i]) / span if span else float("nan")
        recording.channels.append(
            Channel(
                index=i,
                rate_hz=spr[i] / duration if duration > 0 else 0.0,
                digital=np.asarray(data[:, columns]).reshape(-1),
                dig_min=dig_min[i],
                dig_max=dig_max[i],
                gain=gain,
                offset=dig_min[i] - (phys_min[i] / gain if gain and np.isfinite(gain) else 0.0),
            )
        )
    return recording


# --- WFDB --------------------------------------------------------------------------------------

_RECORD_LINE = re.compile(
    r"^(?P<name>[A-Za-z0-9_.-]+)(?:/\d+)?\s+(?P<nsig>\d+)"
    r"(?:\s+(?P<fs>[0-9.]+)(?:/[0-9.]+)?(?:\([0-9.-]+\))?)?(?:\s+(?P<nsamp>\d+))?"
)
_SIGNAL_FILE = re.compile(r"^[A-Za-z0-9_.-]+$")
_FORMATS = {"16": 16, "212": 12, "80": 8, "61": 16}


@dataclass(frozen=True)
class WfdbSignal:
    file_name: str
    fmt: str
    gain: float
    baseline: int
    resolution: int


@dataclass(frozen=True)
class WfdbHeader:
    record: str
    rate_hz: float
    n_samples: int | None
    signals: tuple[WfdbSignal, ...]


def parse_wfdb_header(text: str) -> WfdbHeader | None:
    """A single-segment WFDB header, or None when ``text`` is not one.

    Signal file names must be plain names in the header's folder: ``../x`` or ``/etc/x`` make
    the header invalid (path traversal from a hostile header).
    """
    lines = [
        ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")
    ]
    if not lines:
        return None
    match = _RECORD_LINE.match(lines[0])
    if not match:
        return None
    nsig = int(match["nsig"])
    if nsig == 0 or nsig > 1024 or len(lines) < nsig + 1:
        return None
    rate = float(match["fs"]) if match["fs"] else 250.0
    signals = []
    for line in lines[1 : nsig + 1]:
        parts = line.split()
        if len(parts) < 2 or not _SIGNAL_FILE.match(parts[0]) or parts[0] in (".", ".."):
            return None
        fmt_match = re.match(r"^(\d+)", parts[1])
        if not fmt_match:
            return None
        fmt = fmt_match.group(1)
        gain, baseline = 200.0, 0
        if len(parts) > 2:
            g = re.match(r"^([0-9.eE+-]+)(?:\((-?\d+)\))?", parts[2])
            if g:
                try:
                    gain = float(g.group(1)) or 200.0
                except ValueError:
                    return None
                baseline = int(g.group(2)) if g.group(2) else 0
        resolution = _FORMATS.get(fmt, 16)
        if len(parts) > 3 and parts[3].isdigit() and int(parts[3]) > 0:
            resolution = int(parts[3])
        explicit_baseline = len(parts) > 2 and "(" in parts[2]
        if len(parts) > 4 and re.match(r"^-?\d+$", parts[4]) and not explicit_baseline:
            baseline = int(parts[4])  # without "(baseline)" the ADC zero is the baseline
        signals.append(WfdbSignal(parts[0], fmt, gain, baseline, resolution))
    n_samples = int(match["nsamp"]) if match["nsamp"] else None
    return WfdbHeader(match["name"], rate, n_samples, tuple(signals))


def wfdb_signal_files(header: WfdbHeader) -> set[str]:
    return {s.file_name for s in header.signals if s.file_name != "-"}


def _decode(raw: np.ndarray, fmt: str, nsig: int) -> np.ndarray:
    """Interleaved samples of one signal file → int32 [frames, nsig]."""
    if fmt == "16":
        samples = raw.view("<i2").astype(np.int32)
    elif fmt == "61":
        samples = raw.view(">i2").astype(np.int32)
    elif fmt == "80":
        samples = raw.astype(np.int32) - 128
    elif fmt == "212":
        # Two 12-bit samples in three bytes: low byte, (high nibbles), low byte.
        usable = len(raw) - len(raw) % 3
        triples = raw[:usable].reshape(-1, 3).astype(np.int32)
        first = triples[:, 0] | ((triples[:, 1] & 0x0F) << 8)
        second = triples[:, 2] | ((triples[:, 1] & 0xF0) << 4)
        samples = np.empty(first.size * 2, dtype=np.int32)
        samples[0::2], samples[1::2] = first, second
        samples[samples > 2047] -= 4096
    else:
        raise WaveformError(f"WFDB format {fmt} is not supported by the QA reader")
    frames = samples.size // nsig
    return samples[: frames * nsig].reshape(frames, nsig)


def read_wfdb(header_path: Path | str) -> Recording:
    """Channels of a WFDB record whose header is at ``header_path``."""
    header_path = Path(header_path)
    header = parse_wfdb_header(header_path.read_text("utf-8", "replace"))
    if header is None:
        raise WaveformError("not a WFDB header")
    by_file: dict[str, list[tuple[int, WfdbSignal]]] = {}
    for i, signal in enumerate(header.signals):
        by_file.setdefault(signal.file_name, []).append((i, signal))
    recording = Recording()
    for file_name, signals in by_file.items():
        formats = {s.fmt for _, s in signals}
        if len(formats) != 1:
            raise WaveformError("signals of one WFDB file use several formats")
        fmt = formats.pop()
        data_path = header_path.parent / file_name
        if data_path.is_symlink() or not data_path.is_file():
            raise WaveformError("WFDB signal file is missing")
        raw = np.fromfile(data_path, dtype=np.uint8)
        frames = _decode(raw, fmt, len(signals))
        if header.n_samples is not None and frames.shape[0] < header.n_samples:
            raise WaveformError(
                f"WFDB signal file is truncated: {frames.shape[0]} of {header.n_samples} samples"
            )
        for column, (index, signal) in enumerate(signals):
            half = 2 ** (signal.resolution - 1)
            invalid = {"16": -32768, "61": -32768, "212": -2048, "80": -128}[fmt]
            recording.channels.append(
                Channel(
                    index=index,
                    rate_hz=header.rate_hz,
                    digital=frames[:, column],
                    dig_min=-half + 1,
                    dig_max=half - 1,
                    gain=1.0 / signal.gain,
                    offset=float(signal.baseline),
                    invalid=invalid,
                )
            )
    return recording


def wfdb_modality(header: WfdbHeader | None) -> str:
    # WFDB headers rarely say what they hold; ECG is by far the commonest use (PhysioNet).
    return "ECG" if header is not None else ""
