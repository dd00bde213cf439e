"""The per-file entry point: kind detection, never raising, PHI-free reports."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from apps.deid.engine import ENGINE_VERSION, DeidEngine, DeidProfile, ProjectKey, detect_kind
from apps.deid.engine.profile import OcrSettings
from apps.deid.engine.text import PatientContext

KEY = ProjectKey(b"api-tests-secret-0123456789abcdef")
ENGINE = DeidEngine(KEY, DeidProfile(ocr=OcrSettings(enabled=False)), ocr=None)


def test_kinds_are_detected_by_content(make_dicom, make_dataset, dataset_bytes) -> None:
    ds = make_dataset()
    del ds.file_meta
    assert detect_kind(make_dicom(), "no_extension") == "dicom"
    assert detect_kind(dataset_bytes(ds, file_format=False), "x.txt") == "dicom"
    assert detect_kind("患者张伟".encode("gb18030")) == "text"
    assert detect_kind(b"0       " + b" " * 248) == "edf"
    assert detect_kind(b"rec01 2 500 1000\n", "rec01.hea") == "wfdb_header"
    assert detect_kind(b"\x00\x01" * 10, "rec01.dat") == "wfdb_signal"
    assert detect_kind(b"\x00\xff\x13" * 10, "blob.bin") == "unknown"


def test_gb18030_notes_come_out_as_utf8_with_spans() -> None:
    note = "患者张伟，手机13812345678。血红蛋白 120 g/L".encode("gb18030")
    ctx = PatientContext.build(KEY, patient_id="ZY1")
    res = ENGINE.process(note, name="note.txt", context=ctx)
    text = res.output.decode("utf-8")
    assert res.status == "ok" and "张伟" not in text and "血红蛋白 120 g/L" in text
    assert {f.type for f in res.spans} == {"PERSON", "PHONE"}
    assert res.patient_pseudonym == KEY.pseudonym("ZY1")


def test_a_note_that_names_its_own_record_number_is_keyed_on_that_patient() -> None:
    """No study links a free-standing note; "住院号: MRN100000" does: the note gets the same
    pseudonym (and date shift) as that patient's DICOM files, for lineage and withdrawal."""
    note = "住院号：MRN100000。检查日期:2024年3月1日。胸部CT未见异常。".encode()
    res = ENGINE.process(note, name="report.txt")
    assert res.patient_pseudonym == KEY.pseudonym("MRN100000")
    assert "MRN100000" not in res.output.decode()
    linked = ENGINE.process(
        note, name="report.txt", context=PatientContext.build(KEY, patient_id="MRN100000")
    )
    assert linked.output == res.output  # the same date shift as a study context gives
    # Several patients' numbers, or only an accession number: no patient is guessed.
    for other in ("住院号:MRN100001 转诊自 住院号:MRN100002。", "Accession No: ACC123456. Normal."):
        assert not ENGINE.process(other.encode(), name="n.txt").patient_pseudonym
    # The number a note repeats is still one patient.
    twice = b"MRN: A12345. Follow-up of MRN: A12345."
    assert ENGINE.process(twice, name="n.txt").patient_pseudonym == KEY.pseudonym("A12345")


def test_a_site_names_the_label_of_its_pacs_patient_id_for_notes_with_several_numbers() -> None:
    """A discharge note gives both its 住院号 and its 门诊号: by default no patient is guessed;
    a site whose PACS Patient ID is the 住院号 says so in the profile and the note is linked."""
    import pytest

    from apps.deid.engine.profile import TextSettings

    note = "住院号：ZY20240305  门诊号：MZ998877\n出院诊断：肺炎。".encode()
    assert not ENGINE.process(note, name="discharge.txt").patient_pseudonym
    profile = DeidProfile(
        ocr=OcrSettings(enabled=False), text=TextSettings(patient_id_labels=("住院号",))
    )
    site = DeidEngine(KEY, profile, ocr=None)
    res = site.process(note, name="discharge.txt")
    assert res.patient_pseudonym == KEY.pseudonym("ZY20240305")
    assert "ZY20240305" not in res.output.decode() and "MZ998877" not in res.output.decode()
    english = DeidEngine(
        KEY,
        DeidProfile(
            ocr=OcrSettings(enabled=False), text=TextSettings(patient_id_labels=("mr no",))
        ),
        ocr=None,
    )
    two = b"MR No. 55012 (ED visit Hospital Number 77001). Chest X-ray clear."
    assert english.process(two, name="n.txt").patient_pseudonym == KEY.pseudonym("55012")
    # A label the rule does not read is refused where the profile is made, not ignored later.
    with pytest.raises(ValueError, match="not a record-number label"):
        DeidProfile(text=TextSettings(patient_id_labels=("身份证号",)))


def test_a_setting_added_at_its_default_leaves_the_profile_fingerprint_as_it_was() -> None:
    """Results made under a profile count as the same bytes seen before only while its
    fingerprint holds: a new setting left at its default must not change it."""
    from apps.deid.engine.profile import TextSettings

    plain = DeidProfile()
    assert "patient_id_labels" not in plain.to_dict()["text"]
    assert plain.fingerprint() == "default@v1#0c8342d93c177564"  # as before the setting came
    labelled = DeidProfile(text=TextSettings(patient_id_labels=("住院号",)))
    assert labelled.to_dict()["text"]["patient_id_labels"] == ["住院号"]
    assert labelled.fingerprint() != plain.fingerprint()
    assert DeidProfile.from_dict(labelled.to_dict()) == labelled
    assert DeidProfile.from_dict(plain.to_dict()) == plain


def test_report_is_json_and_names_profile_and_engine(make_dicom) -> None:
    rep = ENGINE.process(make_dicom()).to_report()
    assert json.loads(json.dumps(rep)) == rep
    assert rep["engine_version"] == ENGINE_VERSION and rep["profile"].startswith("default@v1#")
    assert rep["status"] == "ok" and len(rep["output_sha256"]) == 64


def test_quarantined_files_have_no_output_and_a_reason(make_dicom) -> None:
    res = ENGINE.process(make_dicom()[:700], name="ZY20240305_张伟.dcm")
    assert res.status == "quarantined" and res.output is None and res.reason
    assert "张伟" not in res.reason and "ZY2024" not in res.reason


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=600), st.sampled_from(["", "a.dcm", "a.edf", "a.hea", "a.txt"]))
def test_arbitrary_bytes_never_raise(data: bytes, name: str) -> None:
    res = ENGINE.process(data, name=name)
    assert res.status in ("ok", "quarantined", "error")
    assert res.status == "ok" or res.output is None
    assert res.status != "error", res.reason


_VALID: list[bytes] = []


@settings(max_examples=80, deadline=None)
@given(
    cut=st.integers(0, 2000),
    flips=st.lists(st.tuples(st.integers(0, 1999), st.integers(0, 255)), max_size=6),
)
def test_damaged_dicom_is_never_an_engine_error(cut: int, flips) -> None:
    if not _VALID:
        import io

        from pydicom.dataset import Dataset, FileMetaDataset
        from pydicom.uid import ExplicitVRLittleEndian

        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
        ds.SOPInstanceUID = "1.2.3.4"
        ds.PatientName = "Zhang^Wei"
        ds.PatientID = "ZY20240305"
        ds.StudyDescription = "chest 13812345678"
        ds.Rows = ds.Columns = 8
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.SamplesPerPixel = 8, 8, 7, 1
        ds.PixelRepresentation = 0
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelData = bytes(range(64))
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        _VALID.append(buf.getvalue())
    data = bytearray(_VALID[0])
    for pos, val in flips:
        if pos < len(data):
            data[pos] = val
    if cut:
        data = data[: len(data) - cut % len(data)]
    res = ENGINE.process(bytes(data), name="x.dcm")
    assert res.status in ("ok", "quarantined"), res.reason
    if res.status == "ok" and res.kind == "dicom":
        assert b"ZY20240305" not in res.output and b"13812345678" not in res.output
