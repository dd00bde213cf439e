"""The byte-level DICOM path gives the reference (pydicom walk) result, byte for byte, on every
file it takes; every other file goes to the reference path."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit

from apps.deid.engine import DeidProfile, ProjectKey, PseudonymVault, SafePrivate
from apps.deid.engine.dicom import DicomDeidentifier
from apps.deid.engine.errors import DeidError
from apps.deid.engine.pixels import PixelCleaner
from apps.deid.engine.profile import OcrSettings
from tests.deid.engine.conftest import build_dataset, to_bytes
from tests.deid.engine.test_real_files import FILES

NO_OCR = DeidProfile(ocr=OcrSettings(enabled=False))
PROFILES = {
    "default": NO_OCR,
    "basic": NO_OCR.evolve(
        retain_long_modified_dates=False,
        retain_patient_characteristics=False,
        clean_descriptors=False,
        retain_safe_private=False,
    ),
    "minimal": NO_OCR.evolve(combined_action_policy="minimal"),
    "not_strict": NO_OCR.evolve(strict=False),
    "retain_all": NO_OCR.evolve(
        retain_uids=True, retain_device_identity=True, retain_institution_identity=True
    ),
}


def both(deid: DicomDeidentifier, data: bytes):
    """(fast result, reference result); a refusal is returned as the error, and both paths
    must refuse a file alike."""
    try:
        fast = deid.deidentify_bytes(data)
    except DeidError as exc:
        fast = exc
    try:
        ref = deid.deidentify_bytes(data, fast=False)
    except DeidError as exc:
        ref = exc
    if isinstance(fast, Exception) or isinstance(ref, Exception):
        assert str(fast) == str(ref)
    return fast, ref


def assert_same(fast, ref) -> None:
    if isinstance(ref, Exception):
        return  # refused alike (checked in both())
    assert fast.output == ref.output
    assert fast.actions == ref.actions
    assert fast.findings == ref.findings
    assert fast.pseudonym == ref.pseudonym


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
@pytest.mark.parametrize("profile", sorted(PROFILES))
@pytest.mark.parametrize("charset", ["ISO_IR 192", "GB18030", "GBK", "ISO_IR 100", ""])
def test_it_matches_the_reference_on_phi_laden_files(
    key, make_dataset, dataset_bytes, profile, charset, implicit
) -> None:
    name = "Zhang^Wei" if charset in ("ISO_IR 100", "") else "Zhang^Wei=张^伟"
    ds = make_dataset(charset=charset, name=name)
    if charset in ("ISO_IR 100", ""):
        ds.InstitutionName = "Hôpital Saint-Louis" if charset else "Union Hospital"
        ds.StudyDescription = "CT chest Zhang Wei"
        ds.ImageComments = "patient Zhang Wei tel 13812345678"
        ds.RequestAttributesSequence[0].RequestedProcedureDescription = "CT for Zhang Wei"
        ds.RequestAttributesSequence[0].ContentSequence[0].TextValue = "ZY20240305 Zhang Wei"
        ds.ReferringPhysicianName = "Li^Jianguo"
        ds[0x00091010].value = "Zhang Wei ZY20240305"
    ds.OtherPatientIDs = ["ZY1", "ZY20240305X"]
    ds.PatientAge = "095Y"
    ds.AcquisitionDateTime = "20240305101500.000000"
    ds.ProtocolName = "Thorax ZY20240305"
    ds.Manufacturer = "ACME"
    ds.add_new(0x00191001, "LO", "orphan private")
    ds.add_new(0x00290000, "UL", 12)
    # a private block pydicom knows (its VR comes from the private dictionary when implicit)
    ds.private_block(0x0019, "SIEMENS MR HEADER", create=True).add_new(0x08, "CS", "IMAGE NUM 4")
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    deid = DicomDeidentifier(ProjectKey(b"fast-path-secret-0123456789abcdef"), PROFILES[profile])
    fast, ref = both(deid, dataset_bytes(ds))
    assert isinstance(ref, Exception) or fast.path == "fast"
    assert_same(fast, ref)


def test_it_writes_the_pixel_bytes_unchanged_and_undecoded(
    key, make_dataset, dataset_bytes, monkeypatch
) -> None:
    pixels = np.random.default_rng(3).integers(0, 65535, (64, 64), dtype=np.uint16)
    ds = make_dataset(rows=64, cols=64, pixels=pixels)
    monkeypatch.setattr(Dataset, "pixel_array", property(lambda self: pytest.fail("decoded")))
    res = DicomDeidentifier(key, NO_OCR).deidentify_bytes(dataset_bytes(ds))
    assert res.path == "fast"
    assert pydicom.dcmread(io.BytesIO(res.output)).PixelData == pixels.tobytes()


def test_it_keeps_sequence_and_item_length_styles(key, make_dataset, dataset_bytes) -> None:
    ds = make_dataset()
    ds.RequestAttributesSequence.is_undefined_length = True
    ds["RequestAttributesSequence"].is_undefined_length = True
    ds.RequestAttributesSequence[0].is_undefined_length_sequence_item = True
    ds.OtherPatientIDsSequence = Sequence()  # Z action on an empty sequence
    ds["OtherPatientIDsSequence"].is_undefined_length = True
    data = io.BytesIO()
    ds.save_as(data, enforce_file_format=True)
    fast, ref = both(DicomDeidentifier(key, NO_OCR), data.getvalue())
    assert fast.path == "fast"
    assert_same(fast, ref)


def test_encapsulated_pixel_data_is_copied(key, make_dataset, dataset_bytes) -> None:
    ds = make_dataset()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8 fake jpeg \xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    fast, ref = both(DicomDeidentifier(key, NO_OCR), dataset_bytes(ds))
    assert fast.path == "fast"
    assert_same(fast, ref)


@pytest.mark.parametrize(
    "change",
    [
        "iso2022",
        "big_endian",
        "safe_private",
        "ocr",
        "truncated",
        "item_charset",
        "headerless",
    ],
)
def test_files_it_cannot_reproduce_take_the_reference_path(
    key, make_dataset, dataset_bytes, change
) -> None:
    profile = NO_OCR
    ds = make_dataset(charset="ISO 2022 IR 58" if change == "iso2022" else "ISO_IR 192")
    if change == "safe_private":
        profile = NO_OCR.evolve(safe_private=(SafePrivate("ACME PRIVATE", 0x0009, 0x11),))
    if change == "ocr":
        profile = DeidProfile()
        ds.Modality = "US"
    if change == "item_charset":
        ds.RequestAttributesSequence[0].SpecificCharacterSet = "GB18030"
    if change == "big_endian":
        ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    if change == "headerless":
        del ds.file_meta
        data = dataset_bytes(ds, file_format=False)
    else:
        data = dataset_bytes(ds)
    if change == "truncated":
        data = data[:-10]
    deid = DicomDeidentifier(key, profile)
    try:
        res = deid.deidentify_bytes(data)
    except Exception:
        return  # quarantined by the reference path
    assert res.path == "reference"


def test_a_residual_hit_is_named_by_the_reference_path(key, make_dataset, dataset_bytes) -> None:
    ds = make_dataset()
    ds.Manufacturer = "ZY20240305"  # CS-like fields are only searched for the known IDs
    ds.add_new(0x00180015, "CS", "ZY20240305")  # Body Part Examined: scrubbed as known
    fast, ref = both(DicomDeidentifier(key, NO_OCR), dataset_bytes(ds))
    assert fast.path == "fast"
    assert_same(fast, ref)


def test_the_vault_gets_the_patient_on_the_fast_path(key, make_dicom) -> None:
    store: dict[str, bytes] = {}
    vault = PseudonymVault(b"v" * 32, store)
    res = DicomDeidentifier(key, NO_OCR, vault=vault).deidentify_bytes(make_dicom())
    assert res.path == "fast"
    assert vault.reveal("patient_id", res.pseudonym) == "ZY20240305"


@pytest.mark.slow
def test_it_matches_the_reference_on_every_pydicom_sample() -> None:
    deid = DicomDeidentifier(ProjectKey(b"real-files-secret-0123456789abcdef"), NO_OCR)
    taken = 0
    for path in FILES:
        data = path.read_bytes()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                fast = deid.deidentify_bytes(data)
            except DeidError:
                continue  # quarantined: the reference path refused it
            if fast.path != "fast":
                continue
            taken += 1
            try:
                ref = deid.deidentify_bytes(data, fast=False)
            except DeidError as exc:
                pytest.fail(f"{path.name}: fast path accepted what the reference refused: {exc}")
        assert fast.output == ref.output, path.name
        assert fast.actions == ref.actions, path.name
        assert fast.findings == ref.findings, path.name
    assert taken > 20


_SEEDS: list[bytes] = []


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 3),
    edits=st.lists(
        st.tuples(st.floats(0, 1), st.integers(0, 255), st.booleans()), min_size=1, max_size=4
    ),
)
def test_damaged_files_get_the_reference_outcome(seed: int, edits) -> None:
    if not _SEEDS:
        for charset in ("ISO_IR 192", ""):
            for syntax in (None, ImplicitVRLittleEndian):
                ds = build_dataset(charset=charset, name="Zhang^Wei")
                if syntax:
                    ds.file_meta.TransferSyntaxUID = syntax
                _SEEDS.append(to_bytes(ds))
    data = bytearray(_SEEDS[seed])
    for where, value, delete in edits:
        pos = 132 + int(where * (len(data) - 260))
        if delete:
            del data[pos : pos + 1 + value % 8]
        else:
            data[pos] = value
    deid = DicomDeidentifier(ProjectKey(b"damaged-files-secret-0123456789ab"), NO_OCR)
    fast, ref = both(deid, bytes(data))  # refusals must match
    assert_same(fast, ref)


@pytest.mark.parametrize(("modality", "path"), [("CT", "fast"), ("US", "reference")])
def test_files_whose_pixels_need_ocr_take_the_reference_path(
    key, make_dicom, modality, path
) -> None:
    class NoText:
        def detect(self, rgb):
            return []

    cleaner = PixelCleaner(NoText())
    deid = DicomDeidentifier(key, DeidProfile())
    data = make_dicom(modality=modality)
    fast = deid.deidentify_bytes(data, pixel_cleaner=cleaner)
    ref = deid.deidentify_bytes(data, pixel_cleaner=cleaner, fast=False)
    assert fast.path == path
    assert_same(fast, ref)
