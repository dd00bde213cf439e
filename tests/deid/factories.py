"""Small factories for de-id run tests: a data source over a tmp folder, a batch, raw files.

The inventory scanner is built elsewhere; these rows are created directly, the way a scan
would leave them (relpath relative to the raw root, sha256 of the bytes on disk).
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from apps.inventory.models import DataKind, DataSource, IngestBatch, RawFile

# The PHI planted in the generated batch; none of it may appear in any result row, audit
# event, log record or output file.
PATIENT_ID = "ZY20240305"
ZH_NAME = "张伟"
EN_NAME = "Zhang^Wei"
RESIDENT_ID = "11010519491231002X"
PHONE = "13812345678"
PHI_VALUES = (PATIENT_ID, ZH_NAME, RESIDENT_ID, PHONE, "Zhang_Wei", "Zhang^Wei")
STUDY_KEY = "study-" + hashlib.sha256(b"study-1").hexdigest()[:16]


def make_source(raw_root: Path, deid_root: Path | None = None, name: str = "PACS") -> DataSource:
    return DataSource.objects.create(
        source=name,
        type=DataKind.MIXED,
        owner="radiology",
        raw_root=str(raw_root),
        deid_root=str(deid_root) if deid_root else "",
    )


def make_batch(source: DataSource, status: str = IngestBatch.Status.DONE) -> IngestBatch:
    return IngestBatch.objects.create(source=source, status=status)


def add_file(
    batch: IngestBatch,
    relpath: str,
    data: bytes | None = None,
    *,
    kind: str = RawFile.Kind.OTHER,
    modality: str = "",
    study_key: str = "",
    excluded: bool = False,
    write: bool = True,
) -> RawFile:
    """Write ``data`` under the source's raw root (unless ``write`` is False) and register it."""
    path = Path(batch.source.raw_root) / relpath
    if write and data is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    if data is None:
        data = path.read_bytes() if path.exists() else b""
    batch.files_total += 1
    batch.save(update_fields=["files_total"])
    return RawFile.objects.create(
        batch=batch,
        source=batch.source,
        relpath=relpath,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        kind=kind,
        modality=modality,
        study_key=study_key,
        excluded=excluded,
        excluded_reason="duplicate" if excluded else "",
    )


def dicom_bytes(
    *,
    name: str = f"{EN_NAME}={ZH_NAME}",
    patient_id: str = PATIENT_ID,
    charset: str = "GB18030",
    modality: str = "CT",
) -> bytes:
    """A small CT-like file with PHI in the header (Chinese name in GB18030)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    sop = generate_uid(entropy_srcs=[patient_id, name, modality])
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.SpecificCharacterSet = charset
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[patient_id, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[patient_id, "series"])
    ds.PatientName = name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19800307"
    ds.PatientSex = "M"
    ds.StudyDate = "20240305"
    ds.AccessionNumber = "ACC998877"
    ds.Modality = modality
    ds.InstitutionName = "北京协和医院"
    ds.StudyDescription = f"胸部CT {ZH_NAME} 复查"
    ds.Rows, ds.Columns = 8, 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = np.arange(64, dtype="<u2").reshape(8, 8).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def note_bytes() -> bytes:
    return (
        f"入院记录\n患者{ZH_NAME}，男，44岁。身份证号 {RESIDENT_ID}，联系电话 {PHONE}。\n"
        "主诉：胸痛3天。血红蛋白 120 g/L，EF 55%。\n"
    ).encode()


def _f(text: str, n: int) -> bytes:
    b = text.encode("latin-1")[:n]
    return b + b" " * (n - len(b))


def edf_bytes() -> bytes:
    """A two-signal EDF (not EDF+) with the patient in the header."""
    labels, nsamp = ["EEG Fp1", "ECG"], [64, 32]
    h = bytearray()
    h += _f("0", 8) + _f(f"{PATIENT_ID} M 07-MAR-1980 Zhang_Wei", 80)
    h += _f("Startdate 05-MAR-2024 ADM778 Dr_Li EEG-9000", 80)
    h += _f("05.03.24", 8) + _f("10.32.00", 8) + _f(str(256 * 3), 8) + _f("", 44)
    h += _f("2", 8) + _f("1", 8) + _f("2", 4)
    for lab in labels:
        h += _f(lab, 16)
    for _ in labels:
        h += _f("AgAgCl electrode", 80)
    for _ in labels:
        h += _f("uV", 8)
    for value in ("-3200", "3200", "-32768", "32767"):
        for _ in labels:
            h += _f(value, 8)
    for _ in labels:
        h += _f("HP:0.1Hz", 80)
    for n in nsamp:
        h += _f(str(n), 8)
    for _ in labels:
        h += _f("", 32)
    rng = np.random.default_rng(3)
    data = b"".join(
        rng.integers(-32768, 32767, n, dtype=np.int16).astype("<i2").tobytes()
        for _ in range(2)
        for n in nsamp
    )
    return bytes(h) + data


def corrupt_dicom_bytes() -> bytes:
    """Preamble and magic, then a truncated element with an absurd length."""
    return b"\x00" * 128 + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00" + b"\xff\xff"


def junk_bytes() -> bytes:
    return bytes(range(256)) * 4


@dataclass
class MixedBatch:
    """The generated batch and where things are."""

    batch: IngestBatch
    raw_root: Path
    out_base: Path
    outside: Path
    files: dict[str, RawFile] = field(default_factory=dict)


def mixed_batch(tmp_path: Path) -> MixedBatch:
    """One batch of every kind a run meets, including the ones it must refuse."""
    raw_root = tmp_path / "raw"
    out_base = tmp_path / "deid"
    outside = tmp_path / "outside"
    raw_root.mkdir()
    outside.mkdir()
    source = make_source(raw_root, out_base)
    batch = make_batch(source)
    mb = MixedBatch(batch, raw_root, out_base, outside)
    study = f"patients/{PATIENT_ID}"
    mb.files["dicom"] = add_file(
        batch,
        f"{study}/ct/IM0001.dcm",
        dicom_bytes(),
        kind="dicom",
        modality="CT",
        study_key=STUDY_KEY,
    )
    mb.files["note"] = add_file(
        batch, f"{study}/admission_note.txt", note_bytes(), kind="text", study_key=STUDY_KEY
    )
    mb.files["edf"] = add_file(
        batch, f"{study}/eeg.edf", edf_bytes(), kind="edf", modality="EEG", study_key=STUDY_KEY
    )
    mb.files["corrupt"] = add_file(batch, "broken/IM9999.dcm", corrupt_dicom_bytes(), kind="dicom")
    mb.files["junk"] = add_file(batch, "misc/blob.bin", junk_bytes(), kind="other")
    secret = outside / "secret.txt"
    secret.write_text(f"{ZH_NAME} {PHONE}", encoding="utf-8")
    os.symlink(secret, raw_root / "escape.txt")
    mb.files["symlink"] = add_file(
        batch, "escape.txt", secret.read_bytes(), kind="text", write=False
    )
    mb.files["excluded"] = add_file(
        batch, "dup/note_copy.txt", b"duplicate", kind="text", excluded=True
    )
    return mb
