"""A synthetic cohort for the demo: CT studies, reports and ECGs carrying fake PHI.

Every name, number and date here is invented; they are planted where real PHI hides
(DICOM headers in UTF-8 Chinese, free-text reports, EDF patient fields) so the demo shows
the de-identification engine removing it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np

SURNAMES = ["王", "李", "张", "刘", "陈", "杨", "赵", "黄"]
GIVEN = ["伟", "芳", "娜", "敏", "静", "磊", "洋", "勇"]


@dataclass(frozen=True)
class FakePatient:
    index: int
    name_zh: str
    name_en: str
    patient_id: str
    resident_id: str
    phone: str
    birth: date
    study_date: date


def resident_id(birth: date, serial: int) -> str:
    """A checksum-valid (GB 11643) but fake 18-digit resident ID number."""
    body = f"110105{birth:%Y%m%d}{serial % 1000:03d}"
    weights = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
    check = "10X98765432"[sum(int(d) * w for d, w in zip(body, weights, strict=True)) % 11]
    return body + check


def patients(n: int, seed: int = 7) -> list[FakePatient]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        birth = date(1940, 1, 1) + timedelta(days=int(rng.integers(0, 25000)))
        out.append(
            FakePatient(
                index=i,
                name_zh=SURNAMES[i % len(SURNAMES)] + GIVEN[(i * 3) % len(GIVEN)],
                name_en=f"Demo{i}^Patient",
                patient_id=f"MRN{100000 + i}",
                resident_id=resident_id(birth, i),
                phone=f"138{int(rng.integers(10**7, 10**8))}",
                birth=birth,
                study_date=date(2024, 3, 1) + timedelta(days=i),
            )
        )
    return out


def planted(p: FakePatient) -> dict[str, list[str]]:
    """The fake PHI planted for ``p``, by review category (what a reviewer looks for)."""
    return {
        "name": [p.name_zh, f"Demo{p.index}", "Zhou"],
        "id_number": [p.patient_id, p.resident_id, f"ACC{p.index:06d}"],
        "phone": [p.phone],
        "other": ["示范市第一人民医院"],
    }


def planted_found(data: bytes, cohort: list[FakePatient]) -> str:
    """The review category of the first planted value still in ``data`` (a de-identified
    file's bytes), or "" when none is: the demo's scripted reviewer knows the answer key.
    ASCII values are matched in any case (EDF headers are upper case)."""
    folded = data.lower()
    for p in cohort:
        for category, values in planted(p).items():
            for value in values:
                needle = value.encode()
                if (needle.lower() in folded) if value.isascii() else (needle in data):
                    return category
    return ""


def write_ct(path: Path, p: FakePatient, slice_no: int, study_uid: str, series_uid: str) -> None:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = f"{p.name_en}={p.name_zh}"
    ds.PatientID = p.patient_id
    ds.PatientBirthDate = p.birth.strftime("%Y%m%d")
    ds.PatientSex = "F" if p.index % 2 else "M"
    ds.InstitutionName = "示范市第一人民医院"
    ds.ReferringPhysicianName = "Zhou^Doctor"
    ds.AccessionNumber = f"ACC{p.index:06d}"
    ds.StudyDate = p.study_date.strftime("%Y%m%d")
    ds.StudyTime = "093000"
    ds.Modality = "CT"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.InstanceNumber = slice_no + 1
    ds.ImagePositionPatient = [0, 0, float(slice_no) * 2.5]
    ds.PixelSpacing = [0.8, 0.8]
    ds.SliceThickness = 2.5
    # A round "body" of soft tissue (40 HU) in air (-1000 HU), stored with intercept -1024.
    yy, xx = np.mgrid[:64, :64]
    hu = np.where((yy - 32) ** 2 + (xx - 32) ** 2 < 26**2, 40, -1000).astype(np.int16)
    hu = hu + np.random.default_rng(p.index * 100 + slice_no).normal(0, 10, hu.shape).astype(
        np.int16
    )
    ds.Rows, ds.Columns = hu.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.PixelData = (hu + 1024).astype("<i2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def report(p: FakePatient) -> str:
    return (
        f"患者姓名:{p.name_zh},性别:{'女' if p.index % 2 else '男'},"
        f"身份证号:{p.resident_id},联系电话:{p.phone}。\n"
        f"检查日期:{p.study_date.year}年{p.study_date.month}月{p.study_date.day}日,"
        f"住院号:{p.patient_id}。\n"
        "胸部CT平扫:双肺纹理清晰,右肺上叶见一直径约4mm小结节,边界清楚。"
        "纵隔未见肿大淋巴结。印象:右肺上叶小结节,建议12个月后复查。\n"
    )


def edf(p: FakePatient, seconds: int = 10, rate: int = 250) -> bytes:
    """A 3-lead ECG in EDF with the patient's fake identity in the header."""
    t = np.arange(seconds * rate) / rate
    leads = [
        np.round(800 * np.sin(2 * np.pi * 1.2 * t + k) ** 15).astype(np.int16) for k in range(3)
    ]

    def f(value: object, width: int) -> bytes:
        return str(value).ljust(width)[:width].encode("ascii")

    patient = f"{p.patient_id} {'F' if p.index % 2 else 'M'} {p.birth:%d-%b-%Y} Demo{p.index}"
    head = b"".join(
        [
            f("0", 8),
            f(patient.upper(), 80),
            f(f"Startdate {p.study_date:%d-%b-%Y} X X X", 80),
            f(p.study_date.strftime("%d.%m.%y"), 8),
            f("09.30.00", 8),
            f(256 * 4, 8),
            f("", 44),
            f(seconds, 8),
            f(1, 8),
            f(3, 4),
        ]
    )
    cols = [
        [f(n, 16) for n in ("ECG I", "ECG II", "ECG III")],
        [f("", 80)] * 3,
        [f("uV", 8)] * 3,
        [f("-3200", 8)] * 3,
        [f("3200", 8)] * 3,
        [f("-32768", 8)] * 3,
        [f("32767", 8)] * 3,
        [f("", 80)] * 3,
        [f(rate, 8)] * 3,
        [f("", 32)] * 3,
    ]
    head += b"".join(b"".join(c) for c in cols)
    body = bytearray()
    for r in range(seconds):
        for lead in leads:
            body += lead[r * rate : (r + 1) * rate].astype("<i2").tobytes()
    return head + bytes(body)


COHORT_SIZE = 12


def write_cohort(root: Path, n_patients: int = COHORT_SIZE, slices: int = 4) -> int:
    """Write the cohort under ``root`` (idempotent); returns the number of files."""
    from pydicom.uid import generate_uid

    count = 0
    for p in patients(n_patients):
        folder = root / f"patient-{p.index:03d}"
        study_uid = generate_uid(entropy_srcs=[f"demo-study-{p.index}"])
        series_uid = generate_uid(entropy_srcs=[f"demo-series-{p.index}"])
        for s in range(slices):
            target = folder / "ct" / f"slice-{s:03d}.dcm"
            if not target.exists():
                write_ct(target, p, s, study_uid, series_uid)
            count += 1
        note = folder / "report.txt"
        if not note.exists():
            note.write_text(report(p), encoding="utf-8")
        ecg = folder / "ecg.edf"
        if not ecg.exists():
            ecg.write_bytes(edf(p))
        count += 2
    return count
