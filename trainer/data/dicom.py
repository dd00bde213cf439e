"""DICOM members of a sample -> image stacks in modality units, and their metadata records.

Shards of format 2 carry the de-identified DICOM files byte for byte (``<key>.0000.dcm``, ...);
the reader decodes them here, when a sample is read, into the arrays format 1 stored as
``img.npy``: grayscale rescaled (``slope * stored + intercept``, rounded, clipped) to int16
modality units (HU for CT) ``[slices, rows, cols]``, colour as uint8 ``[slices, rows, cols, 3]``;
one stack per series and frame shape, slices sorted by InstanceNumber, then
ImagePositionPatient z, then member order. Torch-free. Native 16-bit grayscale little-endian
files are read without pydicom (``_quick_header``); pydicom is imported for the others.
"""

from __future__ import annotations

import io
import re
import struct
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

# Default display windows [center, width] when a DICOM carries none (modality units).
DEFAULT_WINDOWS = {"CT": [40.0, 400.0]}
_NATIVE_LITTLE_ENDIAN = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"})


class DicomDecodeError(ValueError):
    """A DICOM member could not be decoded; the message names the member, never a value."""


def _float_list(value: Any) -> list[float]:
    if value is None:
        return []
    try:
        return [float(v) for v in value]
    except TypeError:
        return [float(value)]


def _first(value: Any) -> float | None:
    values = _float_list(value)
    return values[0] if values else None


def to_int16_units(stored: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """Stored values -> modality units (HU for CT) as int16, the range CT/MR values fit in.

    The common case (slope 1, whole-number intercept) stays in integer arithmetic, which is
    exact and several times faster than the float path that other slopes need.
    """
    if slope == 1.0 and float(intercept).is_integer():
        out = stored.astype(np.int32)
        out += int(intercept)
    else:
        out = np.rint(stored.astype(np.float64) * slope + intercept)
    return np.clip(out, -32768, 32767).astype(np.int16)


def stored_values(ds: Any) -> np.ndarray:
    """The stored pixel values of a data set, as pydicom's ``pixel_array`` gives them.

    The common case, 16-bit grayscale in an uncompressed little-endian transfer syntax, is read
    straight from the bytes: ``pixel_array`` spends about 1 ms per 512×512 slice on checks
    and dispatch, which the trainer's loader would pay for every slice it reads. Bits above
    BitsStored are dropped (unsigned) or replaced by the sign (signed), as pydicom does.
    """
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
    rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    frames = int(ds.get("NumberOfFrames") or 1)
    data = ds.get("PixelData")
    if (
        syntax in _NATIVE_LITTLE_ENDIAN
        and ds.get("BitsAllocated") == 16
        and int(ds.get("SamplesPerPixel") or 1) == 1
        and data is not None
        and 0 < rows * cols * frames * 2 <= len(data)
        and ds.get("PixelRepresentation") in (0, 1)
        and 0 < int(ds.get("BitsStored") or 16) <= 16
    ):
        dtype = "<i2" if ds.PixelRepresentation == 1 else "<u2"
        values = np.frombuffer(data, dtype=dtype, count=rows * cols * frames)
        unused = 16 - int(ds.get("BitsStored") or 16)
        if unused:
            values = (values << unused) >> unused  # arithmetic shift for int16: sign-extends
        shape = (frames, rows, cols) if frames > 1 else (rows, cols)
        return values.reshape(shape)
    return ds.pixel_array


@dataclass
class _Slice:
    series: str
    modality: str
    order: tuple[float, float, int]
    pixels: np.ndarray  # [frames, R, C] int16 or [frames, R, C, 3] uint8
    spacing: list[float]
    slice_thickness: float | None
    slope: float
    intercept: float
    window: list[float] | None
    colour: bool
    source: str


@dataclass
class _Header:
    """What a slice needs from its data set, as pydicom's attribute values give it."""

    samples_per_pixel: int
    frames: int
    slope: Any
    intercept: Any
    position: Any
    instance: Any
    modality: Any
    center: Any
    width: Any
    series: Any
    spacing: Any
    thickness: Any


# --- the common file, read without pydicom ----------------------------------------------------
# Native 16-bit grayscale in explicit or implicit VR little endian is what CT and MR archives
# hold. pydicom spends ~1 ms per file building its data set and converting the twenty values a
# slice needs; walking the top level for those tags takes a tenth of that. Anything else
# (compressed, big endian, colour, 8/32-bit, a value this walk would read differently) goes to
# pydicom, and tests hold the two paths equal on every file that takes the short one.

_U16 = struct.Struct("<H").unpack_from
_U32 = struct.Struct("<L").unpack_from
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN"} | {b"UR", b"UT", b"UV"}
)
_EXPLICIT_LE, _IMPLICIT_LE = b"1.2.840.10008.1.2.1", b"1.2.840.10008.1.2"
_PIXEL_DATA, _UNDEFINED = 0x7FE00010, 0xFFFFFFFF
_STRINGS = {  # tag -> _Header field, for the text values (CS, DS, IS, UI)
    0x00080060: "modality",
    0x00180050: "thickness",
    0x0020000E: "series",
    0x00200013: "instance",
    0x00200032: "position",
    0x00280008: "frames",
    0x00280030: "spacing",
    0x00281050: "center",
    0x00281051: "width",
    0x00281052: "intercept",
    0x00281053: "slope",
}
_NUMBERS = {  # US values
    0x00280002: "samples_per_pixel",
    0x00280010: "rows",
    0x00280011: "columns",
    0x00280100: "bits_allocated",
    0x00280101: "bits_stored",
    0x00280103: "pixel_representation",
}
_SINGLE = frozenset({"slope", "intercept", "instance", "thickness"})
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _element(data: bytes, pos: int, explicit: bool) -> tuple[int, bytes, int, int]:
    """(tag, VR or b"", value length, value offset) of the element header at ``pos``."""
    group, element = _U16(data, pos)[0], _U16(data, pos + 2)[0]
    tag = group << 16 | element
    if group == 0xFFFE or not explicit:  # items and delimiters never carry a VR
        return tag, b"", _U32(data, pos + 4)[0], pos + 8
    vr = data[pos + 4 : pos + 6]
    if vr in _LONG_VRS:
        return tag, vr, _U32(data, pos + 8)[0], pos + 12
    return tag, vr, _U16(data, pos + 6)[0], pos + 8


def _skip_undefined(data: bytes, pos: int, explicit: bool) -> int:
    """The offset after the sequence of undefined length whose items start at ``pos``."""
    depth = 1
    while depth:
        tag, _vr, length, pos = _element(data, pos, explicit)
        if tag == 0xFFFEE000:  # an item: skip it whole, or walk into it
            if length == _UNDEFINED:
                depth += 1
            else:
                pos += length
        elif tag in (0xFFFEE00D, 0xFFFEE0DD):  # item or sequence delimiter
            depth -= 1
        elif length == _UNDEFINED:  # a sequence nested in an item
            depth += 1
        else:
            pos += length
        if pos > len(data):
            raise ValueError("truncated")
    return pos


def _values(text: str) -> list[float] | None:
    """A DS/IS value's numbers, or None when pydicom might read it another way."""
    parts = [p.strip(" \x00") for p in text.split("\\")]
    if not all(_NUMBER.match(p) for p in parts):
        return None
    return [float(p) for p in parts]


def _quick_header(data: bytes) -> tuple[_Header, np.ndarray] | None:
    """Header fields and stored values of a native 16-bit grayscale little-endian Part 10
    file, read by walking its top level; None when pydicom must read it."""
    if data[128:132] != b"DICM":
        return None
    pos, syntax = 132, b""
    while pos + 8 <= len(data) and data[pos : pos + 2] == b"\x02\x00":
        tag, _vr, length, pos = _element(data, pos, True)
        if tag == 0x00020010:
            syntax = data[pos : pos + length].rstrip(b"\x00 ")
        pos += length
    if syntax not in (_EXPLICIT_LE, _IMPLICIT_LE):
        return None
    explicit = syntax == _EXPLICIT_LE
    text: dict[str, str] = {}
    number: dict[str, int] = {}
    pixels = None
    while pos + 8 <= len(data):
        tag, vr, length, pos = _element(data, pos, explicit)
        if length == _UNDEFINED:
            if tag == _PIXEL_DATA or vr not in (b"SQ", b""):
                return None  # encapsulated pixels; UN of undefined length
            pos = _skip_undefined(data, pos, explicit)
            continue
        if pos + length > len(data):
            return None
        if tag == _PIXEL_DATA:
            pixels = memoryview(data)[pos : pos + length]
            break
        if tag in _STRINGS:
            text[_STRINGS[tag]] = data[pos : pos + length].decode("ascii")
        elif tag in _NUMBERS:
            if length != 2:
                return None
            number[_NUMBERS[tag]] = _U16(data, pos)[0]
        pos += length
    rows, cols = number.get("rows", 0), number.get("columns", 0)
    frames_text = text.get("frames", "").strip(" \x00") or "1"
    stored = number.get("bits_stored") or 16
    if (
        pixels is None
        or number.get("bits_allocated") != 16
        or number.get("samples_per_pixel", 1) != 1
        or number.get("pixel_representation") not in (0, 1)
        or not frames_text.isdigit()
        or not 0 < stored <= 16
    ):
        return None
    frames = int(frames_text)
    if not 0 < rows * cols * frames * 2 <= len(pixels):
        return None
    numbers: dict[str, Any] = {}
    for name in (
        "slope",
        "intercept",
        "position",
        "instance",
        "center",
        "width",
        "spacing",
        "thickness",
    ):
        if name in text:
            parsed = _values(text[name])
            if parsed is None or (len(parsed) != 1 and name in _SINGLE):
                return None  # pydicom's reading of it decides (and names any error)
            numbers[name] = (
                parsed[0] if len(parsed) == 1 and name not in ("position", "spacing") else parsed
            )
    dtype = "<i2" if number["pixel_representation"] == 1 else "<u2"
    values = np.frombuffer(pixels, dtype=dtype, count=rows * cols * frames)
    if stored < 16:
        values = (values << (16 - stored)) >> (16 - stored)  # as stored_values does
    header = _Header(
        samples_per_pixel=1,
        frames=frames,
        slope=numbers.get("slope", 1.0),
        intercept=numbers.get("intercept", 0.0),
        position=numbers.get("position"),
        instance=numbers.get("instance"),
        modality=text.get("modality", "").strip(" \x00"),
        center=numbers.get("center"),
        width=numbers.get("width"),
        series=text.get("series", "").rstrip(" \x00"),
        spacing=numbers.get("spacing"),
        thickness=numbers.get("thickness"),
    )
    return header, values.reshape((frames, rows, cols) if frames > 1 else (rows, cols))


def _pydicom_header(data: bytes) -> tuple[_Header, np.ndarray]:
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    raw = stored_values(ds)
    header = _Header(
        samples_per_pixel=int(getattr(ds, "SamplesPerPixel", 1) or 1),
        frames=int(getattr(ds, "NumberOfFrames", 1) or 1),
        slope=getattr(ds, "RescaleSlope", 1.0),
        intercept=getattr(ds, "RescaleIntercept", 0.0),
        position=getattr(ds, "ImagePositionPatient", None),
        instance=getattr(ds, "InstanceNumber", None),
        modality=getattr(ds, "Modality", ""),
        center=getattr(ds, "WindowCenter", None),
        width=getattr(ds, "WindowWidth", None),
        series=getattr(ds, "SeriesInstanceUID", ""),
        spacing=getattr(ds, "PixelSpacing", None),
        thickness=getattr(ds, "SliceThickness", None),
    )
    return header, raw


def decode_slice(data: bytes, position: int, source: str, name: str) -> _Slice:
    """One DICOM file's bytes as rescaled frames; ``position`` breaks ordering ties."""
    try:
        quick = _quick_header(data)
    except (struct.error, ValueError, IndexError):
        quick = None  # a damaged file: pydicom names the problem, or reads what it can
    try:
        header, raw = quick if quick is not None else _pydicom_header(data)
    except Exception as exc:
        raise DicomDecodeError(f"{name}: DICOM pixels unreadable ({type(exc).__name__})") from None
    colour = header.samples_per_pixel == 3
    if colour:
        pixels = raw if raw.ndim == 4 else raw[None]
        pixels = np.clip(pixels, 0, 255).astype(np.uint8)
        slope, intercept = 1.0, 0.0
    else:
        frames = header.frames
        pixels = raw if (raw.ndim == 3 and frames > 1) else raw.reshape((1, *raw.shape[-2:]))
        slope = float(header.slope or 1.0)
        intercept = float(header.intercept or 0.0)
        pixels = to_int16_units(pixels, slope, intercept)
    patient_position = _float_list(header.position)
    order = (
        float(header.instance) if header.instance is not None else float("inf"),
        patient_position[2] if len(patient_position) == 3 else 0.0,
        position,
    )
    modality = str(header.modality or "OT")
    center, width = _first(header.center), _first(header.width)
    window = [center, width] if center is not None and width else DEFAULT_WINDOWS.get(modality)
    return _Slice(
        series=str(header.series or ""),
        modality=modality,
        order=order,
        pixels=pixels,
        spacing=_float_list(header.spacing),
        slice_thickness=_first(header.thickness),
        slope=slope,
        intercept=intercept,
        window=[float(w) for w in window] if window else None,
        colour=colour,
        source=source,
    )


def image_stacks(
    members: list[tuple[str, bytes, str]],
) -> tuple[list[np.ndarray], list[dict[str, Any]]]:
    """``(member name, bytes, source sha256)`` in member order -> stacks and their records.

    Slices are grouped by series (then frame shape and colour) and sorted by InstanceNumber,
    position and member order; each record holds modality, shape, dtype, spacing
    ``[row, col, slice thickness]`` mm, rescale, window ``[center, width]`` and sources.
    """
    series: dict[tuple[str, str, tuple[int, ...], bool], list[_Slice]] = defaultdict(list)
    for position, (name, data, source) in enumerate(members):
        s = decode_slice(data, position, source, name)
        series[(s.series, s.modality, tuple(s.pixels.shape[1:]), s.colour)].append(s)
    stacks, records = [], []
    for group_key in sorted(series):
        slices = sorted(series[group_key], key=lambda s: s.order)
        stack = np.ascontiguousarray(np.concatenate([s.pixels for s in slices], axis=0))
        first = slices[0]
        stacks.append(stack)
        records.append(
            {
                "modality": first.modality,
                "shape": list(stack.shape),
                "dtype": str(stack.dtype),
                # [row, column, slice] in mm; slice spacing from the thickness when given.
                "spacing": [*first.spacing[:2], first.slice_thickness] if first.spacing else None,
                "rescale": {"slope": first.slope, "intercept": first.intercept, "applied": True},
                "window": first.window,
                "sources": [s.source for s in slices],
            }
        )
    return stacks, records
