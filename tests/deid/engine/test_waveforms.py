"""EDF/EDF+ and WFDB: header fields and annotation text cleaned, samples bit-identical."""

from __future__ import annotations

import numpy as np
import pytest

from apps.deid.engine import DeidEngine, ProjectKey, PseudonymVault
from apps.deid.engine.text import PatientContext
from apps.deid.engine.waveform import (
    deidentify_edf,
    deidentify_wfdb_annotations,
    deidentify_wfdb_header,
)

KEY = ProjectKey(b"wave-tests-secret-0123456789abcdef")


def _f(text: str, n: int) -> bytes:
    b = text.encode("latin-1")[:n]
    return b + b" " * (n - len(b))


def make_edf(
    *,
    patient: str = "ZY20240305 M 07-MAR-1980 Zhang_Wei",
    recording: str = "Startdate 05-MAR-2024 ADM778 Dr_Li EEG-9000 ward_12",
    startdate: str = "05.03.24",
    nrec: int = 3,
    annotations: list[str] | None = None,
    plus: bool = True,
) -> tuple[bytes, list[np.ndarray]]:
    rng = np.random.default_rng(7)
    sigs = [("EEG Fp1", 64), ("ECG", 32)]
    ann_samples = 40
    labels = [s[0] for s in sigs] + (["EDF Annotations"] if plus else [])
    nsamp = [s[1] for s in sigs] + ([ann_samples] if plus else [])
    ns = len(labels)
    h = bytearray()
    h += _f("0", 8) + _f(patient, 80) + _f(recording, 80) + _f(startdate, 8) + _f("10.32.00", 8)
    h += _f(str(256 * (ns + 1)), 8) + _f("EDF+C" if plus else "", 44) + _f(str(nrec), 8)
    h += _f("1", 8) + _f(str(ns), 4)
    for lab in labels:
        h += _f(lab, 16)
    for _ in labels:
        h += _f("AgAgCl electrode", 80)
    for _ in labels:
        h += _f("uV", 8)
    for key in ("-3200", "3200", "-32768", "32767"):
        for _ in labels:
            h += _f(key, 8)
    for _ in labels:
        h += _f("HP:0.1Hz", 80)
    for n in nsamp:
        h += _f(str(n), 8)
    for _ in labels:
        h += _f("", 32)
    data = bytearray()
    samples: list[np.ndarray] = []
    annotations = annotations or ["患者张伟 seizure", "Dr. Li called 13812345678", "eyes closed"]
    for r in range(nrec):
        for _, n in sigs:
            s = rng.integers(-32768, 32767, n, dtype=np.int16)
            samples.append(s)
            data += s.astype("<i2").tobytes()
        if plus:
            tal = f"+{r}\x14\x14\x00".encode() + f"+{r}.5\x14".encode()
            tal += annotations[r % len(annotations)].encode("utf-8") + b"\x14\x00"
            data += tal + b"\x00" * (2 * ann_samples - len(tal))
    return bytes(h + data), samples


def read_samples(edf: bytes, nrec: int = 3) -> list[np.ndarray]:
    hb = int(edf[184:192])
    out = []
    pos = hb
    for _ in range(nrec):
        for n in (64, 32):
            out.append(np.frombuffer(edf[pos : pos + 2 * n], dtype="<i2"))
            pos += 2 * n
        pos += 80
    return out


def test_edf_plus_header_and_annotations_are_cleaned_samples_identical() -> None:
    data, samples = make_edf()
    vault = PseudonymVault(b"v" * 32)
    res = deidentify_edf(data, key=KEY, vault=vault)
    out = res.output
    assert len(out) == len(data)
    for leak in (
        b"ZY20240305",
        b"Zhang",
        b"1980",
        b"ADM778",
        b"Dr_Li",
        b"EEG-9000",
        b"13812345678",
    ):
        assert leak not in out, leak
    assert "张伟".encode() not in out
    assert out[8:88].decode().split()[1:] == ["M", "X", "X"]
    assert out[88:98] == b"Startdate "
    assert out[168:176] != b"05.03.24"
    for a, b in zip(read_samples(out), samples, strict=True):
        assert np.array_equal(a, b)
    assert b"seizure" in out and b"eyes closed" in out
    assert vault.reveal("patient_id", res.patient_pseudonym) == "ZY20240305"
    assert res.findings["PERSON"] >= 1 and res.findings["PHONE"] == 1


def test_plain_edf_patient_field_is_replaced() -> None:
    data, _samples = make_edf(patient="Zhang Wei 19800307", recording="Beijing EEG lab", plus=False)
    res = deidentify_edf(data, key=KEY)
    assert b"Zhang" not in res.output and b"Beijing" not in res.output
    assert res.output[256 * 3 :] == data[256 * 3 :]


def test_a_plain_edf_written_the_edfplus_way_is_keyed_on_its_patient_code() -> None:
    """Many plain EDF writers fill the patient field as EDF+ does: its code is the patient ID
    DICOM files are keyed on, so the ECG and the CT of one patient share a pseudonym."""
    data, _ = make_edf(patient="MRN100000 M 01-JAN-1950 DEMO0", recording="X", plus=False)
    vault = PseudonymVault(b"v" * 32)
    res = deidentify_edf(data, key=KEY, vault=vault)
    assert res.patient_pseudonym == KEY.pseudonym("MRN100000")
    assert vault.reveal("patient_id", res.patient_pseudonym) == "MRN100000"
    assert b"MRN100000" not in res.output and b"DEMO0" not in res.output
    # Free text that does not read that way is keyed whole, as before.
    free, _ = make_edf(patient="Zhang Wei 19800307", recording="X", plus=False)
    assert deidentify_edf(free, key=KEY).patient_pseudonym == KEY.pseudonym("Zhang Wei 19800307")


def test_long_annotation_masks_never_change_the_record_layout() -> None:
    data, _ = make_edf(annotations=["患者张伟 家属李娜 医师王芳"])  # masks outgrow the names
    res = deidentify_edf(data, key=KEY)
    assert len(res.output) == len(data)
    assert "张伟".encode() not in res.output


def test_low_bit_scrub_clears_only_the_requested_bits() -> None:
    data, samples = make_edf()
    res = deidentify_edf(data, key=KEY, scrub_low_bits=2)
    for a, b in zip(read_samples(res.output), samples, strict=True):
        assert np.array_equal(a, b & ~3)


@pytest.mark.parametrize(
    "mutate",
    [lambda d: d[:200], lambda d: d[:-7], lambda d: d[:184] + b"abcdefgh" + d[192:]],
)
def test_malformed_edf_is_quarantined(mutate) -> None:
    data, _ = make_edf()
    res = DeidEngine(KEY, ocr=None).process(mutate(data), name="x.edf")
    assert res.status == "quarantined" and res.output is None
    assert "Zhang" not in res.reason


HEA = """ZY20240305 2 500 5000 10:32:00 05/03/2024
ZY20240305.dat 16 200/mV 12 0 -3 1234 0 ECG lead I of Zhang Wei
ZY20240305.dat 16 200/mV 12 0 5 -321 0 ECG lead II
# Patient: Zhang Wei, age 93, MRN: 448812
# 张伟 男 93岁 电话13812345678
# Diagnosis: atrial fibrillation
"""


def test_wfdb_header_is_cleaned_and_names_pseudonymised() -> None:
    res = deidentify_wfdb_header(HEA.encode(), key=KEY)
    out = res.output.decode()
    for leak in ("ZY20240305", "Zhang", "448812", "张伟", "13812345678", "05/03/2024", " 93"):
        assert leak not in out, leak
    assert "atrial fibrillation" in out and "ECG lead II" in out
    first = out.splitlines()[0].split()
    assert first[1:5] == ["2", "500", "5000", "10:32:00"] and first[5] != "05/03/2024"
    new = first[0]
    assert res.output_name == f"{new}.hea"
    assert out.splitlines()[1].startswith(f"{new}.dat 16 200/mV 12 0 -3 1234 0")
    engine = DeidEngine(KEY, ocr=None)
    assert engine.pseudonymize_path("site/ZY20240305.dat") == f"site/{new}.dat"
    assert engine.pseudonymize_path("site/ecg_lead.dat") == "site/ecg_lead.dat"


def test_wfdb_dat_is_copied_bit_identical() -> None:
    raw = np.arange(1000, dtype="<i2").tobytes()
    res = DeidEngine(KEY, ocr=None).process(raw, name="ZY20240305.dat")
    assert res.kind == "wfdb_signal" and res.output == raw


def test_wfdb_annotation_aux_text_is_blanked() -> None:
    aux = b"Zhang Wei 13812345678 "  # even length
    words = (1 << 10 | 5).to_bytes(2, "little")  # a normal annotation
    words += (63 << 10 | len(aux)).to_bytes(2, "little") + aux
    words += (63 << 10 | 4).to_bytes(2, "little") + b"(AF)"
    words += b"\x00\x00"
    out = deidentify_wfdb_annotations(words, key=KEY, context=PatientContext())
    assert len(out) == len(words) and b"13812345678" not in out and b"(AF)" in out


def test_bdf_24_bit_records_are_handled() -> None:
    data, _ = make_edf(plus=False, patient="Zhang Wei 19800307")
    hb = int(data[184:192])
    body = data[hb:]
    # Re-pack the 16-bit samples as 24-bit little-endian and mark the file as BDF.
    s16 = np.frombuffer(body, dtype="<i2").astype(np.int32)
    b24 = b"".join(int(v & 0xFFFFFF).to_bytes(3, "little") for v in s16)
    bdf = b"\xffBIOSEMI" + data[8:hb] + b24
    res = deidentify_edf(bdf, key=KEY)
    assert res.output[hb:] == b24 and b"Zhang" not in res.output
