"""DICOM members of a sample -> image stacks in modality units, and their metadata records.

Shards of format 2 carry the de-identified DICOM files byte for byte (``<key>.0000.dcm``, ...);
the reader decodes them here, when a sample is read, into the arrays format 1 stored as
``img.npy``: grayscale rescaled (``slope * stored + intercept``, rounded, clipped) to int16
modality units (HU for CT) ``[slices, rows, cols]``, colour as uint8 ``[slices, rows, cols, 3]``;
one stack per series and frame shape, slices sorted by InstanceNumber, then
ImagePositionPatient z, then member order. Torch-free; pydicom is imported on first use.
"""

from __future__ import annotations

import io
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


def decode_slice(data: bytes, position: int, source: str, name: str) -> _Slice:
    """One DICOM file's bytes as rescaled frames; ``position`` breaks ordering ties."""
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        raw = stored_values(ds)
    except Exception as exc:
        raise DicomDecodeError(f"{name}: DICOM pixels unreadable ({type(exc).__name__})") from None
    samples_per_pixel = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    colour = samples_per_pixel == 3
    if colour:
        pixels = raw if raw.ndim == 4 else raw[None]
        pixels = np.clip(pixels, 0, 255).astype(np.uint8)
        slope, intercept = 1.0, 0.0
    else:
        pixels = raw if (raw.ndim == 3 and frames > 1) else raw.reshape((1, *raw.shape[-2:]))
        slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
        intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
        pixels = to_int16_units(pixels, slope, intercept)
    patient_position = _float_list(getattr(ds, "ImagePositionPatient", None))
    instance = getattr(ds, "InstanceNumber", None)
    order = (
        float(instance) if instance is not None else float("inf"),
        patient_position[2] if len(patient_position) == 3 else 0.0,
        position,
    )
    modality = str(getattr(ds, "Modality", "") or "OT")
    center, width = (
        _first(getattr(ds, "WindowCenter", None)),
        _first(getattr(ds, "WindowWidth", None)),
    )
    window = [center, width] if center is not None and width else DEFAULT_WINDOWS.get(modality)
    return _Slice(
        series=str(getattr(ds, "SeriesInstanceUID", "") or ""),
        modality=modality,
        order=order,
        pixels=pixels,
        spacing=_float_list(getattr(ds, "PixelSpacing", None)),
        slice_thickness=_first(getattr(ds, "SliceThickness", None)),
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
