"""Inventory fixtures: synthetic DICOM, EDF, WFDB and text files, and a data source over them."""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

STUDY_UID = "1.2.826.0.1.3680043.8.498.1001"
SERIES_UID = "1.2.826.0.1.3680043.8.498.1001.1"


def write_dicom(
    path: Path,
    *,
    modality: str = "CT",
    instance: int = 1,
    study_uid: str = STUDY_UID,
    series_uid: str = SERIES_UID,
    pixels: np.ndarray | None = None,
) -> Path:
    """A small valid DICOM file (explicit VR little endian, 16-bit signed pixels)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    if pixels is None:
        rng = np.random.default_rng(instance)
        pixels = rng.normal(0, 300, size=(16, 16)).astype(np.int16)  # plausible HU
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = "Synthetic^Patient"
    ds.PatientID = "SYN-0001"
    ds.Modality = modality
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.InstanceNumber = instance
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope = 1
    ds.RescaleIntercept = 0
    ds.PixelData = pixels.astype("<i2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def edf_bytes(
    signals: list[np.ndarray],
    *,
    labels: list[str] | None = None,
    rate: int = 100,
    record_seconds: int = 1,
    dig: tuple[int, int] = (-32768, 32767),
    phys: tuple[str, str] = ("-3200", "3200"),
) -> bytes:
    """An EDF file: one int16 array per signal, all at ``rate`` Hz, whole records only."""
    ns = len(signals)
    labels = labels or [f"EEG C{i}" for i in range(ns)]
    spr = rate * record_seconds
    n_records = len(signals[0]) // spr

    def f(value: object, width: int) -> bytes:
        return str(value).ljust(width)[:width].encode("ascii")

    head = b"".join(
        [
            f("0", 8),
            f("X X X X", 80),
            f("Startdate X X X X", 80),
            f("01.01.01", 8),
            f("00.00.00", 8),
            f(256 * (ns + 1), 8),
            f("", 44),
            f(n_records, 8),
            f(record_seconds, 8),
            f(ns, 4),
        ]
    )
    per = [
        [f(x, 16) for x in labels],
        [f("", 80)] * ns,
        [f("uV", 8)] * ns,
        [f(phys[0], 8)] * ns,
        [f(phys[1], 8)] * ns,
        [f(dig[0], 8)] * ns,
        [f(dig[1], 8)] * ns,
        [f("", 80)] * ns,
        [f(spr, 8)] * ns,
        [f("", 32)] * ns,
    ]
    head += b"".join(b"".join(column) for column in per)
    body = bytearray()
    for r in range(n_records):
        for s in signals:
            body += s[r * spr : (r + 1) * spr].astype("<i2").tobytes()
    return head + bytes(body)


def write_wfdb(folder: Path, name: str, signals: list[np.ndarray], *, rate: int = 250) -> Path:
    """A WFDB record in format 16: ``name.hea`` and ``name.dat``."""
    folder.mkdir(parents=True, exist_ok=True)
    frames = np.stack(signals, axis=1).astype("<i2")
    (folder / f"{name}.dat").write_bytes(frames.tobytes())
    lines = [f"{name} {len(signals)} {rate} {frames.shape[0]}"]
    lines += [f"{name}.dat 16 200/mV 16 0 0 0 0 lead{i}" for i in range(len(signals))]
    header = folder / f"{name}.hea"
    header.write_text("\n".join(lines) + "\n")
    return header


def good_wave(n: int = 1000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return (1000 * np.sin(t / 7) + rng.normal(0, 50, n)).astype(np.int16)


NOTE_ZH = "胸部CT未见明显异常,右上肺小结节,建议随访。"
NOTE = "Chest CT: no acute findings. Small nodule in the right upper lobe, follow up in 12 months."


@pytest.fixture
def mixed_tree(tmp_path: Path) -> Path:
    """A raw root with one of each kind, plus junk and a symlink pointing out of the root."""
    root = tmp_path / "raw"
    for i in (1, 2, 3):
        write_dicom(root / "ct" / f"slice{i}.dcm", instance=i)
    (root / "eeg").mkdir()
    (root / "eeg" / "night.edf").write_bytes(edf_bytes([good_wave(1000), good_wave(1000, 1)]))
    write_wfdb(root / "ecg", "rec1", [good_wave(2500), good_wave(2500, 2)])
    (root / "notes").mkdir()
    (root / "notes" / "report.txt").write_text(NOTE, encoding="utf-8")
    (root / "notes" / "报告.txt").write_bytes(NOTE_ZH.encode("gb18030"))
    (root / "junk.bin").write_bytes(bytes(range(256)) * 8)
    outside = tmp_path / "outside-secret.txt"
    outside.write_text("must never be registered " * 10)
    os.symlink(outside, root / "escape.txt")
    return root


@pytest.fixture
def source(db, mixed_tree):
    from apps.inventory.models import DataSource

    return DataSource.objects.create(
        source="PACS radiology",
        type="DICOM",
        avg_size_mb=Decimal("0.5"),
        estimated_count=100,
        owner="Radiology",
        consent_status="waived",
        raw_root=str(mixed_tree),
    )


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # The cast fixture hashes seven passwords; the production hasher is slow on purpose.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
