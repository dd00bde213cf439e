"""Data QA checks per kind (seed 2.4; appendix E's ``data_quality`` table).

Pure (no Django): each check reads one file and returns :class:`Outcome` values; the service
stores them as QACheckResult rows. Notes are built from numbers and channel indexes only,
never from file content or exception text (which can quote header values), so no PHI leaks.
Thresholds live in ``data/qa_thresholds.json``.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from apps.inventory import detect, waveforms

THRESHOLDS_FILE = Path(__file__).resolve().parent / "data" / "qa_thresholds.json"
TEXT_READ_LIMIT = 4 * 1024 * 1024

# Check names and outcomes, as QACheck / QAResult / QASeverity values.
DICOM_READABLE = "dicom_readable"
SERIES_COMPLETE = "series_complete"
PIXEL_STATS = "pixel_stats"
TEXT_NOT_EMPTY = "text_not_empty"
WAVEFORM_READABLE = "waveform_readable"
WAVEFORM_FLATLINE = "waveform_flatline"
WAVEFORM_NAN = "waveform_nan"
WAVEFORM_CLIPPING = "waveform_clipping"
FORMAT_KNOWN = "format_known"
PASS, FAIL = "pass", "fail"
INFO, WARNING, ERROR = "info", "warning", "error"


@dataclass(frozen=True)
class Outcome:
    check: str
    result: str
    severity: str
    notes: str = ""

    @classmethod
    def ok(cls, check: str, notes: str = "") -> Outcome:
        return cls(check, PASS, INFO, notes)

    @classmethod
    def fail(cls, check: str, severity: str, notes: str) -> Outcome:
        return cls(check, FAIL, severity, notes)


@cache
def thresholds() -> dict[str, Any]:
    return json.loads(THRESHOLDS_FILE.read_text("utf-8"))


def pixel_bounds(modality: str, limits: dict[str, Any] | None = None) -> dict[str, list[float]]:
    bounds = (limits or thresholds())["pixel_bounds"]
    return bounds.get(modality.upper(), bounds["*"])


def check_file(path: Path, kind: str, modality: str) -> list[Outcome]:
    """Every per-file check that applies to ``kind`` (series completeness is per series)."""
    if kind == detect.UNREADABLE:
        return [Outcome.fail(FORMAT_KNOWN, ERROR, "file could not be read")]
    if kind == detect.OTHER:
        return [Outcome.fail(FORMAT_KNOWN, WARNING, "content is not a known format")]
    outcomes = [Outcome.ok(FORMAT_KNOWN, kind)]
    if kind == detect.DICOM:
        outcomes += check_dicom(path, modality)
    elif kind == detect.TEXT:
        outcomes += check_text(path)
    elif kind == detect.EDF:
        outcomes += check_waveform(lambda: waveforms.read_edf(path))
    elif kind == detect.WFDB and _is_wfdb_header(path):
        # Signal (.dat) files are checked through the header that describes them.
        outcomes += check_waveform(lambda: waveforms.read_wfdb(path))
    return outcomes


# --- DICOM ---------------------------------------------------------------------------------


def _dicom_failure(exc: BaseException) -> str:
    text = str(exc).lower()
    if "length" in text or "truncat" in text or "expected" in text or isinstance(exc, EOFError):
        return "pixel data or header is truncated"
    return f"cannot be decoded ({type(exc).__name__})"


def check_dicom(path: Path, modality: str, limits: dict[str, Any] | None = None) -> list[Outcome]:
    """Readable header and pixels (truncation shows as a pixel length mismatch), then the
    seed's mean/variance check against the modality's bounds."""
    import pydicom

    try:
        with warnings.catch_warnings():
            # pydicom warns about damaged files with their path; the outcome says it instead.
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path)
    except Exception as exc:  # pydicom raises many types for damaged files
        return [Outcome.fail(DICOM_READABLE, ERROR, f"header {_dicom_failure(exc)}")]
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        sop_class = ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID")
        if not sop_class:
            # pydicom stops quietly at end of file: a header cut short lacks even its class.
            return [Outcome.fail(DICOM_READABLE, ERROR, "header is truncated (no SOP class)")]
        if "Image" in getattr(sop_class, "name", ""):
            return [Outcome.fail(DICOM_READABLE, ERROR, "image object without pixel data")]
        return [Outcome.ok(DICOM_READABLE, "no pixel data (non-image object)")]
    try:
        pixels = ds.pixel_array
    except Exception as exc:
        text = str(exc).lower()
        if "plugin" in text or "handler" in text or "decoder" in text:
            # A compressed transfer syntax we cannot decode here is not a broken file.
            return [Outcome.ok(DICOM_READABLE, "compressed pixels not decoded; stats skipped")]
        return [Outcome.fail(DICOM_READABLE, ERROR, _dicom_failure(exc))]
    outcomes = [Outcome.ok(DICOM_READABLE)]
    try:
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
    except (TypeError, ValueError):
        slope, intercept = 1.0, 0.0
    values = pixels.astype(np.float64) * slope + intercept
    mean, std = float(values.mean()), float(values.std())
    bounds = pixel_bounds(modality, limits)
    (mean_lo, mean_hi), (std_lo, std_hi) = bounds["mean"], bounds["std"]
    summary = f"mean {mean:.4g}, std {std:.4g}"
    if not (math.isfinite(mean) and math.isfinite(std)):
        outcomes.append(Outcome.fail(PIXEL_STATS, ERROR, "pixel values are not finite"))
    elif not (mean_lo <= mean <= mean_hi and std_lo <= std <= std_hi):
        outcomes.append(
            Outcome.fail(
                PIXEL_STATS,
                WARNING,
                f"{summary} outside {modality or '*'} bounds "
                f"(mean {mean_lo:g}..{mean_hi:g}, std {std_lo:g}..{std_hi:g})",
            )
        )
    else:
        outcomes.append(Outcome.ok(PIXEL_STATS, summary))
    return outcomes


def series_gaps(instance_numbers: Iterable[int]) -> list[int]:
    """Instance numbers missing between the lowest and the highest present."""
    present = sorted(set(instance_numbers))
    if len(present) < 2:
        return []
    have = set(present)
    return [n for n in range(present[0], present[-1] + 1) if n not in have]


def series_outcome(gaps: list[int], total: int) -> Outcome:
    if not gaps:
        return Outcome.ok(SERIES_COMPLETE, f"{total} instances, no gaps")
    shown = ", ".join(str(n) for n in gaps[:10]) + (" …" if len(gaps) > 10 else "")
    return Outcome.fail(
        SERIES_COMPLETE, WARNING, f"{len(gaps)} instance(s) missing in the series: {shown}"
    )


# --- text ----------------------------------------------------------------------------------


def check_text(path: Path, limits: dict[str, Any] | None = None) -> list[Outcome]:
    """Empty (error) or near-empty (warning) notes: fewer visible characters than the minimum."""
    minimum = int((limits or thresholds())["text_min_chars"])
    with open(path, "rb") as fh:
        data = fh.read(TEXT_READ_LIMIT)
    encoding = detect.text_encoding(data, final=len(data) < TEXT_READ_LIMIT) or "utf-8"
    visible = sum(1 for ch in data.decode(encoding, "replace") if not ch.isspace())
    if visible == 0:
        return [Outcome.fail(TEXT_NOT_EMPTY, ERROR, "the note is empty")]
    if visible < minimum:
        return [
            Outcome.fail(
                TEXT_NOT_EMPTY,
                WARNING,
                f"near-empty: {visible} visible characters (minimum {minimum})",
            )
        ]
    return [Outcome.ok(TEXT_NOT_EMPTY, f"{visible} visible characters")]


# --- waveforms -----------------------------------------------------------------------------


def _is_wfdb_header(path: Path) -> bool:
    try:
        head = detect.read_head(path)
    except OSError:
        return False
    encoding = detect.text_encoding(head, final=len(head) < detect.HEAD_BYTES)
    return (
        encoding is not None
        and waveforms.parse_wfdb_header(head.decode(encoding, "replace")) is not None
    )


def _longest_flat_run(channel: waveforms.Channel) -> int:
    """Longest run of identical samples, ignoring runs at the rails (clipping) or invalid."""
    d = channel.digital
    if d.size == 0:
        return 0
    ends = np.concatenate((np.flatnonzero(np.diff(d) != 0), [d.size - 1]))
    lengths = np.diff(np.concatenate(([-1], ends)))
    values = d[ends]
    keep = (values > channel.dig_min) & (values < channel.dig_max)
    if channel.invalid is not None:
        keep &= values != channel.invalid
    return int(lengths[keep].max()) if keep.any() else 0


def check_waveform(read: Any, limits: dict[str, Any] | None = None) -> list[Outcome]:
    """Readable, then per channel: flat lines, NaN/invalid samples, clipping at the rails."""
    limits = limits or thresholds()
    try:
        recording = read()
    except (waveforms.WaveformError, OSError, ValueError) as exc:
        reason = str(exc) if isinstance(exc, waveforms.WaveformError) else type(exc).__name__
        return [Outcome.fail(WAVEFORM_READABLE, ERROR, reason[:200])]
    if not recording.channels:
        return [Outcome.fail(WAVEFORM_READABLE, ERROR, "no signal channels")]
    flat, nans, clipped = [], [], []
    for channel in recording.channels:
        d = channel.digital
        if d.size == 0:
            flat.append(channel.index)
            continue
        window = (
            int(limits["flatline_seconds"] * channel.rate_hz) if channel.rate_hz > 0 else d.size
        )
        needed = min(max(int(limits["flatline_min_samples"]), window), d.size)
        if _longest_flat_run(channel) >= needed:
            flat.append(channel.index)
        if not (math.isfinite(channel.gain) and math.isfinite(channel.offset)):
            nans.append((channel.index, d.size))
        elif channel.invalid is not None and (bad := int(np.count_nonzero(d == channel.invalid))):
            nans.append((channel.index, bad))
        at_rail = (d <= channel.dig_min) | (d >= channel.dig_max)
        if channel.invalid is not None:
            at_rail &= d != channel.invalid
        fraction = float(np.count_nonzero(at_rail)) / d.size
        if fraction >= limits["clip_fraction"]:
            clipped.append((channel.index, fraction))
    n = len(recording.channels)
    outcomes = [Outcome.ok(WAVEFORM_READABLE, f"{n} channels")]
    outcomes.append(
        Outcome.fail(WAVEFORM_FLATLINE, WARNING, f"flat-line channels: {_indexes(flat)}")
        if flat
        else Outcome.ok(WAVEFORM_FLATLINE)
    )
    outcomes.append(
        Outcome.fail(
            WAVEFORM_NAN,
            ERROR,
            "NaN/invalid samples in channels: "
            + ", ".join(f"{i} ({count})" for i, count in nans[:20]),
        )
        if nans
        else Outcome.ok(WAVEFORM_NAN)
    )
    outcomes.append(
        Outcome.fail(
            WAVEFORM_CLIPPING,
            WARNING,
            "clipped channels: " + ", ".join(f"{i} ({f:.1%})" for i, f in clipped[:20]),
        )
        if clipped
        else Outcome.ok(WAVEFORM_CLIPPING)
    )
    return outcomes


def _indexes(values: list[int]) -> str:
    return ", ".join(str(v) for v in values[:30]) + (" …" if len(values) > 30 else "")
