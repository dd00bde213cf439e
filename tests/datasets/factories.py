"""Rows and small de-identified files for the datasets tests (no other app's services).

``make_world`` builds one ingest batch and one de-id run over three pseudonymous patients:

- study A: three CT slices (written out of order), a report and an EDF ECG;
- study B: two MR slices, a report and a WFDB record (header + signal file);
- patient C: one note without a study key;
- and files that must never be packed: a quarantined DICOM, an errored note and a note whose
  raw file data QA excluded.

``released`` sets ``released_at`` the way the review gate would.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from django.utils import timezone

from apps.deid.models import DeidFileResult, DeidRun
from apps.inventory.models import ConsentStatus, DataSource, IngestBatch, RawFile

UID_ROOT = "1.2.826.0.1.3680043.8.498"


def make_source(name: str = "ward-a", consent: str = ConsentStatus.OBTAINED) -> DataSource:
    return DataSource.objects.create(
        source=name, type="MIXED", owner="radiology", consent_status=consent
    )


def make_batch(source: DataSource) -> IngestBatch:
    return IngestBatch.objects.create(source=source, status=IngestBatch.Status.DONE)


def make_raw(batch: IngestBatch, relpath: str, kind: str, **extra: object) -> RawFile:
    digest = hashlib.sha256(f"raw:{batch.pk}:{relpath}".encode()).hexdigest()
    return RawFile.objects.create(
        batch=batch,
        source=batch.source,
        relpath=relpath,
        sha256=extra.pop("sha256", digest),
        size=100,
        kind=kind,
        **extra,
    )


def make_run(batch: IngestBatch, output_root: Path, *, released: bool = True) -> DeidRun:
    output_root.mkdir(parents=True, exist_ok=True)
    return DeidRun.objects.create(
        batch=batch,
        profile_fingerprint="profile-test-1",
        status=DeidRun.Status.DONE,
        output_root=str(output_root),
        released_at=timezone.now() if released else None,
    )


def release(run: DeidRun) -> None:
    """What the review gate does when a run passes (simulated)."""
    DeidRun.objects.filter(pk=run.pk).update(released_at=timezone.now())
    run.refresh_from_db()


def add_result(
    run: DeidRun,
    raw: RawFile,
    relpath: str,
    data: bytes | None,
    *,
    kind: str,
    status: str = DeidFileResult.Status.OK,
    modality: str = "",
    pseudonym: str = "",
    study_key: str = "",
) -> DeidFileResult:
    """A result row; for ok results the de-identified output is written under the run."""
    digest = ""
    if data is not None:
        path = Path(run.output_root) / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
    return DeidFileResult.objects.create(
        run=run,
        raw_file=raw,
        status=status,
        kind=kind,
        modality=modality,
        input_sha256=raw.sha256,
        output_relpath=relpath if data is not None else "",
        output_sha256=digest,
        patient_pseudonym=pseudonym,
        study_key=study_key,
    )


def dicom_bytes(
    pixels: np.ndarray,
    *,
    study: str,
    series: str,
    instance: int,
    z: float,
    modality: str = "CT",
    slope: float = 1.0,
    intercept: float = -1024.0,
    window: tuple[float, float] | None = (40.0, 400.0),
) -> bytes:
    """A small uncompressed DICOM file with unsigned 16-bit stored pixels."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    sop = f"{UID_ROOT}.{study}.{series}.{instance}"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = f"{UID_ROOT}.{study}"
    ds.SeriesInstanceUID = f"{UID_ROOT}.{study}.{series}"
    ds.Modality = modality
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [0.0, 0.0, z]
    ds.PixelSpacing = [0.7, 0.7]
    ds.SliceThickness = 2.5
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def edf_bytes(signals: dict[str, np.ndarray], *, rate: int, seconds: int) -> bytes:
    """An EDF file: digital int16 signals, physical range -3276.8..3276.7 uV (gain 0.1)."""

    def field_(text: str, width: int) -> bytes:
        return text.encode("ascii").ljust(width)[:width]

    ns = len(signals)
    header = b"".join(
        [
            field_("0", 8),
            field_("X X X X", 80),
            field_("Startdate X X X X", 80),
            field_("01.01.01", 8),
            field_("00.00.00", 8),
            field_(str(256 + 256 * ns), 8),
            field_("", 44),
            field_(str(seconds), 8),
            field_("1", 8),
            field_(str(ns), 4),
        ]
    )
    labels = list(signals)
    per = [
        (16, labels),
        (80, ["AgAgCl"] * ns),
        (8, ["uV"] * ns),
        (8, ["-3276.8"] * ns),
        (8, ["3276.7"] * ns),
        (8, ["-32768"] * ns),
        (8, ["32767"] * ns),
        (80, [""] * ns),
        (8, [str(rate)] * ns),
        (32, [""] * ns),
    ]
    for width, values in per:
        header += b"".join(field_(v, width) for v in values)
    body = b""
    for second in range(seconds):
        for label in labels:
            body += signals[label][second * rate : (second + 1) * rate].astype("<i2").tobytes()
    return header + body


def wfdb_files(record: str, digital: np.ndarray, *, rate: int = 250) -> tuple[bytes, bytes]:
    """A format-16 WFDB record: (header, signal file) for ``digital`` ``[frames, nsig]``."""
    frames, nsig = digital.shape
    lines = [f"{record} {nsig} {rate} {frames}"]
    for i in range(nsig):
        lines.append(f"{record}.dat 16 200(0)/mV 16 0 0 0 0 lead{i}")
    return ("\n".join(lines) + "\n").encode(), digital.astype("<i2").tobytes()


@dataclass
class World:
    source: DataSource
    batch: IngestBatch
    run: DeidRun
    raws: dict[str, RawFile] = field(default_factory=dict)
    results: dict[str, DeidFileResult] = field(default_factory=dict)
    ct_hu: np.ndarray | None = None  # the CT stack as packing must produce it [3, 8, 8]
    ecg: np.ndarray | None = None  # physical EDF values [2, 512]
    wfdb: np.ndarray | None = None  # physical WFDB values [2, 300]


PACKED = [
    "a_ct1",
    "a_ct2",
    "a_ct3",
    "a_report",
    "a_ecg",
    "b_mr1",
    "b_mr2",
    "b_report",
    "b_hea",
    "b_dat",
    "c_note",
]
NEVER_PACKED = ["q_dicom", "e_note", "x_note"]


def make_world(root: Path, *, released: bool = True, name: str = "ward-a") -> World:
    source = make_source(name)
    batch = make_batch(source)
    run = make_run(batch, root / f"deid-{name}", released=released)
    w = World(source, batch, run)
    rng = np.random.default_rng(7)

    def add(key: str, relpath: str, kind: str, data: bytes | None, **kw: object) -> None:
        raw_kind = {"wfdb_header": "wfdb", "wfdb_signal": "wfdb"}.get(kind, kind)
        raw_extra = {k: kw.pop(k) for k in ("excluded", "excluded_reason") if k in kw}
        w.raws[key] = make_raw(batch, f"raw/{relpath}", raw_kind, **raw_extra)
        w.results[key] = add_result(run, w.raws[key], relpath, data, kind=kind, **kw)

    # Study A: CT slices written in the order 3, 1, 2; stored = HU + 1024.
    stored = rng.integers(0, 2000, size=(3, 8, 8)).astype(np.uint16)
    w.ct_hu = (stored.astype(np.int32) - 1024).astype(np.int16)
    for key, instance in (("a_ct3", 3), ("a_ct1", 1), ("a_ct2", 2)):
        data = dicom_bytes(
            stored[instance - 1], study="1", series="1", instance=instance, z=2.5 * instance
        )
        add(
            key,
            f"P-AAAA/ct/{instance:03d}.dcm",
            "dicom",
            data,
            modality="CT",
            pseudonym="P-AAAA",
            study_key="study-a",
        )
    add(
        "a_report",
        "P-AAAA/report.txt",
        "text",
        "CT chest: 6 mm nodule, right upper lobe.\n胸部CT：右上叶结节。".encode(),
        pseudonym="P-AAAA",
        study_key="study-a",
    )
    digital = rng.integers(-2000, 2000, size=(2, 512)).astype(np.int16)
    w.ecg = (digital.astype(np.float64) * 0.1).astype(np.float32)
    add(
        "a_ecg",
        "P-AAAA/ecg.edf",
        "edf",
        edf_bytes({"I": digital[0], "II": digital[1]}, rate=256, seconds=2),
        modality="ECG",
        pseudonym="P-AAAA",
        study_key="study-a",
    )

    # Study B: MR slices (no window -> none recorded), report, WFDB header + signal file.
    mr = rng.integers(0, 500, size=(2, 6, 6)).astype(np.uint16)
    for i in (1, 2):
        data = dicom_bytes(
            mr[i - 1],
            study="2",
            series="1",
            instance=i,
            z=float(i),
            modality="MR",
            intercept=0.0,
            window=None,
        )
        add(
            f"b_mr{i}",
            f"P-BBBB/mr/{i}.dcm",
            "dicom",
            data,
            modality="MR",
            pseudonym="P-BBBB",
            study_key="study-b",
        )
    add(
        "b_report",
        "P-BBBB/report.txt",
        "text",
        b"MR brain: no acute findings.",
        pseudonym="P-BBBB",
        study_key="study-b",
    )
    wdig = rng.integers(-400, 400, size=(300, 2)).astype(np.int16)
    w.wfdb = (wdig.T.astype(np.float64) / 200.0).astype(np.float32)
    hea, dat = wfdb_files("rec1", wdig)
    add(
        "b_hea",
        "P-BBBB/ecg/rec1.hea",
        "wfdb_header",
        hea,
        modality="ECG",
        pseudonym="P-BBBB",
        study_key="study-b",
    )
    add("b_dat", "P-BBBB/ecg/rec1.dat", "wfdb_signal", dat)  # no pseudonym of its own

    # Patient C: a note with no study.
    add("c_note", "P-CCCC/note.txt", "text", b"Discharge summary: stable.", pseudonym="P-CCCC")

    # Never packed.
    add(
        "q_dicom",
        "P-AAAA/burned.dcm",
        "dicom",
        None,
        status="quarantined",
        pseudonym="P-AAAA",
        study_key="study-a",
    )
    add("e_note", "P-CCCC/bad.txt", "text", None, status="error", pseudonym="P-CCCC")
    add(
        "x_note",
        "P-XXXX/note.txt",
        "text",
        b"Excluded by QA.",
        pseudonym="P-XXXX",
        study_key="study-x",
        excluded=True,
        excluded_reason="near_empty_note",
    )
    return w
