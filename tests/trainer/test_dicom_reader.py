"""The reader's short path for common DICOM files reads every slice as the pydicom path does."""

from __future__ import annotations

import dataclasses
import io
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer.data import dicom


def both_paths(data: bytes, monkeypatch) -> tuple[dicom._Slice | None, dicom._Slice]:
    """(short path's slice, or None where it hands the file to pydicom; pydicom's slice)."""
    quick = dicom._quick_header(data)
    fast = dicom.decode_slice(data, 3, "sha", "m") if quick is not None else None
    with monkeypatch.context() as m:
        m.setattr(dicom, "_quick_header", lambda _data: None)
        reference = dicom.decode_slice(data, 3, "sha", "m")
    return fast, reference


def assert_same(fast: dicom._Slice, reference: dicom._Slice) -> None:
    for f in dataclasses.fields(dicom._Slice):
        a, b = getattr(fast, f.name), getattr(reference, f.name)
        if f.name == "pixels":
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a, b)
        else:
            assert a == b, f.name


def ct_bytes(
    pixels: np.ndarray,
    *,
    implicit: bool = False,
    extra: dict[str, object] | None = None,
    sequence: bool = False,
    bits_stored: int = 16,
    signed: int = 0,
) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, "1.2.3.4"
    ds.Modality, ds.SeriesInstanceUID = "CT", "1.2.3.9"
    if sequence:  # undefined-length sequences (nested) before the pixel data
        inner = Dataset()
        inner.CodeValue, inner.CodingSchemeDesignator = "T-D0050", "SRT"
        item = Dataset()
        item.ReferencedSOPInstanceUID = "1.2.3.5"
        item.PurposeOfReferenceCodeSequence = Sequence([inner])
        ds.ReferencedImageSequence = Sequence([item, Dataset()])
        ds["ReferencedImageSequence"].is_undefined_length = True
        item["PurposeOfReferenceCodeSequence"].is_undefined_length = True
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)
    frames = pixels.shape[0] if pixels.ndim == 3 else 1
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = signed
    ds.PixelData = pixels.astype("<u2").tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=implicit, little_endian=True, enforce_file_format=True)
    return buf.getvalue()


PLAIN = np.arange(4 * 6, dtype=np.uint16).reshape(4, 6) * 97
FULL = {
    "RescaleSlope": "1",
    "RescaleIntercept": "-1024",
    "ImagePositionPatient": ["-120.5", "30", "12.25"],
    "InstanceNumber": "7",
    "WindowCenter": ["40", "400"],
    "WindowWidth": ["400", "1500"],
    "PixelSpacing": ["0.703125", "0.703125"],
    "SliceThickness": "1.25",
}


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"extra": FULL},
        {"extra": FULL, "implicit": True},
        {"extra": FULL, "sequence": True},
        {"extra": FULL, "sequence": True, "implicit": True},
        {"extra": {**FULL, "RescaleSlope": "0.5", "RescaleIntercept": "-1024.25"}},
        {"bits_stored": 12, "signed": 1},
        {"bits_stored": 12, "signed": 0, "extra": {"RescaleSlope": "2.0E0"}},
    ],
    ids=[
        "bare",
        "full",
        "implicit",
        "sequences",
        "implicit-sequences",
        "float-rescale",
        "12-bit-signed",
        "12-bit-unsigned",
    ],
)
def test_the_short_path_reads_common_files_as_pydicom_does(kwargs, monkeypatch) -> None:
    fast, reference = both_paths(ct_bytes(PLAIN, **kwargs), monkeypatch)
    assert fast is not None  # these files are what the short path is for
    assert_same(fast, reference)


def test_multi_frame_files_take_the_short_path_with_all_frames(monkeypatch) -> None:
    pixels = np.arange(3 * 4 * 5, dtype=np.uint16).reshape(3, 4, 5)
    fast, reference = both_paths(ct_bytes(pixels, extra=FULL), monkeypatch)
    assert fast is not None and fast.pixels.shape == (3, 4, 5)
    assert_same(fast, reference)


@pytest.mark.parametrize(
    "extra",
    [
        {"InstanceNumber": ["1", "2"]},  # multi-valued where one value is expected
        {"RescaleSlope": ""},  # empty
        {"SliceThickness": "9.75"},  # written as "9,75" below: not a DS
    ],
)
def test_values_pydicom_might_read_otherwise_go_to_pydicom(extra) -> None:
    data = ct_bytes(PLAIN, extra={**FULL, **extra}).replace(b"9.75", b"9,75")
    assert dicom._quick_header(data) is None


def outcome(data: bytes) -> dicom._Slice | str:
    try:
        return dicom.decode_slice(data, 3, "sha", "m")
    except Exception as exc:  # the error type is the outcome compared
        return type(exc).__name__


def test_every_pydicom_sample_file_reads_the_same_on_both_paths(monkeypatch) -> None:
    from pydicom.data import get_testdata_files

    short = 0
    for path in sorted(get_testdata_files("*.dcm")):
        data = Path(path).read_bytes()
        try:
            quick = dicom._quick_header(data)
        except Exception:
            quick = None  # decode_slice hands a file the walk trips on to pydicom
        fast = outcome(data)
        with monkeypatch.context() as m:
            m.setattr(dicom, "_quick_header", lambda _data: None)
            reference = outcome(data)
        if quick is None:
            assert type(fast) is type(reference), path
            continue
        short += 1
        assert not isinstance(reference, str), f"{path}: pydicom fails ({reference})"
        assert isinstance(fast, dicom._Slice)
        assert_same(fast, reference)
    assert short >= 5  # CT_small, MR_small (+ implicit, padded), examples_overlay: all whole ones


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 6),
    cols=st.integers(1, 6),
    frames=st.integers(1, 3),
    implicit=st.booleans(),
    sequence=st.booleans(),
    bits=st.integers(1, 16),
    signed=st.integers(0, 1),
    slope=st.sampled_from(["1", "0", "0.5", "2", "1.0E0", " 3 "]),
    intercept=st.sampled_from(["0", "-1024", "-1024.5", "1e3", "+7"]),
    instance=st.one_of(st.none(), st.integers(-5, 10**6).map(str)),
    seed=st.integers(0, 2**16),
)
def test_random_files_read_the_same_on_both_paths(
    rows, cols, frames, implicit, sequence, bits, signed, slope, intercept, instance, seed
) -> None:
    pixels = np.random.default_rng(seed).integers(0, 1 << 16, (frames, rows, cols))
    extra = {"RescaleSlope": slope, "RescaleIntercept": intercept}
    if instance is not None:
        extra["InstanceNumber"] = instance
    data = ct_bytes(
        pixels if frames > 1 else pixels[0],
        implicit=implicit,
        sequence=sequence,
        bits_stored=bits,
        signed=signed,
        extra=extra,
    )
    fast, reference = both_paths(data, pytest.MonkeyPatch())
    assert fast is not None
    assert_same(fast, reference)


def test_a_truncated_file_is_an_error_naming_the_member_on_the_short_path_too() -> None:
    data = ct_bytes(PLAIN, extra=FULL)
    with pytest.raises(dicom.DicomDecodeError, match=r"^m: DICOM pixels unreadable"):
        dicom.decode_slice(data[:-10], 0, "sha", "m")


@settings(max_examples=150, deadline=None)
@given(
    cuts=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6),
    keep=st.integers(0, 10**6),
)
def test_a_damaged_file_never_trips_the_short_path_into_an_error_it_does_not_hand_on(
    cuts, keep
) -> None:
    data = bytearray(ct_bytes(PLAIN, extra=FULL, sequence=True))
    for where, value in cuts:  # bytes changed anywhere: headers, lengths, VRs, values
        data[where % len(data)] = value
    data = data[: max(132, keep % (len(data) + 1))]
    try:
        quick = dicom._quick_header(bytes(data))  # returns, never loops
    except (struct.error, ValueError, IndexError):
        return  # decode_slice hands these files to pydicom
    if quick is not None:
        _header, values = quick
        assert values.size * 2 <= len(data)  # never reads past the bytes it was given
