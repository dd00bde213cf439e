"""The data map's operations (seed 2.1, 2.4): the only write path for inventory models.

Views, the API, Celery tasks and management commands call these functions; each state change
commits with its audit event in one transaction. Audit events carry ids, hashes and counts,
never file names, paths or note text (they can hold PHI).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Count, F, Max, Q, Sum
from django.utils import timezone
from django.utils.translation import gettext as _

from apps.audit.services import record
from apps.core.roles import ALL_ROLES
from apps.inventory import csvfile, detect, qa, waveforms
from apps.inventory.csvfile import InventoryCSVError
from apps.inventory.models import (
    ConsentStatus,
    DataKind,
    DataSource,
    IngestBatch,
    QACheckResult,
    QAResult,
    RawFile,
)

if TYPE_CHECKING:
    from apps.accounts.models import User

logger = logging.getLogger(__name__)

__all__ = [
    "ImportResult",
    "InventoryCSVError",
    "ScanError",
    "cancel_scan",
    "create_source",
    "dashboard_data",
    "delete_source",
    "exclude_file",
    "export_inventory_csv",
    "import_inventory_csv",
    "include_file",
    "run_qa",
    "scan_source",
    "start_scan",
    "update_source",
]

EDITABLE_FIELDS = (
    "source",
    "type",
    "avg_size_mb",
    "estimated_count",
    "owner",
    "consent_status",
    "notes",
    "raw_root",
    "deid_root",
    "working_root",
    "allowed_roles",
    "legal_basis",
)
CSV_FIELDS = (
    "source",
    "type",
    "avg_size_mb",
    "estimated_count",
    "owner",
    "consent_status",
    "notes",
)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_CONTROL_IN_NOTES = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
ACTIVE = (IngestBatch.Status.PENDING, IngestBatch.Status.RUNNING)


class ScanError(ValueError):
    """A scan cannot start or run (no raw root, one already running); the message is safe to
    show and to store: it names no file."""


# --- data sources ----------------------------------------------------------------------------


def source_state(source: DataSource) -> dict[str, Any]:
    """The audited state of a source (only its hash enters the trail)."""
    return {
        # Decimals by value (2 == 2.000): a re-import of the same number changes nothing.
        name: (csvfile.format_decimal(v) if isinstance(v := getattr(source, name), Decimal) else v)
        for name in EDITABLE_FIELDS
    }


def _clean_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    """Normalize what every entry point may send, so export → import stays exact."""
    unknown = set(data) - set(EDITABLE_FIELDS)
    if unknown:
        raise ValidationError({name: "not an editable field" for name in sorted(unknown)})
    cleaned: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name, value in data.items():
        if isinstance(value, str):
            value = csvfile.normalize_newlines(value).strip()
            pattern = _CONTROL_IN_NOTES if name == "notes" else _CONTROL
            if pattern.search(value) or (name != "notes" and "\n" in value):
                errors[name] = _("contains control characters or line breaks")
                continue
        if name in ("raw_root", "deid_root", "working_root") and value:
            if not os.path.isabs(value) or ".." in Path(value).parts:
                errors[name] = _("must be an absolute path without '..'")
                continue
            value = os.path.normpath(value)
        if name == "allowed_roles":
            roles = list(value or [])
            if set(roles) - ALL_ROLES:
                errors[name] = f"unknown roles: {sorted(set(roles) - ALL_ROLES)}"
                continue
            value = sorted(set(roles))
        cleaned[name] = value
    if errors:
        raise ValidationError(errors)
    return cleaned


def create_source(data: Mapping[str, Any], *, acting_user: User | int | None) -> DataSource:
    """Add a row to the data map."""
    source = DataSource(**_clean_fields(data))
    source.full_clean()
    with transaction.atomic():
        source.save()
        record(
            "inventory.source_created",
            f"inventory.datasource:{source.pk}",
            actor=acting_user,
            post=source_state(source),
        )
    return source


def update_source(
    source: DataSource, data: Mapping[str, Any], *, acting_user: User | int | None
) -> DataSource:
    """Change a data-map row; a no-op change writes nothing."""
    cleaned = _clean_fields(data)
    with transaction.atomic():
        source = DataSource.objects.select_for_update().get(pk=source.pk)
        before = source_state(source)
        for name, value in cleaned.items():
            setattr(source, name, value)
        source.full_clean()
        if source_state(source) == before:
            return source
        source.save()
        record(
            "inventory.source_updated",
            f"inventory.datasource:{source.pk}",
            actor=acting_user,
            pre=before,
            post=source_state(source),
            details={"fields": sorted(k for k in cleaned if before[k] != source_state(source)[k])},
        )
    return source


def delete_source(source: DataSource, *, acting_user: User | int | None) -> None:
    """Remove a data-map row that never registered files (registered files are lineage)."""
    with transaction.atomic():
        source = DataSource.objects.select_for_update().get(pk=source.pk)
        if source.batches.exists():
            raise ValidationError(_("this source has ingest batches; it cannot be deleted"))
        state, pk = source_state(source), source.pk
        source.delete()
        record(
            "inventory.source_deleted", f"inventory.datasource:{pk}", actor=acting_user, pre=state
        )


# --- data_inventory.csv ----------------------------------------------------------------------


@dataclass
class ImportResult:
    created: list[int] = field(default_factory=list)
    updated: list[int] = field(default_factory=list)
    unchanged: int = 0
    sha256: str = ""


def _read_upload(file: bytes | IO[bytes] | Any) -> bytes:
    if isinstance(file, bytes | bytearray):
        data = bytes(file)
    else:
        size = getattr(file, "size", None)
        if size is not None and size > csvfile.MAX_BYTES:
            raise InventoryCSVError(
                [
                    csvfile.RowError(
                        0,
                        "",
                        _("file is over the limit of %(limit)d bytes")
                        % {"limit": csvfile.MAX_BYTES},
                    )
                ]
            )
        data = file.read(csvfile.MAX_BYTES + 1)
        if isinstance(data, str):
            data = data.encode("utf-8")
    if len(data) > csvfile.MAX_BYTES:
        raise InventoryCSVError(
            [
                csvfile.RowError(
                    0,
                    "",
                    _("file is over the limit of %(limit)d bytes") % {"limit": csvfile.MAX_BYTES},
                )
            ]
        )
    return data


def import_inventory_csv(
    file: bytes | IO[bytes] | Any, *, acting_user: User | int | None, encoding: str = "auto"
) -> ImportResult:
    """Create or update data-map rows from ``data_inventory.csv``, all or nothing.

    Rows are matched by ``source``; rows absent from the file are left alone (an import never
    deletes). Raises :class:`InventoryCSVError` with every bad cell's line and reason, and
    then nothing is written. ``encoding``: "auto" (UTF-8, with or without BOM), "utf-8" or
    "gb18030".
    """
    data = _read_upload(file)
    rows = csvfile.parse(
        csvfile.decode(data, encoding),
        type_codes=set(DataKind.values),
        consent_codes=set(ConsentStatus.values),
    )
    result = ImportResult(sha256=hashlib.sha256(data).hexdigest())
    with transaction.atomic():
        names = [row.values["source"] for row in rows]
        existing = {
            s.source: s for s in DataSource.objects.select_for_update().filter(source__in=names)
        }
        errors: list[csvfile.RowError] = []
        for row in rows:
            source = existing.get(row.values["source"]) or DataSource()
            before = source_state(source) if source.pk else None
            for name in CSV_FIELDS:
                setattr(source, name, row.values[name])
            try:
                source.full_clean()
            except ValidationError as exc:
                for name, messages in exc.message_dict.items():
                    column = "avg_size_MB" if name == "avg_size_mb" else name
                    errors += [csvfile.RowError(row.line, column, m) for m in messages]
                continue
            if before is not None and source_state(source) == before:
                result.unchanged += 1
                continue
            source.save()
            (result.updated if before is not None else result.created).append(source.pk)
            record(
                "inventory.source_updated" if before is not None else "inventory.source_created",
                f"inventory.datasource:{source.pk}",
                actor=acting_user,
                pre=before,
                post=source_state(source),
                details={"via": "csv_import"},
            )
        if errors:
            # Raising rolls back the rows already saved: nothing is half-imported.
            raise InventoryCSVError(errors[: csvfile.MAX_ERRORS], total=len(errors))
        record(
            "inventory.csv_imported",
            "inventory.datasource",
            actor=acting_user,
            details={
                "file_sha256": result.sha256,
                "rows": len(rows),
                "created": len(result.created),
                "updated": len(result.updated),
                "unchanged": result.unchanged,
            },
        )
    return result


def export_inventory_csv(sources: Iterable[DataSource] | None = None) -> bytes:
    """``data_inventory.csv`` of the data map (or of ``sources``), sorted by source."""
    qs = sources if sources is not None else DataSource.objects.order_by("source")
    return csvfile.render(
        [{name: getattr(s, name) for name in CSV_FIELDS} for s in qs]  # type: ignore[union-attr]
    )


# --- scanning --------------------------------------------------------------------------------


def uid_key() -> bytes:
    """Key for study/series keyed hashes: ``INVENTORY_UID_KEY`` when the site sets one, else
    derived from SECRET_KEY (domain-separated, so the two never collide in use)."""
    dedicated = getattr(settings, "INVENTORY_UID_KEY", "")
    if dedicated:
        return dedicated.encode() if isinstance(dedicated, str) else bytes(dedicated)
    return hmac.new(
        settings.SECRET_KEY.encode(), b"medctl-inventory-uid-key/1", hashlib.sha256
    ).digest()


def raw_root_of(source: DataSource) -> Path:
    """The source's raw root, resolved; ScanError when it is unset or not a folder."""
    if not source.raw_root:
        raise ScanError(_("the source has no raw root"))
    if not os.path.isabs(source.raw_root):
        raise ScanError(_("the raw root must be an absolute path"))
    root = Path(source.raw_root).resolve()
    allowed = getattr(settings, "INVENTORY_ALLOWED_ROOTS", None)
    if allowed and not any(root.is_relative_to(Path(a).resolve()) for a in allowed):
        raise ScanError(_("the raw root is outside INVENTORY_ALLOWED_ROOTS"))
    if not root.is_dir():
        raise ScanError(_("the raw root is not a readable folder"))
    return root


def safe_path(root: Path, relpath: str) -> Path:
    """``root/relpath``, refusing traversal and symlinks anywhere below the root."""
    parts = Path(relpath).parts
    if not parts or Path(relpath).is_absolute() or ".." in parts:
        raise ScanError("path leaves the raw root")
    path = root.joinpath(*parts)
    current = root
    for part in parts:
        current = current / part
        if current.is_symlink():
            raise ScanError("path goes through a symbolic link")
    if not path.resolve().is_relative_to(root):
        raise ScanError("path leaves the raw root")
    return path


def start_scan(
    source: DataSource, *, acting_user: User | int | None, enqueue: bool = True
) -> IngestBatch:
    """Open an IngestBatch for ``source`` and queue its scan (after commit).

    One scan per source at a time: a second request while one is pending or running is
    refused rather than racing it over the same files.
    """
    raw_root_of(source)
    with transaction.atomic():
        source = DataSource.objects.select_for_update().get(pk=source.pk)
        if source.batches.filter(status__in=ACTIVE).exists():
            raise ScanError(_("a scan of this source is already pending or running"))
        batch = IngestBatch.objects.create(source=source, created_by_id=_actor_id(acting_user))
        record(
            "inventory.scan_requested",
            f"inventory.ingestbatch:{batch.pk}",
            actor=acting_user,
            details={"source_id": source.pk},
        )
        if enqueue:
            from apps.inventory import tasks

            transaction.on_commit(lambda: tasks.scan_source.delay(batch.pk))
    return batch


def _actor_id(actor: Any) -> int | None:
    if actor is None or isinstance(actor, int):
        return actor
    return getattr(actor, "pk", None)


def cancel_scan(batch: IngestBatch, *, acting_user: User | int | None) -> bool:
    """Ask a pending or running scan to stop; the scanner sees it before its next file.

    Files registered so far stay registered (a later scan skips them by hash).
    """
    with transaction.atomic():
        changed = IngestBatch.objects.filter(pk=batch.pk, status__in=ACTIVE).update(
            status=IngestBatch.Status.CANCELLED, finished_at=timezone.now()
        )
        if changed:
            record(
                "inventory.scan_cancelled",
                f"inventory.ingestbatch:{batch.pk}",
                actor=acting_user,
                details={"source_id": batch.source_id},
            )
    return bool(changed)


@dataclass
class _Walk:
    files: list[tuple[Path, str]] = field(default_factory=list)
    refused: int = 0
    escaping_links: int = 0


def _walk(root: Path) -> _Walk:
    """Regular files under ``root``, sorted by relative path; links are never followed.

    A symlink that points out of the root is refused (counted); one that stays inside is
    skipped, since its target is registered under its own path. FIFOs, devices and names that
    are not valid UTF-8 are refused as well.
    """
    found = _Walk()

    def on_error(_exc: OSError) -> None:
        found.refused += 1

    for dirpath, dirnames, filenames in os.walk(root, followlinks=False, onerror=on_error):
        here = Path(dirpath)
        for name in [*dirnames, *filenames]:
            path = here / name
            try:
                info = path.lstat()
            except OSError:
                found.refused += 1
                continue
            if stat.S_ISLNK(info.st_mode):
                try:
                    target = path.resolve()
                except (OSError, RuntimeError):
                    target = None
                if target is None or not target.is_relative_to(root):
                    found.refused += 1
                    found.escaping_links += 1
                continue
            if name in dirnames:
                continue
            if not stat.S_ISREG(info.st_mode):
                found.refused += 1
                continue
            rel = path.relative_to(root).as_posix()
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError:
                found.refused += 1
                continue
            if len(rel) > 1000:
                found.refused += 1
                continue
            found.files.append((path, rel))
    found.files.sort(key=lambda item: item[1])
    return found


def _wfdb_signal_files(files: list[tuple[Path, str]]) -> frozenset[str]:
    """Signal files named by WFDB headers in the tree (they have no magic of their own)."""
    named: set[str] = set()
    for path, _rel in files:
        if path.suffix.lower() != ".hea":
            continue
        try:
            head = detect.read_head(path)
        except OSError:
            continue
        encoding = detect.text_encoding(head, final=len(head) < detect.HEAD_BYTES)
        if encoding is None:
            continue
        header = waveforms.parse_wfdb_header(head.decode(encoding, "replace"))
        if header is not None:
            named.update(os.fspath(path.parent / n) for n in waveforms.wfdb_signal_files(header))
    return frozenset(named)


def _hash_nofollow(path: Path) -> tuple[str, int]:
    # O_NOFOLLOW: a file swapped for a symlink after the walk is refused, not followed.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as fh:
        digest = hashlib.sha256()
        size = 0
        while block := fh.read(detect.HASH_CHUNK):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


ProgressCallback = Callable[[int, int], None]


def scan_source(batch_id: int, *, progress: ProgressCallback | None = None) -> IngestBatch:
    """Walk the batch's source, register new or changed files, then run data QA on them.

    Claims the batch with a conditional UPDATE (pending → running), so a retried or duplicate
    task does nothing. Before each file it checks that the batch is still running (a cancel
    flips the status), and after it bumps ``files_done`` with an UPDATE that only matches a
    running batch, so progress never lands on a cancelled or failed batch.
    Idempotent: a file already registered for the source at the same path with the same
    SHA-256 is skipped.
    """
    now = timezone.now()
    claimed = IngestBatch.objects.filter(pk=batch_id, status=IngestBatch.Status.PENDING).update(
        status=IngestBatch.Status.RUNNING, started_at=now
    )
    batch = IngestBatch.objects.select_related("source").get(pk=batch_id)
    if not claimed:
        return batch
    source = batch.source
    with transaction.atomic():
        record(
            "inventory.scan_started",
            f"inventory.ingestbatch:{batch.pk}",
            actor=batch.created_by_id,
            details={"source_id": source.pk},
        )
    try:
        cancelled = _scan_files(batch, source, progress)
        if cancelled:
            # The files registered before the cancel count; QA waits for a full scan.
            _refresh_source_totals(source)
        else:
            run_qa(batch.pk)
    except Exception as exc:
        message = str(exc) if isinstance(exc, ScanError) else f"scan failed ({type(exc).__name__})"
        # Type only: exception text (OSError's filename, say) can carry a patient's name.
        logger.error("scan of batch %s failed: %s", batch.pk, type(exc).__name__)
        with transaction.atomic():
            failed = IngestBatch.objects.filter(
                pk=batch.pk, status=IngestBatch.Status.RUNNING
            ).update(
                status=IngestBatch.Status.FAILED, error=message[:300], finished_at=timezone.now()
            )
            if failed:
                record(
                    "inventory.scan_failed",
                    f"inventory.ingestbatch:{batch.pk}",
                    actor=batch.created_by_id,
                    details={"source_id": source.pk, "error": message[:200]},
                )
        batch.refresh_from_db()
        return batch
    _finish(batch, source)
    batch.refresh_from_db()
    return batch


def _scan_files(batch: IngestBatch, source: DataSource, progress: ProgressCallback | None) -> bool:
    """Register the files; True when the batch was cancelled part way."""
    root = raw_root_of(source)
    walk = _walk(root)
    total = len(walk.files) + walk.refused
    running = IngestBatch.objects.filter(pk=batch.pk, status=IngestBatch.Status.RUNNING)
    if not running.update(files_total=total, files_done=walk.refused, files_refused=walk.refused):
        return True
    if progress:
        progress(walk.refused, total)
    wfdb_files = _wfdb_signal_files(walk.files)
    key = uid_key()
    done = walk.refused
    for path, rel in walk.files:
        # Between files: a cancel request flipped the status, so stop before touching this one.
        if not running.exists():
            return True
        skipped = refused = 0
        size = 0
        try:
            digest, size = _hash_nofollow(path)
        except OSError:
            refused = 1
        else:
            if RawFile.objects.filter(source=source, relpath=rel, sha256=digest).exists():
                skipped = 1
            else:
                try:
                    found = detect.detect(path, wfdb_files=wfdb_files)
                except Exception as exc:
                    # A parser bug on one hostile file: register it as unreadable, go on.
                    logger.warning("detection crashed on a file: %s", type(exc).__name__)
                    found = detect.Detected(kind=detect.UNREADABLE)
                RawFile.objects.create(
                    batch=batch,
                    source=source,
                    relpath=rel,
                    sha256=digest,
                    size=size,
                    kind=found.kind,
                    modality=found.modality,
                    study_key=detect.keyed_hash(key, "study", found.study_uid),
                    series_key=detect.keyed_hash(key, "series", found.series_uid),
                    instance_number=found.instance_number,
                )
        done += 1
        moved = running.update(
            files_done=F("files_done") + 1,
            files_skipped=F("files_skipped") + skipped,
            files_refused=F("files_refused") + refused,
            bytes_total=F("bytes_total") + (0 if skipped or refused else size),
        )
        if progress:
            progress(done, total)
        if not moved:
            return True
    return False


def _refresh_source_totals(source: DataSource) -> None:
    """Files and bytes of the source: the latest registered version of each path."""
    latest = RawFile.objects.filter(source=source).values("relpath").annotate(last=Max("id"))
    totals = RawFile.objects.filter(id__in=latest.values("last")).aggregate(
        count=Count("id"), size=Sum("size")
    )
    DataSource.objects.filter(pk=source.pk).update(
        scanned_count=totals["count"] or 0,
        scanned_bytes=totals["size"] or 0,
        last_scanned_at=timezone.now(),
    )


def _finish(batch: IngestBatch, source: DataSource) -> None:
    with transaction.atomic():
        done = IngestBatch.objects.filter(pk=batch.pk, status=IngestBatch.Status.RUNNING).update(
            status=IngestBatch.Status.DONE, finished_at=timezone.now()
        )
        if not done:
            return
        _refresh_source_totals(source)
        batch.refresh_from_db()
        record(
            "inventory.scan_finished",
            f"inventory.ingestbatch:{batch.pk}",
            actor=batch.created_by_id,
            details={
                "source_id": source.pk,
                "files_total": batch.files_total,
                "files_new": batch.files.count(),
                "files_skipped": batch.files_skipped,
                "files_refused": batch.files_refused,
                "bytes_new": batch.bytes_total,
            },
        )


# --- data QA ---------------------------------------------------------------------------------


def run_qa(batch_id: int, *, acting_user: User | int | None = None) -> dict[str, int]:
    """Run every QA check on the batch's files and store the latest result per check.

    Series completeness looks at the whole source: a series split across batches is judged
    on all its registered instances, and every file of a touched series gets the verdict.
    """
    batch = IngestBatch.objects.select_related("source").get(pk=batch_id)
    source = batch.source
    try:
        root: Path | None = raw_root_of(source)
    except ScanError:
        root = None
    now = timezone.now()
    counts = {"files": 0, "failed": 0}
    files = list(batch.files.all())
    for raw in files:
        outcomes: list[qa.Outcome]
        try:
            if root is None:
                raise ScanError("raw root unavailable")
            outcomes = qa.check_file(safe_path(root, raw.relpath), raw.kind, raw.modality)
        except (ScanError, OSError):
            outcomes = [qa.Outcome.fail(qa.FORMAT_KNOWN, qa.ERROR, "file is no longer readable")]
        except Exception as exc:
            # One hostile file must not stop the batch: it fails, by type, and QA goes on.
            logger.warning("QA of raw file %s crashed: %s", raw.pk, type(exc).__name__)
            outcomes = [
                qa.Outcome.fail(qa.FORMAT_KNOWN, qa.ERROR, f"checks crashed ({type(exc).__name__})")
            ]
        _store_outcomes(raw, outcomes, now)
        counts["files"] += 1
        counts["failed"] += sum(o.result == qa.FAIL for o in outcomes)
    series = {f.series_key for f in files if f.kind == RawFile.Kind.DICOM and f.series_key}
    for series_key in sorted(series):
        members = list(
            RawFile.objects.filter(source=source, series_key=series_key).exclude(
                instance_number=None
            )
        )
        numbers = [m.instance_number for m in members if m.instance_number is not None]
        outcome = qa.series_outcome(qa.series_gaps(numbers), len(set(numbers)))
        for member in members:
            _store_outcomes(member, [outcome], now)
        counts["failed"] += outcome.result == qa.FAIL
    with transaction.atomic():
        record(
            "inventory.qa_run",
            f"inventory.ingestbatch:{batch.pk}",
            actor=acting_user if acting_user is not None else batch.created_by_id,
            details={"source_id": source.pk, **counts},
        )
    return counts


def _store_outcomes(raw: RawFile, outcomes: list[qa.Outcome], now: Any) -> None:
    with transaction.atomic():
        QACheckResult.objects.filter(
            raw_file=raw, check_type__in=[o.check for o in outcomes]
        ).delete()
        QACheckResult.objects.bulk_create(
            QACheckResult(
                raw_file=raw,
                check_type=o.check,
                result=o.result,
                severity=o.severity,
                notes=o.notes[:300],
                checked_at=now,
            )
            for o in outcomes
        )


def request_qa(batch: IngestBatch, *, acting_user: User | int | None) -> None:
    """Queue a QA re-run for a finished batch (after thresholds changed, say)."""
    from apps.inventory import tasks

    with transaction.atomic():
        record(
            "inventory.qa_requested",
            f"inventory.ingestbatch:{batch.pk}",
            actor=acting_user,
            details={"source_id": batch.source_id},
        )
        transaction.on_commit(lambda: tasks.run_qa.delay(batch.pk, _actor_id(acting_user)))


_REASON_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def exclude_file(raw_file: RawFile, *, reason: str, acting_user: User | int | None) -> bool:
    """Keep a raw file out of every release (de-id runs and datasets skip excluded files).

    The reason is stored on the row; the audit event holds only its hash (free text can
    carry PHI). Returns False when the file was already excluded.
    """
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError({"reason": _("a reason is required")})
    if len(reason) > 200 or _REASON_CONTROL.search(reason):
        raise ValidationError({"reason": _("at most 200 characters on one line")})
    with transaction.atomic():
        changed = RawFile.objects.filter(pk=raw_file.pk, excluded=False).update(
            excluded=True, excluded_reason=reason
        )
        if changed:
            record(
                "inventory.file_excluded",
                f"inventory.rawfile:{raw_file.pk}",
                actor=acting_user,
                pre={"excluded": False},
                post={"excluded": True, "reason": reason},
                details={"batch_id": raw_file.batch_id, "source_id": raw_file.source_id},
            )
    return bool(changed)


def include_file(raw_file: RawFile, *, acting_user: User | int | None) -> bool:
    """Undo :func:`exclude_file`."""
    with transaction.atomic():
        changed = RawFile.objects.filter(pk=raw_file.pk, excluded=True).update(
            excluded=False, excluded_reason=""
        )
        if changed:
            record(
                "inventory.file_included",
                f"inventory.rawfile:{raw_file.pk}",
                actor=acting_user,
                pre={"excluded": True},
                post={"excluded": False},
                details={"batch_id": raw_file.batch_id, "source_id": raw_file.source_id},
            )
    return bool(changed)


# --- reads -----------------------------------------------------------------------------------


def qa_summary(files: Any) -> dict[str, int]:
    """Counts of failing results by severity for a RawFile queryset."""
    rows = (
        QACheckResult.objects.filter(raw_file__in=files, result=QAResult.FAIL)
        .values("severity")
        .annotate(n=Count("id"))
    )
    return {row["severity"]: row["n"] for row in rows}


def dashboard_data() -> dict[str, Any]:
    """Volumes by type, source and consent status, for the dashboard's charts.

    Planned volume is the CSV's estimate (avg_size_MB × estimated_count); measured volume is
    what the scanner registered.
    """
    sources = list(
        DataSource.objects.order_by("source").values(
            "source",
            "type",
            "consent_status",
            "avg_size_mb",
            "estimated_count",
            "scanned_count",
            "scanned_bytes",
        )
    )
    kinds = dict(DataKind.choices)
    consents = dict(ConsentStatus.choices)

    def planned_mb(row: dict[str, Any]) -> float:
        return float(row["avg_size_mb"] * row["estimated_count"])

    def group(key: str, labels: dict[str, Any]) -> dict[str, list[Any]]:
        totals: dict[str, list[float]] = {}
        for row in sources:
            entry = totals.setdefault(row[key], [0.0, 0.0, 0])
            entry[0] += planned_mb(row)
            entry[1] += row["scanned_bytes"] / 1e6
            entry[2] += row["estimated_count"]
        names = sorted(totals)
        return {
            "labels": [str(labels.get(n, n)) for n in names],
            "planned_mb": [round(totals[n][0], 3) for n in names],
            "scanned_mb": [round(totals[n][1], 3) for n in names],
            "estimated_count": [int(totals[n][2]) for n in names],
        }

    return {
        "by_type": group("type", kinds),
        "by_consent": group("consent_status", consents),
        "by_source": {
            "labels": [r["source"] for r in sources],
            "planned_mb": [round(planned_mb(r), 3) for r in sources],
            "scanned_mb": [round(r["scanned_bytes"] / 1e6, 3) for r in sources],
        },
        "files_by_kind": dict(
            RawFile.objects.values_list("kind").annotate(n=Count("id")).order_by("kind")
        ),
        "failing_files": RawFile.objects.filter(Q(qa_results__result=QAResult.FAIL))
        .distinct()
        .count(),
    }


# --- overview ----------------------------------------------------------------------------------


def overview() -> list[tuple[str, Any]]:
    """The data map's card on the overview page."""
    return [
        (_("data sources"), DataSource.objects.count()),
        (_("raw files scanned"), RawFile.objects.count()),
    ]


def volume_overview() -> list[tuple[str, Any]]:
    """The data volumes' card: what the scanned files weigh."""
    from django.template.defaultfilters import filesizeformat

    total = RawFile.objects.aggregate(n=Sum("size"))["n"] or 0
    return [(_("scanned"), filesizeformat(total))]
