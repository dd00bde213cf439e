"""Small factories for review tests: sources, runs, results and real de-identified files.

The de-id services are someone else's; these build the rows directly, as a finished run
would have left them, and write tiny but genuine outputs (DICOM via pydicom, a note with
typed mask spans, an EDF, a .npy waveform) under a temporary output root.
"""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path
from typing import Any

import numpy as np

from apps.deid.models import DeidFileResult, DeidRun
from apps.inventory.models import DataSource, IngestBatch, RawFile

_seq = itertools.count(1)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- files -----------------------------------------------------------------------------------


def dicom_bytes(
    *,
    rows: int = 64,
    cols: int = 64,
    frames: int = 1,
    modality: str = "CT",
    patient_name: str = "ANON^7F3A",
    burned_in: bool = False,
) -> bytes:
    """A small, valid DICOM file (explicit VR little endian, int16 pixels, HU rescale)."""
    import io

    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.PatientName = patient_name
    ds.PatientID = "PSEUDO-0001" if patient_name.startswith("ANON") else "110105198003071234"
    ds.StudyDate = "20230514"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.WindowCenter, ds.WindowWidth = 40, 400
    if frames > 1:
        ds.NumberOfFrames = frames
    yy, xx = np.mgrid[0:rows, 0:cols]
    body = ((yy - rows / 2) ** 2 + (xx - cols / 2) ** 2) < (min(rows, cols) / 2.4) ** 2
    planes = []
    for f in range(frames):
        stored = np.where(body, 1024 + 40 + 10 * f, 0).astype(np.int16)  # 40 HU inside, air out
        if burned_in:
            stored[2:8, 2 : cols // 2] = 1024 + 3000
        planes.append(stored)
    pixels = np.stack(planes) if frames > 1 else planes[0]
    ds.PixelData = pixels.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


NOTE = "Patient <NAME_1> seen on <DATE_1>, phone <PHONE_1>. Chest pain resolved."


def note_with_spans(text: str = NOTE) -> tuple[str, list[dict[str, Any]]]:
    """A de-identified note and its mask spans in output offsets."""
    spans = []
    for token, kind in (("<NAME_1>", "name"), ("<DATE_1>", "date"), ("<PHONE_1>", "phone")):
        start = text.find(token)
        if start >= 0:
            spans.append({"type": kind, "start": start, "end": start + len(token)})
    return text, spans


def edf_bytes(
    *, seconds: int = 4, fs: int = 100, labels: tuple[str, ...] = ("ECG I", "ECG II")
) -> bytes:
    """A minimal EDF: 1-second records, int16 samples, a sine per channel."""
    ns = len(labels)

    def f(value: Any, width: int) -> bytes:
        return str(value).ljust(width)[:width].encode("ascii")

    head = (
        f("0", 8)
        + f("X X X X", 80)
        + f("Startdate X X X X", 80)
        + f("01.01.85", 8)
        + f("00.00.00", 8)
        + f(256 + 256 * ns, 8)
        + f("", 44)
        + f(seconds, 8)
        + f(1, 8)
        + f(ns, 4)
    )
    sig = b"".join(f(lab, 16) for lab in labels)
    sig += b"".join(f("AgAgCl", 80) for _ in labels)
    sig += b"".join(f("mV", 8) for _ in labels)
    sig += b"".join(f(-5, 8) for _ in labels)
    sig += b"".join(f(5, 8) for _ in labels)
    sig += b"".join(f(-32768, 8) for _ in labels)
    sig += b"".join(f(32767, 8) for _ in labels)
    sig += b"".join(f("", 80) for _ in labels)
    sig += b"".join(f(fs, 8) for _ in labels)
    sig += b"".join(f("", 32) for _ in labels)
    t = np.arange(seconds * fs) / fs
    data = b""
    for r in range(seconds):
        for i in range(ns):
            y = np.sin(2 * np.pi * (1 + i) * t[r * fs : (r + 1) * fs])
            data += (y * 3000).astype("<i2").tobytes()
    return head + sig + data


def npy_bytes(channels: int = 2, samples: int = 500) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(
        buf,
        np.sin(np.linspace(0, 20, channels * samples))
        .reshape(channels, samples)
        .astype(np.float32),
    )
    return buf.getvalue()


# --- rows ------------------------------------------------------------------------------------


def make_source(root: Path, name: str | None = None) -> DataSource:
    name = name or f"source-{next(_seq)}"
    raw_root = root / name / "raw"
    raw_root.mkdir(parents=True, exist_ok=True)
    return DataSource.objects.create(
        source=name, type="MIXED", owner="radiology", raw_root=str(raw_root)
    )


def make_run(
    root: Path, *, status: str = DeidRun.Status.DONE, source: DataSource | None = None
) -> DeidRun:
    source = source or make_source(root)
    batch = IngestBatch.objects.create(source=source, status="done")
    out = root / f"run-{next(_seq)}"
    out.mkdir(parents=True, exist_ok=True)
    return DeidRun.objects.create(batch=batch, status=status, output_root=str(out))


def add_result(
    run: DeidRun,
    *,
    kind: str = "dicom",
    modality: str = "CT",
    source: DataSource | None = None,
    status: str = DeidFileResult.Status.OK,
    flagged: bool = False,
    content: bytes | None = None,
    original: bytes | None = None,
    suffix: str | None = None,
    spans: list[dict[str, Any]] | None = None,
    actions: dict[str, Any] | None = None,
) -> DeidFileResult:
    """One result; with ``content`` the output file is written (and ``original`` the raw)."""
    n = next(_seq)
    source = source or run.batch.source
    suffix = suffix or {"dicom": ".dcm", "text": ".txt", "edf": ".edf"}.get(kind, ".bin")
    raw_rel = f"in/{n}{suffix}"
    raw_bytes = original if original is not None else f"raw-{n}".encode()
    if original is not None:
        raw_path = Path(source.raw_root) / raw_rel
        raw_path.parent.mkdir(parents=True, exist_ok=True)
        raw_path.write_bytes(original)
    raw = RawFile.objects.create(
        batch=run.batch,
        source=source,
        relpath=raw_rel,
        sha256=sha(raw_bytes),
        size=len(raw_bytes),
        kind={"wfdb_header": "wfdb"}.get(
            kind, kind if kind in ("dicom", "text", "edf") else "other"
        ),
        modality=modality,
    )
    out_rel = f"out/{n}{suffix}" if status == DeidFileResult.Status.OK else ""
    out_sha = sha(content) if content is not None else sha(f"out-{n}".encode())
    if content is not None and out_rel:
        path = Path(run.output_root) / out_rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return DeidFileResult.objects.create(
        run=run,
        raw_file=raw,
        status=status,
        kind=kind,
        modality=modality,
        input_sha256=raw.sha256,
        output_relpath=out_rel,
        output_sha256=out_sha if out_rel else "",
        spans=spans or [],
        actions=actions or {},
        flagged=flagged,
        patient_pseudonym=f"P{n:05d}",
        study_key=f"S{n:05d}",
    )


def bulk_results(
    run: DeidRun,
    count: int,
    *,
    kind: str = "dicom",
    modality: str = "CT",
    source: DataSource | None = None,
    status: str = DeidFileResult.Status.OK,
    flagged_every: int = 0,
) -> list[DeidFileResult]:
    """Many results without files, fast (for sampling and gate arithmetic)."""
    source = source or run.batch.source
    raws = RawFile.objects.bulk_create(
        RawFile(
            batch=run.batch,
            source=source,
            relpath=f"bulk/{kind}/{modality}/{source.pk}/{next(_seq)}",
            sha256=sha(f"r{i}".encode()),
            size=1,
            kind=kind if kind in ("dicom", "text", "edf") else "other",
            modality=modality,
        )
        for i in range(count)
    )
    return DeidFileResult.objects.bulk_create(
        DeidFileResult(
            run=run,
            raw_file=raw,
            status=status,
            kind=kind,
            modality=modality,
            input_sha256=raw.sha256,
            output_relpath=f"out/{raw.pk}" if status == "ok" else "",
            output_sha256=sha(f"o{raw.pk}".encode()) if status == "ok" else "",
            flagged=bool(flagged_every) and i % flagged_every == 0,
        )
        for i, raw in enumerate(raws)
    )


def finish(run: DeidRun) -> DeidRun:
    """Set the run's counters from its results, as the de-id run service does at the end."""
    results = run.results.all()
    DeidRun.objects.filter(pk=run.pk).update(
        status=DeidRun.Status.DONE,
        files_total=results.count(),
        files_done=results.count(),
        files_ok=results.filter(status="ok").count(),
        files_quarantined=results.filter(status="quarantined").count(),
        files_error=results.filter(status="error").count(),
    )
    run.refresh_from_db()
    return run


def review_everything(batch: Any, reviewers: list[Any], decide: Any = None) -> int:
    """Let the reviewers work the queue in turn until nobody gets an item; verdicts given."""
    from apps.review import services

    decide = decide or (lambda item, reviewer: ("pass", ""))
    given = 0
    progress = True
    while progress:
        progress = False
        for reviewer in reviewers:
            item = services.next_item(batch, reviewer)
            if item is None:
                continue
            decision, category = decide(item, reviewer)
            services.submit_verdict(item, reviewer, decision=decision, category=category)
            given += 1
            progress = True
    return given


def mark_all_passed(batch: Any, reviewer: Any) -> None:
    """Rows as if ``reviewer`` had passed every item: for gate arithmetic on hundreds of items
    (the service path that writes them is proven in test_queue and test_concurrency)."""
    from apps.review.models import ReviewItem, Verdict

    items = list(batch.items.select_related("result"))
    Verdict.objects.bulk_create(
        Verdict(
            item=item,
            reviewer=reviewer,
            round=item.round,
            decision="pass",
            seconds=4.0,
            output_sha256=item.result.output_sha256,
        )
        for item in items
    )
    ReviewItem.objects.filter(batch=batch).update(
        status="done", outcome="pass", reviews_done=1, lease_user_id=None
    )
