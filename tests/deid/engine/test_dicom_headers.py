"""DICOM header de-identification: PS3.15 E.1-1 actions, options, UIDs, charsets, privates."""

from __future__ import annotations

import io
import re

import pydicom
import pytest
from pydicom.datadict import dictionary_has_tag, dictionary_VR
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from apps.deid.engine import (
    DeidProfile,
    ProjectKey,
    PseudonymVault,
    SafePrivate,
    deidentify_dicom,
    load_table,
    resolve_action,
    rule_for,
)
from apps.deid.engine.dicom import DicomDeidentifier

UID_RE = re.compile(r"^2\.25\.(0|[1-9]\d*)$")
NO_OCR = DeidProfile().evolve(ocr=DeidProfile().ocr.__class__(enabled=False))


def read(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def all_strings(ds: pydicom.Dataset) -> list[str]:
    out: list[str] = []
    for e in ds.iterall():
        if e.VR in ("SQ",) or e.tag == 0x7FE00010:
            continue
        v = e.value
        if isinstance(v, (bytes, bytearray)):
            out.append(v.decode("latin-1"))
        elif isinstance(v, (list, tuple, pydicom.multival.MultiValue)):
            out.extend(str(x) for x in v)
        elif v is not None:
            out.append(str(v))
    return out


# -- the table as data ----------------------------------------------------------------------
def test_it_loads_every_row_of_table_e1_1() -> None:
    rows = load_table()
    assert len(rows) == 460
    assert {r.basic for r in rows} == {"D", "U", "X", "X/D", "X/Z", "X/Z/D", "X/Z/U*", "Z", "Z/D"}
    names = {r.name for r in rows}
    assert {"Patient's Name", "Study Date", "Referenced Image Sequence", "Curve Data"} <= names


@pytest.mark.parametrize(
    ("tag", "basic_only", "with_options"),
    [
        (0x00100010, "Z", "Z"),  # Patient's Name
        (0x00080020, "Z", "C"),  # Study Date: modified dates option cleans (shifts)
        (0x00081030, "X", "C"),  # Study Description: clean descriptors
        (0x00101010, "X", "K"),  # Patient's Age: retain patient characteristics
        (0x00080080, "D", "D"),  # Institution Name X/Z/D -> conformant D
        (0x00081140, "U*", "U*"),  # Referenced Image Sequence X/Z/U*
        (0x0020000D, "U", "U"),  # Study Instance UID
        (0x50001234, "X", "X"),  # Curve Data (50xx,xxxx)
        (0x60024000, "X", "X"),  # Overlay Comments (60xx,4000) in a repeating group
    ],
)
def test_it_resolves_actions_per_profile(tag: int, basic_only: str, with_options: str) -> None:
    basic = DeidProfile(
        retain_long_modified_dates=False,
        retain_patient_characteristics=False,
        clean_descriptors=False,
        retain_safe_private=False,
    )
    rule = rule_for(tag)
    assert rule is not None
    assert resolve_action(rule, basic) == basic_only
    assert resolve_action(rule, DeidProfile()) == with_options


def test_minimal_policy_removes_where_the_standard_allows() -> None:
    rule = rule_for(0x00080080)
    assert rule is not None
    assert resolve_action(rule, DeidProfile(combined_action_policy="minimal")) == "X"


_SAMPLE = {
    "PN": "Leak^Person",
    "LO": "LEAKVALUE LO",
    "SH": "LEAKSH",
    "LT": "LEAK long text",
    "ST": "LEAK short text",
    "UT": "LEAK unlimited",
    "UC": "LEAKUC",
    "CS": "LEAKCS",
    "AE": "LEAKAE",
    "DA": "20240305",
    "DT": "20240305101010",
    "TM": "101010",
    "AS": "044Y",
    "IS": "12",
    "DS": "1.5",
    "US": 7,
    "UL": 7,
    "SS": 7,
    "FL": 1.5,
    "FD": 1.5,
}


def _table_dataset() -> tuple[Dataset, dict[int, str]]:
    """A dataset holding every non-masked table attribute pydicom can encode."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    vrs: dict[int, str] = {}
    n = 0
    for rule in load_table():
        t = rule.tag.strip("()").replace(",", "")
        if "X" in t or "G" in t:
            continue
        tag = int(t, 16)
        if tag >> 16 in (0x0000, 0x0002, 0xFFFA, 0xFFFC) or not dictionary_has_tag(tag):
            continue
        vr = dictionary_VR(tag)
        n += 1
        if vr == "UI":
            value: object = f"1.2.826.0.1.3680043.8.498.9{n}"
        elif vr == "SQ":
            item = Dataset()
            item.PersonName = "Nested^Leak"
            item.ReferencedSOPInstanceUID = f"1.2.826.0.1.3680043.8.498.8{n}"
            value = Sequence([item])
        elif vr in _SAMPLE:
            value = _SAMPLE[vr]
        else:
            continue
        ds.add_new(tag, vr, value)
        vrs[tag] = vr
    ds.PatientID = "PID-LEAK-1"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    return ds, vrs


@pytest.mark.parametrize("profile_name", ["basic", "options"])
def test_it_applies_every_table_action(key: ProjectKey, profile_name: str) -> None:
    profile = (
        DeidProfile(
            retain_long_modified_dates=False,
            retain_patient_characteristics=False,
            clean_descriptors=False,
            retain_safe_private=False,
        )
        if profile_name == "basic"
        else DeidProfile()
    )
    ds, vrs = _table_dataset()
    assert len(vrs) > 350
    before = {t: ds[t].value for t in vrs}
    DicomDeidentifier(key, profile).deidentify_dataset(ds)
    checked = 0
    for tag, vr in vrs.items():
        if tag in (0x00100010, 0x00100020):
            continue  # replaced by the pseudonym, checked elsewhere
        rule = rule_for(tag)
        assert rule is not None
        action = resolve_action(rule, profile)
        label = f"{rule.name} {action}"
        if action == "X":
            assert tag not in ds, label
        elif vr == "SQ":
            if action == "Z":
                assert len(ds[tag].value) == 0, label
            else:
                item = ds[tag].value[0]
                assert "Nested^Leak" not in str(item.get("PersonName", "")), label
                ref = str(item.ReferencedSOPInstanceUID)
                assert UID_RE.match(ref), label
        elif action == "Z":
            assert ds[tag].value in ("", None, b"") or ds[tag].is_empty, label
        elif action == "D":
            assert ds[tag].value != before[tag] or vr in ("US", "UL", "SS", "IS", "DS"), label
            if vr in ("PN", "LO", "SH", "LT", "ST", "UT", "CS"):
                assert "LEAK" not in str(ds[tag].value).upper().replace("ANONYMIZED", ""), label
        elif action == "U":
            values = ds[tag].value if ds[tag].VM > 1 else [ds[tag].value]
            assert all(UID_RE.match(str(v)) for v in values), label
        elif action == "K":
            assert ds[tag].value == before[tag], label
        elif action == "C":
            if vr == "DA":
                assert ds[tag].value not in ("20240305", ""), label
            elif vr == "DT":
                assert not str(ds[tag].value).startswith("20240305"), label
        checked += 1
    assert checked > 350


def test_it_replaces_patient_id_with_a_stable_keyed_pseudonym(key, make_dicom) -> None:
    a = read(deidentify_dicom(make_dicom(), key=key, profile=NO_OCR).output)
    b = read(deidentify_dicom(make_dicom(sop_uid="1.2.3.9"), key=key, profile=NO_OCR).output)
    other = ProjectKey(b"another-project-secret-0123456789")
    c = read(deidentify_dicom(make_dicom(), key=other, profile=NO_OCR).output)
    assert a.PatientID == b.PatientID != c.PatientID
    assert a.PatientID != "ZY20240305" and re.fullmatch(r"P[A-Z2-7]{16}", a.PatientID)
    assert str(a.PatientName) == a.PatientID


def test_it_stores_the_reverse_mapping_encrypted(key, make_dicom) -> None:
    vault = PseudonymVault(b"v" * 32)
    res = deidentify_dicom(make_dicom(), key=key, profile=NO_OCR, vault=vault)
    pseudo = res.patient_pseudonym
    assert pseudo is not None
    raw = b"".join(vault.store.values())
    assert b"ZY20240305" not in raw
    assert vault.reveal("patient_id", pseudo) == "ZY20240305"


def test_it_marks_the_identity_removed_with_method_codes(key, make_dicom) -> None:
    out = read(deidentify_dicom(make_dicom(), key=key, profile=NO_OCR).output)
    assert out.PatientIdentityRemoved == "YES"
    assert "Basic Profile" in out.DeidentificationMethod[0]
    codes = {i.CodeValue for i in out.DeidentificationMethodCodeSequence}
    assert {"113100", "113105", "113107", "113108", "113111"} <= codes
    assert all(i.CodingSchemeDesignator == "DCM" for i in out.DeidentificationMethodCodeSequence)
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"


def test_uids_are_consistent_across_files_and_references(key, make_dicom) -> None:
    a_in = make_dicom(sop_uid="1.2.826.0.1.3680043.8.498.101")
    ds_b = pydicom.dcmread(io.BytesIO(make_dicom(sop_uid="1.2.826.0.1.3680043.8.498.102")))
    ds_b.ReferencedImageSequence[0].ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.101"
    buf = io.BytesIO()
    ds_b.save_as(buf)
    a = read(deidentify_dicom(a_in, key=key, profile=NO_OCR).output)
    b = read(deidentify_dicom(buf.getvalue(), key=key, profile=NO_OCR).output)
    assert a.StudyInstanceUID == b.StudyInstanceUID
    assert UID_RE.match(a.SOPInstanceUID) and len(a.SOPInstanceUID) <= 64
    assert b.ReferencedImageSequence[0].ReferencedSOPInstanceUID == a.SOPInstanceUID
    assert a.file_meta.MediaStorageSOPInstanceUID == a.SOPInstanceUID
    assert a.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"  # well-known UIDs stay
    assert "SourceApplicationEntityTitle" not in a.file_meta
    again = read(deidentify_dicom(a_in, key=key, profile=NO_OCR).output)
    assert again.SOPInstanceUID == a.SOPInstanceUID


def test_dates_shift_by_one_amount_per_patient_across_studies(key, make_dicom) -> None:
    s1 = read(deidentify_dicom(make_dicom(study_date="20240305"), key=key, profile=NO_OCR).output)
    s2 = read(
        deidentify_dicom(
            make_dicom(study_date="20240415", study_uid="1.2.3.4.5", sop_uid="1.2.3.4.5.6"),
            key=key,
            profile=NO_OCR,
        ).output
    )
    from datetime import date

    d1 = date.fromisoformat(f"{s1.StudyDate[:4]}-{s1.StudyDate[4:6]}-{s1.StudyDate[6:]}")
    d2 = date.fromisoformat(f"{s2.StudyDate[:4]}-{s2.StudyDate[4:6]}-{s2.StudyDate[6:]}")
    assert (d2 - d1).days == 41
    assert s1.StudyDate != "20240305"
    assert s1.StudyTime == "101500"  # times of day are kept under the modified-dates option
    assert s1.PatientBirthDate == ""


def test_basic_profile_without_options_empties_dates(key, make_dicom) -> None:
    p = DeidProfile(retain_long_modified_dates=False, ocr=NO_OCR.ocr)
    out = read(deidentify_dicom(make_dicom(), key=key, profile=p).output)
    assert out.StudyDate == ""
    assert "SeriesDate" not in out or out.SeriesDate in ("", "19000101")


@pytest.mark.parametrize("charset", ["ISO_IR 192", "GB18030", "GBK", "ISO 2022 IR 58"])
def test_chinese_names_are_removed_in_every_encoding(key, make_dicom, charset) -> None:
    data = make_dicom(charset=charset)
    assert (
        "张伟".encode("gb18030") in data
        or "张伟".encode() in data
        or charset.startswith("ISO 2022")
    )
    res = deidentify_dicom(data, key=key, profile=NO_OCR)
    assert res.status == "ok", res.reason
    raw = res.output
    for codec in ("utf-8", "gb18030", "gbk", "gb2312", "iso2022_jp_2"):
        for needle in ("张伟", "张", "建国"):
            try:
                enc = needle.encode(codec)
            except UnicodeEncodeError:
                continue
            assert enc not in raw.replace(b"\x00", b""), (codec, needle)
    out = read(raw)
    text = "\n".join(all_strings(out))
    for needle in (
        "张伟",
        "Zhang",
        "ZY20240305",
        "ACC998877",
        "13812345678",
        "Wang^Fang",
        "北京协和",
    ):
        assert needle not in text, needle
    assert out.SpecificCharacterSet == charset


def test_private_elements_go_except_the_safe_list(key, make_dataset, dataset_bytes) -> None:
    ds = make_dataset()
    ds.private_block(0x0019, "SAFE VENDOR", create=True).add_new(0x0C, "DS", "1000")
    ds.private_block(0x0019, "SAFE VENDOR", create=True).add_new(0x0D, "LO", "ZY20240305")
    p = DeidProfile(safe_private=(SafePrivate("SAFE VENDOR", 0x0019, 0x0C),), ocr=NO_OCR.ocr)
    res = deidentify_dicom(dataset_bytes(ds), key=key, profile=p)
    out = read(res.output)
    block = out.private_block(0x0019, "SAFE VENDOR")
    assert block[0x0C].value == "1000"
    assert 0x0D not in block
    assert not any(e.tag.group == 0x0009 for e in out)
    assert res.actions["private_removed"] >= 3
    res2 = deidentify_dicom(dataset_bytes(ds), key=key, profile=p.evolve(retain_safe_private=False))
    assert not any(e.tag.is_private for e in read(res2.output))


def test_retired_curve_overlay_and_unknown_public_tags_are_handled(
    key, make_dataset, dataset_bytes
):
    ds = make_dataset()
    ds.add_new(0x50000020, "CS", "LEAKCURVE")
    ds.add_new(0x60004000, "LT", "overlay note 张伟")
    ds.add_new(0x00321234, "LO", "LEAKUNKNOWN")  # not in the data dictionary
    ds.add_new(0x00080040, "US", 1)  # retired (Data Set Type), harmless
    res = deidentify_dicom(dataset_bytes(ds), key=key, profile=NO_OCR)
    assert res.status == "ok", res.reason
    out = read(res.output)
    assert 0x50000020 not in out and 0x60004000 not in out and 0x00321234 not in out
    assert res.actions["X_unknown"] == 1


def test_nested_sequences_are_cleaned_at_every_depth(key, make_dataset, dataset_bytes) -> None:
    ds = make_dataset()
    deep = ds
    for _ in range(5):
        item = Dataset()
        item.PatientName = "Deep^Leak"
        item.TextValue = "DeepLeak called from 13812345678"
        deep.ContentSequence = Sequence([item])
        deep = item
    out = read(deidentify_dicom(dataset_bytes(ds), key=key, profile=NO_OCR).output)
    text = "\n".join(all_strings(out))
    assert "Deep^Leak" not in text and "13812345678" not in text


def test_headerless_dataset_is_read_and_written_with_meta(key, make_dataset, dataset_bytes) -> None:
    ds = make_dataset()
    del ds.file_meta
    raw = dataset_bytes(ds, file_format=False)
    assert raw[128:132] != b"DICM"
    res = deidentify_dicom(raw, key=key, profile=NO_OCR)
    assert res.status == "ok", res.reason
    assert res.output[128:132] == b"DICM"


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda b: b[: len(b) // 2], "dicom_"),
        (lambda b: b"\x00" * 3, "dicom_truncated"),
        (lambda b: b"DICM" + bytes(range(256)) * 4, "dicom_"),
    ],
)
def test_corrupt_input_is_quarantined_with_a_typed_reason(key, make_dicom, mutate, reason) -> None:
    res = deidentify_dicom(mutate(make_dicom()), key=key, profile=NO_OCR)
    assert res.status == "quarantined"
    assert res.reason.startswith(reason)
    assert res.output is None
    assert "张伟" not in res.reason and "ZY2024" not in res.reason


def test_absurd_length_is_quarantined(key, make_dicom) -> None:
    data = bytearray(make_dicom())
    i = data.index(b"\x10\x00\x10\x00PN")  # Patient's Name, explicit VR LE
    data[i + 6 : i + 8] = b"\xf0\xff"
    data = data[: i + 40]
    res = deidentify_dicom(bytes(data), key=key, profile=NO_OCR)
    assert res.status == "quarantined"


def test_truncated_pixel_data_is_quarantined(key, make_dataset, dataset_bytes) -> None:
    ds = make_dataset()
    ds.PixelData = ds.PixelData[:-10]
    res = deidentify_dicom(dataset_bytes(ds), key=key, profile=NO_OCR)
    assert res.status == "quarantined" and "pixels_truncated" in res.reason


def test_patient_age_over_89_is_capped(key, make_dataset, dataset_bytes) -> None:
    ds = make_dataset(PatientAge="093Y")
    out = read(deidentify_dicom(dataset_bytes(ds), key=key, profile=NO_OCR).output)
    assert out.PatientAge == "090Y"


def test_it_quarantines_burned_in_candidates_without_ocr(key, make_dicom) -> None:
    res = deidentify_dicom(make_dicom(modality="US"), key=key)
    assert res.status == "quarantined" and "ocr_required" in res.reason


def test_result_report_is_phi_free(key, make_dicom) -> None:
    res = deidentify_dicom(make_dicom(), key=key, profile=NO_OCR)
    rep = str(res.to_report())
    for needle in ("张伟", "Zhang", "ZY20240305", "ACC998877"):
        assert needle not in rep
    assert res.output_sha256 and res.input_sha256 and res.profile.startswith("default@v")


# -- property test: PHI dropped into random elements never survives ---------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from apps.deid.engine.text import resident_id_check_char  # noqa: E402

_PLACES = [
    (0x00081030, "LO"),  # Study Description (clean descriptors)
    (0x0008103E, "LO"),  # Series Description
    (0x00204000, "LT"),  # Image Comments (X)
    (0x00181030, "LO"),  # Protocol Name
    (0x00080070, "LO"),  # Manufacturer (not in the table)
    (0x00081090, "LO"),  # Manufacturer's Model Name (not in the table)
    (0x00400254, "LO"),  # Performed Procedure Step Description
    ("private", "LO"),
    ("nested", "UT"),
]


@st.composite
def phi_values(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["rid", "mobile", "email", "zh_name", "mrn"]))
    if kind == "rid":
        first = f"{draw(st.integers(110000, 659999))}{draw(st.integers(1950, 2010))}0101" + (
            f"{draw(st.integers(0, 999)):03d}"
        )
        return first + resident_id_check_char(first)
    if kind == "mobile":
        return f"1{draw(st.sampled_from('3456789'))}{draw(st.integers(100000000, 999999999))}"
    if kind == "email":
        user = draw(st.from_regex(r"[a-z]{3,8}", fullmatch=True))
        return f"{user}@hosp{draw(st.integers(1, 99))}.cn"
    if kind == "mrn":
        return f"MRN {draw(st.integers(100000, 99999999))}"
    return (
        "患者"
        + draw(st.sampled_from("王李张刘陈杨赵周吴徐孙"))
        + draw(st.sampled_from(["建国", "秀英", "志强", "丽娟", "海涛"]))
    )


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    place=st.sampled_from(_PLACES),
    value=phi_values(),
    charset=st.sampled_from(["ISO_IR 192", "GB18030", "GBK"]),
    multi=st.booleans(),
)
def test_phi_inserted_into_random_elements_is_removed(
    key, make_dataset, dataset_bytes, place, value, charset, multi
) -> None:
    ds = make_dataset(charset=charset)
    tag, vr = place
    text = f"检查 {value} 复查"
    if tag == "private":
        ds.private_block(0x0011, "OTHER VENDOR", create=True).add_new(0x01, vr, text)
    elif tag == "nested":
        ds.RequestAttributesSequence[0].ContentSequence[0].TextValue = text
    else:
        ds.add_new(tag, vr, [text, "second"] if multi and vr not in ("UT", "LT", "ST") else text)
    data = dataset_bytes(ds)
    res = deidentify_dicom(data, key=key, profile=NO_OCR)
    assert res.status == "ok", res.reason
    secret = value.removeprefix("患者").removeprefix("MRN ")
    assert secret not in "\n".join(all_strings(read(res.output)))
    # the byte-level path served it, and wrote what the pydicom walk writes
    deid = DicomDeidentifier(key, NO_OCR)
    assert deid.deidentify_bytes(data).path == "fast"
    assert res.output == deid.deidentify_bytes(data, fast=False).output


def test_encapsulated_documents_are_quarantined(key, make_dataset, dataset_bytes) -> None:
    ds = make_dataset()
    ds.EncapsulatedDocument = b"%PDF-1.4 Zhang Wei ZY20240305"
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    res = deidentify_dicom(dataset_bytes(ds), key=key, profile=NO_OCR)
    assert res.status == "quarantined" and "encapsulated_document" in res.reason


def test_an_output_can_be_de_identified_again(key, make_dicom) -> None:
    once = deidentify_dicom(make_dicom(), key=key, profile=NO_OCR)
    twice = deidentify_dicom(once.output, key=key, profile=NO_OCR)
    assert twice.status == "ok", twice.reason
    a, b = read(once.output), read(twice.output)
    assert b.PixelData == a.PixelData and b.Rows == a.Rows


def test_file_meta_keeps_no_instance_uid_or_ae_title_of_the_source(
    key, make_dataset, dataset_bytes
) -> None:
    """The meta group names the instance and the devices that sent it; none of it survives.

    Also when the data set lacks its SOPInstanceUID (nothing to copy into the meta then).
    """
    ds = make_dataset()
    original_uid = "1.2.826.0.1.3680043.8.498.777"
    del ds.SOPInstanceUID
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = original_uid
    ds.file_meta.add_new(0x00020017, "AE", "SENDER_BJXH")
    ds.file_meta.add_new(0x00020018, "AE", "RECEIVER_BJXH")
    res = deidentify_dicom(dataset_bytes(ds), key=key, profile=NO_OCR)
    assert res.status == "ok", res.reason
    out = read(res.output)
    for tag in (0x00020016, 0x00020017, 0x00020018):
        assert tag not in out.file_meta
    assert out.file_meta.MediaStorageSOPInstanceUID == key.uid(original_uid)
    assert original_uid.encode() not in res.output
    assert b"BJXH" not in res.output
