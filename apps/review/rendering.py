"""Turning de-identified outputs into what a reviewer looks at: PNG, tables, marks, traces.

Server-side on purpose: the browser never receives DICOM bytes or a decoder, only an 8-bit
picture of the window asked for, so nothing beyond the displayed pixels leaves the server.
Kept robust rather than complete: anything unreadable becomes a clear message on the
screen, never a 500 that stops the reviewer mid-batch.
"""

from __future__ import annotations

import io
import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from threading import Lock
from typing import Any

import numpy as np

# Window presets per modality: (key, label, center, width). The first is the default.
WINDOW_PRESETS: dict[str, list[tuple[str, str, float, float]]] = {
    "CT": [
        ("soft", "Soft tissue", 40, 400),
        ("lung", "Lung", -600, 1500),
        ("bone", "Bone", 400, 1800),
        ("brain", "Brain", 40, 80),
        ("liver", "Liver", 60, 160),
    ],
    "PT": [("suv", "SUV 0–10", 5, 10)],
}
MAX_HEADER_VALUE = 120


class RenderError(ValueError):
    """An output cannot be shown; the message names why (never its content)."""


# --- DICOM -----------------------------------------------------------------------------------


@dataclass
class Image:
    """Decoded pixels in modality units (rescale applied), ``[frames, rows, cols(, 3)]``."""

    pixels: np.ndarray
    modality: str
    photometric: str
    default_center: float | None
    default_width: float | None

    @property
    def frames(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def rows(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def cols(self) -> int:
        return int(self.pixels.shape[2])

    @property
    def is_color(self) -> bool:
        return self.pixels.ndim == 4


_cache: OrderedDict[tuple[str, int, int], Image] = OrderedDict()
_cache_lock = Lock()
_CACHE_SIZE = 8  # dragging the window re-renders the same file many times a second


def _first(value: Any) -> float | None:
    if value is None:
        return None
    try:
        if hasattr(value, "__len__") and not isinstance(value, str | bytes):
            value = value[0]
        return float(value)
    except (TypeError, ValueError, IndexError):
        return None


def load_image(path: Path) -> Image:
    """Read and decode a DICOM file once (small LRU keyed by path, mtime and size)."""
    try:
        st = path.stat()
    except OSError as exc:
        raise RenderError(f"output file is missing ({exc.strerror})") from None
    key = (str(path), st.st_mtime_ns, st.st_size)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    import pydicom

    try:
        ds = pydicom.dcmread(str(path))
        arr = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for bad or pixel-less files
        raise RenderError(f"no displayable pixels: {type(exc).__name__}") from None
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if (samples == 1 and (frames == 1 and arr.ndim == 2)) or (samples == 3 and arr.ndim == 3):
        arr = arr[np.newaxis]
    if samples == 1:
        slope = float(getattr(ds, "RescaleSlope", 1) or 1)
        intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
        pixels = arr.astype(np.float32) * slope + intercept
    else:
        pixels = np.asarray(arr, dtype=np.uint8)
    image = Image(
        pixels=pixels,
        modality=str(getattr(ds, "Modality", "") or ""),
        photometric=str(getattr(ds, "PhotometricInterpretation", "") or ""),
        default_center=_first(getattr(ds, "WindowCenter", None)),
        default_width=_first(getattr(ds, "WindowWidth", None)),
    )
    with _cache_lock:
        _cache[key] = image
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return image


def presets_for(image: Image) -> list[dict[str, Any]]:
    """The window presets offered for this image: the file's own, the modality's, auto."""
    out = []
    if image.default_center is not None and image.default_width:
        out.append(
            {"key": "file", "label": "DICOM", "c": image.default_center, "w": image.default_width}
        )
    for key, label, c, w in WINDOW_PRESETS.get(image.modality.upper(), []):
        if any(p["c"] == c and p["w"] == w for p in out):
            continue  # the file's own window often is the soft-tissue one: one key, one look
        out.append({"key": key, "label": label, "c": c, "w": w})
    out.append({"key": "auto", "label": "Auto", "c": None, "w": None})
    return out


def render_png(
    image: Image, *, frame: int = 0, center: float | None = None, width: float | None = None
) -> bytes:
    """One frame as an 8-bit PNG: linear window (center/width), auto when not given."""
    from PIL import Image as PILImage

    if not 0 <= frame < image.frames:
        raise RenderError(f"frame {frame} is outside 0–{image.frames - 1}")
    plane = image.pixels[frame]
    if image.is_color:
        out = PILImage.fromarray(plane, "RGB")
    else:
        if center is None or width is None or width <= 0:
            if image.default_center is not None and image.default_width and center is None:
                center, width = image.default_center, image.default_width
            else:
                lo, hi = np.percentile(plane, [0.5, 99.5])
                center, width = (lo + hi) / 2.0, max(float(hi - lo), 1.0)
        lo = center - width / 2.0
        scaled = (plane - lo) * (255.0 / width)
        np.clip(scaled, 0, 255, out=scaled)
        gray = scaled.astype(np.uint8)
        if image.photometric == "MONOCHROME1":
            gray = 255 - gray
        out = PILImage.fromarray(gray, "L")
    buf = io.BytesIO()
    out.save(buf, "PNG", compress_level=1)  # speed over size: it is one screen, once
    return buf.getvalue()


def header_rows(path: Path) -> list[dict[str, str]]:
    """The de-identified header as rows (tag, keyword, VR, value), pixel data left out."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception as exc:
        raise RenderError(f"unreadable DICOM header: {type(exc).__name__}") from None
    rows = []
    for elem in [*ds.file_meta, *ds] if hasattr(ds, "file_meta") else ds:
        if elem.tag == 0x7FE00010:
            continue
        if elem.VR == "SQ":
            value = f"[{len(elem.value)} item(s)]"
        elif elem.VR in ("OB", "OW", "OF", "OD", "OL", "UN"):
            value = f"<{len(elem.value or b'')} bytes>"
        else:
            value = str(elem.value)
        if len(value) > MAX_HEADER_VALUE:
            value = value[: MAX_HEADER_VALUE - 1] + "…"
        rows.append(
            {
                "tag": f"({elem.tag.group:04X},{elem.tag.element:04X})",
                "keyword": elem.keyword or elem.name,
                "vr": elem.VR,
                "value": value,
            }
        )
    return rows


def masked_boxes(result: Any) -> list[dict[str, int]]:
    """Pixel boxes the engine masked, when the run stored them; [] when it stored counts only.

    Looked for as ``actions["boxes"]`` or ``findings["boxes"]``: a list of
    ``[x0, y0, x1, y1]`` or ``[frame, x0, y0, x1, y1]`` in image coordinates.
    """
    for holder in (result.actions, result.findings):
        raw = holder.get("boxes") if isinstance(holder, dict) else None
        if not isinstance(raw, list):
            continue
        boxes = []
        for b in raw:
            if not isinstance(b, list | tuple) or len(b) not in (4, 5):
                continue
            if not all(isinstance(v, int) for v in b):
                continue
            frame, (x0, y0, x1, y1) = (b[0], b[1:]) if len(b) == 5 else (0, b)
            if x1 > x0 and y1 > y0:
                boxes.append({"frame": frame, "x0": x0, "y0": y0, "x1": x1, "y1": y1})
        return boxes
    return []


# --- text ------------------------------------------------------------------------------------


def text_segments(text: str, spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The note cut into plain and masked segments, masks typed (spans in output offsets)."""
    clean = sorted(
        (
            (int(s["start"]), int(s["end"]), str(s.get("type", "")))
            for s in spans
            if isinstance(s, dict)
            and isinstance(s.get("start"), int)
            and isinstance(s.get("end"), int)
        ),
        key=lambda s: (s[0], -s[1]),
    )
    out: list[dict[str, Any]] = []
    pos = 0
    for start, end, kind in clean:
        start, end = max(start, pos), min(end, len(text))
        if end <= start:
            continue  # overlapping or out of range: the earlier mark already covers it
        if start > pos:
            out.append({"text": text[pos:start], "type": None, "start": pos})
        out.append({"text": text[start:end], "type": kind or "mask", "start": start})
        pos = end
    if pos < len(text):
        out.append({"text": text[pos:], "type": None, "start": pos})
    return out


def read_text(path: Path, limit: int = 200_000) -> str:
    try:
        data = path.read_bytes()[:limit]
    except OSError as exc:
        raise RenderError(f"output file is missing ({exc.strerror})") from None
    for enc in ("utf-8", "gb18030"):
        try:
            return data.decode(enc)
        except UnicodeDecodeError:
            continue
    return data.decode("utf-8", errors="replace")


# --- waveforms -------------------------------------------------------------------------------


def _ascii(raw: bytes) -> str:
    return raw.decode("ascii", errors="replace").strip()


def read_edf(path: Path, *, seconds: float = 10.0, max_points: int = 2500) -> dict[str, Any]:
    """A small EDF/EDF+ reader: header fields and the first ``seconds`` of each signal,
    physical units, decimated to ``max_points`` (enough for the eye, light for the page)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(256)
            if len(head) < 256:
                raise RenderError("EDF header is truncated")
            ns = int(_ascii(head[252:256]))
            n_records = int(_ascii(head[236:244]))
            duration = float(_ascii(head[244:252]) or 1)
            sig = fh.read(ns * 256)
            if len(sig) < ns * 256:
                raise RenderError("EDF signal header is truncated")

            def field(offset: int, width: int) -> list[str]:
                base = offset * ns
                return [_ascii(sig[base + i * width : base + (i + 1) * width]) for i in range(ns)]

            labels = field(0, 16)
            units = field(16 + 80, 8)
            pmin = [float(v) for v in field(16 + 80 + 8, 8)]
            pmax = [float(v) for v in field(16 + 80 + 16, 8)]
            dmin = [float(v) for v in field(16 + 80 + 24, 8)]
            dmax = [float(v) for v in field(16 + 80 + 32, 8)]
            nsamp = [int(v) for v in field(16 + 80 + 40 + 80, 8)]
            record_len = sum(nsamp)
            want = max(1, min(n_records if n_records > 0 else 1, int(np.ceil(seconds / duration))))
            data = fh.read(want * record_len * 2)
    except RenderError:
        raise
    except (OSError, ValueError) as exc:
        raise RenderError(f"unreadable EDF: {type(exc).__name__}") from None
    records = len(data) // (record_len * 2) if record_len else 0
    raw = np.frombuffer(data[: records * record_len * 2], dtype="<i2").reshape(records, record_len)
    signals = []
    col = 0
    for i in range(ns):
        block = raw[:, col : col + nsamp[i]].reshape(-1)
        col += nsamp[i]
        if labels[i].startswith("EDF Annotations"):
            continue
        gain = (pmax[i] - pmin[i]) / ((dmax[i] - dmin[i]) or 1)
        y = (block.astype(np.float64) - dmin[i]) * gain + pmin[i]
        fs = nsamp[i] / duration if duration else 1.0
        step = max(1, len(y) // max_points)
        signals.append(
            {
                "label": labels[i],
                "unit": units[i],
                "fs": fs,
                "t": [round(k / fs, 4) for k in range(0, len(y), step)],
                "y": [round(float(v), 4) for v in y[::step]],
            }
        )
    header = {
        "version": _ascii(head[0:8]),
        "patient": _ascii(head[8:88]),
        "recording": _ascii(head[88:168]),
        "start_date": _ascii(head[168:176]),
        "start_time": _ascii(head[176:184]),
        "records": str(n_records),
        "record_seconds": str(duration),
        "signals": str(ns),
    }
    return {"header": header, "signals": signals}


def read_npy(path: Path, *, fs: float | None = None, max_points: int = 2500) -> dict[str, Any]:
    """A ``wav.npy``-style array ``[channels, samples]`` (the shard format's waveform)."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise RenderError(f"unreadable waveform array: {type(exc).__name__}") from None
    if arr.ndim == 1:
        arr = arr[np.newaxis]
    if arr.ndim != 2:
        raise RenderError(f"waveform array has shape {arr.shape}, expected [channels, samples]")
    rate = fs or 1.0
    step = max(1, arr.shape[1] // max_points)
    signals = [
        {
            "label": f"ch{i}",
            "unit": "",
            "fs": rate,
            "t": [round(k / rate, 4) for k in range(0, arr.shape[1], step)],
            "y": [round(float(v), 4) for v in arr[i, ::step]],
        }
        for i in range(min(arr.shape[0], 16))
    ]
    header = {"channels": str(arr.shape[0]), "samples": str(arr.shape[1]), "dtype": str(arr.dtype)}
    return {"header": header, "signals": signals}


def read_wfdb_header(path: Path) -> dict[str, Any]:
    """A WFDB ``.hea``: its lines as header fields, and format-16 signals when the ``.dat``
    sits beside it (other formats are listed, not plotted)."""
    text = read_text(path, limit=64_000)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    header: dict[str, str] = {}
    signals: list[dict[str, Any]] = []
    if not lines:
        return {"header": header, "signals": signals}
    first = lines[0].split()
    header["record"] = first[0] if first else ""
    n_sig = int(first[1]) if len(first) > 1 and first[1].isdigit() else 0
    fs = float(first[2].split("/")[0]) if len(first) > 2 else 250.0
    header["sampling_rate"] = str(fs)
    specs = [ln.split() for ln in lines[1 : 1 + n_sig]]
    for i, ln in enumerate(lines[1 + n_sig :]):
        header[f"comment_{i + 1}"] = ln
    for i, spec in enumerate(specs):
        header[f"signal_{i + 1}"] = " ".join(spec)
    if specs and all(len(s) > 1 and s[1].split("x")[0] == "16" for s in specs):
        dat = path.with_name(Path(specs[0][0]).name)
        if not dat.is_file():
            dat = path.with_suffix(".dat")  # the run writes the signal beside its header
        if dat.is_file():
            raw = np.fromfile(dat, dtype="<i2", count=int(fs * 10) * n_sig)
            raw = raw[: (len(raw) // n_sig) * n_sig].reshape(-1, n_sig)
            step = max(1, raw.shape[0] // 2500)
            for i, spec in enumerate(specs):
                gain = spec[2].split("/")[0].split("(")[0] if len(spec) > 2 else "200"
                try:
                    g = float(gain) or 200.0
                except ValueError:
                    g = 200.0
                y = raw[::step, i] / g
                signals.append(
                    {
                        "label": spec[-1] if len(spec) > 8 else f"sig{i}",
                        "unit": "",
                        "fs": fs,
                        "t": [round(k * step / fs, 4) for k in range(len(y))],
                        "y": [round(float(v), 4) for v in y],
                    }
                )
    return {"header": header, "signals": signals}


def read_waveform(path: Path, kind: str) -> dict[str, Any]:
    """Whatever the run wrote for a waveform file: EDF, a .npy array or a WFDB header."""
    suffix = path.suffix.lower()
    if kind == "edf" or suffix in (".edf", ".bdf", ".rec"):
        return read_edf(path)
    if suffix == ".npy":
        return read_npy(path)
    if kind.startswith("wfdb") or suffix == ".hea":
        return read_wfdb_header(path)
    raise RenderError(f"no waveform reader for kind {kind!r}")


def waveform_json(data: dict[str, Any]) -> str:
    return json.dumps(data["signals"], separators=(",", ":"))


# --- what a kind is shown as -----------------------------------------------------------------

WAVEFORM_KINDS = {"edf", "wfdb_header", "wfdb", "npy", "waveform"}


def view_kind(kind: str, relpath: str) -> str:
    """``dicom``, ``text`` or ``waveform`` (or ``other``), from the result's kind and name."""
    k = kind.lower()
    if k == "dicom":
        return "dicom"
    if k == "text":
        return "text"
    if k in WAVEFORM_KINDS or relpath.lower().endswith((".edf", ".npy", ".hea")):
        return "waveform"
    return "other"
