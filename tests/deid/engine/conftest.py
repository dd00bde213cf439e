"""Factories for synthetic, PHI-laden inputs (built here, never read from disk)."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from apps.deid.engine import DeidProfile, ProjectKey

ZH_NAME = "张伟"
ZH_PN = "Zhang^Wei=张^伟"
PATIENT_ID = "ZY20240305"
ACCESSION = "ACC998877"


@pytest.fixture
def key() -> ProjectKey:
    return ProjectKey(b"project-secret-for-tests-0123456789")


@pytest.fixture
def profile() -> DeidProfile:
    return DeidProfile()


def build_dataset(
    *,
    charset: str = "ISO_IR 192",
    name: str = ZH_PN,
    patient_id: str = PATIENT_ID,
    study_uid: str = "1.2.826.0.1.3680043.8.498.100",
    sop_uid: str = "1.2.826.0.1.3680043.8.498.101",
    study_date: str = "20240305",
    modality: str = "CT",
    rows: int = 8,
    cols: int = 8,
    pixels: np.ndarray | None = None,
    **extra: Any,
) -> Dataset:
    """A small CT-like dataset with PHI in the usual places, nested and private."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.SourceApplicationEntityTitle = "PACS_BJXH"
    if charset:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = study_uid + ".1"
    ds.FrameOfReferenceUID = study_uid + ".2"
    ds.PatientName = name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19800307"
    ds.PatientAge = "044Y"
    ds.PatientSex = "M"
    ds.StudyDate = study_date
    ds.SeriesDate = study_date
    ds.StudyTime = "101500"
    ds.AccessionNumber = ACCESSION
    ds.Modality = modality
    ds.InstitutionName = "北京协和医院"
    ds.ReferringPhysicianName = "Li^Jianguo=李^建国"
    ds.StudyDescription = "胸部CT 张伟 复查"
    ds.ImageComments = "患者张伟，电话13812345678"
    ref = Dataset()
    ref.ReferencedSOPClassUID = CTImageStorage
    ref.ReferencedSOPInstanceUID = sop_uid
    ds.ReferencedImageSequence = Sequence([ref])
    req = Dataset()
    req.RequestingPhysician = "Wang^Fang"
    req.RequestedProcedureDescription = "CT chest for 张伟"
    inner = Dataset()
    inner.PatientName = name
    inner.TextValue = f"{patient_id} 张伟 follow-up"
    req.ContentSequence = Sequence([inner])
    ds.RequestAttributesSequence = Sequence([req])
    ds.private_block(0x0009, "ACME PRIVATE", create=True).add_new(0x10, "LO", "张伟 ZY20240305")
    ds.private_block(0x0009, "ACME PRIVATE", create=True).add_new(0x11, "DS", "1.5")
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    if pixels is None:
        pixels = (np.arange(rows * cols, dtype=np.uint16) % 4096).reshape(rows, cols)
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    for k, v in extra.items():
        setattr(ds, k, v)
    return ds


def to_bytes(ds: Dataset, *, file_format: bool = True) -> bytes:
    buf = io.BytesIO()
    if file_format:
        ds.save_as(buf, enforce_file_format=True)
    else:
        ds.save_as(buf, implicit_vr=True, little_endian=True)
    return buf.getvalue()


@pytest.fixture
def make_dicom() -> Callable[..., bytes]:
    def make(**kw: Any) -> bytes:
        return to_bytes(build_dataset(**kw))

    return make


@pytest.fixture
def make_dataset() -> Callable[..., Dataset]:
    return build_dataset


@pytest.fixture
def dataset_bytes() -> Callable[..., bytes]:
    return to_bytes
