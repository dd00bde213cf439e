"""De-identification runs: the only write path for runs, per-file results and reveals.

A run walks its ingest batch one raw file at a time and stores exactly one
:class:`~apps.deid.models.DeidFileResult` per file, so ``files_total == ok + quarantined +
error`` once it is done. Nothing here ever logs, audits or raises a value read from a raw file:
messages carry run ids, raw-file ids, hashes, counts and the engine's PHI-free reason codes.

Lifecycle (each transition a conditional UPDATE plus an audit event in one transaction)::

    pending --claim--> running --all files--> done
       |                  |  \\--cancel flag seen between files--> cancelled
       \\--cancel--> cancelled        \\--unexpected exception--> failed
    cancelled/failed --resume--> pending          done --retry_errors--> pending

Resumable: a worker touches ``heartbeat_at`` after every file; a RUNNING run whose heartbeat
is stale (the worker was killed) or cleared (between two chunks) is claimed by the next
worker, which skips every file that already has a row. Idempotent: a file whose result
exists in this run is skipped; a file with the same relative path, input hash, profile
fingerprint and project key in an earlier run is linked from that run's output instead of
being processed again; an output already on disk with the expected hash is not rewritten.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import re
import shutil
import traceback
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, MutableMapping
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Count, F, Q, Sum
from django.db.models.deletion import ProtectedError
from django.utils import timezone
from django.utils.translation import gettext as _

from apps.audit.services import record
from apps.core.access import roles_of
from apps.core.roles import PRIVACY
from apps.deid import config, engine_procs
from apps.deid.engine import (
    OK,
    QUARANTINED,
    DeidEngine,
    DeidProfile,
    FileResult,
    PatientContext,
    PseudonymVault,
    VaultError,
)
from apps.deid.models import DeidFileResult, DeidRun, ProfileVersion, RevealLog, VaultRecord
from apps.inventory.models import IngestBatch, RawFile

if TYPE_CHECKING:
    from apps.accounts.models import User

logger = logging.getLogger(__name__)

# A worker that has not touched its run for this long is presumed dead (killed, OOM, node
# lost); the next task may take the run over. Far above the slowest single file (OCR on a
# large multi-frame image takes seconds, not minutes).
STALE_AFTER = timedelta(minutes=10)
REVEAL_REASON_MIN_LENGTH = 15
_PSEUDONYM_RE = re.compile(r"^[A-Z0-9]{4,80}$")
_STUDY_CONTEXT_CACHE = 256
_FETCH = 200  # raw files loaded per query while walking a batch

Status = DeidFileResult.Status
RunStatus = DeidRun.Status
ProgressCallback = Callable[[str], None]
CONFIGURED_OCR = object()  # "use config.ocr_mode()"


class DeidServiceError(Exception):
    """A request the current state does not allow (PHI-free message, shown to the user)."""


@dataclass
class RunOutcome:
    """What one :func:`process_run` call did."""

    run_id: int
    claimed: bool
    status: str
    processed: int = 0
    more: bool = False  # the chunk limit was reached with files left


# --- keys, vault, engine -----------------------------------------------------------------------


class DatabaseVaultStore(MutableMapping[str, bytes]):
    """The engine vault's storage: one :class:`VaultRecord` per slot, first write wins.

    Records are never overwritten or deleted through this mapping: a pseudonym maps to one
    original forever (re-identification must not depend on which run wrote last).
    """

    def __getitem__(self, slot: str) -> bytes:
        blob = VaultRecord.objects.filter(slot=slot).values_list("blob", flat=True).first()
        if blob is None:
            raise KeyError(slot)
        return bytes(blob)

    def __setitem__(self, slot: str, blob: bytes) -> None:
        try:
            with transaction.atomic():
                VaultRecord.objects.get_or_create(slot=slot, defaults={"blob": bytes(blob)})
        except IntegrityError:  # a concurrent worker stored the same slot first
            pass

    def __delitem__(self, slot: str) -> None:
        raise TypeError("vault records are never deleted through the engine")

    def __contains__(self, slot: object) -> bool:
        return VaultRecord.objects.filter(slot=slot).exists()

    def __iter__(self) -> Iterator[str]:
        return iter(VaultRecord.objects.order_by("pk").values_list("slot", flat=True))

    def __len__(self) -> int:
        return VaultRecord.objects.count()


def make_vault() -> PseudonymVault:
    """The project's pseudonym vault over the database."""
    return PseudonymVault(config.vault_key(), store=DatabaseVaultStore())


def make_engine(profile: DeidProfile, *, ocr: Any = CONFIGURED_OCR) -> DeidEngine:
    """An engine with the project key, the database vault and the configured OCR."""
    return DeidEngine(
        config.project_key(),
        profile,
        vault=make_vault(),
        ocr=config.ocr_mode() if ocr is CONFIGURED_OCR else ocr,
    )


def profile_from_data(data: dict[str, Any] | None) -> DeidProfile:
    """A profile from its JSON form (``DeidProfile.to_dict``); empty means the default."""
    if not data:
        return DeidProfile()
    if not isinstance(data, dict):
        raise DeidServiceError(_("a profile must be a JSON object"))
    try:
        return DeidProfile.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise DeidServiceError(_("invalid profile: %(err)s") % {"err": exc}) from None


def _run_state(run: DeidRun) -> dict[str, Any]:
    return {
        "id": run.pk,
        "status": run.status,
        "batch_id": run.batch_id,
        "profile": run.profile_fingerprint,
        "cancel_requested": run.cancel_requested,
    }


def _enqueue(run_id: int) -> None:
    from apps.deid import tasks

    transaction.on_commit(lambda: tasks.process_run.delay(run_id))


# --- profiles as versioned data ----------------------------------------------------------------


def save_profile(
    profile: DeidProfile, *, name: str, acting_user: User | None, note: str = ""
) -> ProfileVersion:
    """Save ``profile`` as the next version of ``name`` (audited ``deid.profile_saved``).

    The stored version number is assigned here (the latest + 1) and written into the profile
    itself, so its fingerprint names it. Saving settings identical to the latest version
    returns that version unchanged.
    """
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,59}", name or ""):
        raise DeidServiceError(_("a profile name is 1-60 lowercase letters, digits, '-' or '_'"))
    with transaction.atomic():
        latest = (
            ProfileVersion.objects.select_for_update()
            .filter(name=name)
            .order_by("-version")
            .first()
        )
        if latest is not None:
            previous = profile_from_data(latest.data)
            candidate = replace(profile, name=name, version=latest.version)
            if candidate == previous:
                return latest
        version = (latest.version + 1) if latest else 1
        saved = replace(profile, name=name, version=version)
        row = ProfileVersion.objects.create(
            name=name,
            version=version,
            data=saved.to_dict(),
            fingerprint=saved.fingerprint(),
            note=note[:300],
            created_by_id=getattr(acting_user, "pk", None),
        )
        changes = previous.diff(replace(saved, version=previous.version)) if latest else []
        record(
            "deid.profile_saved",
            f"deid.profileversion:{row.pk}",
            actor=acting_user,
            post=row.data,
            details={
                "name": name,
                "version": version,
                "fingerprint": row.fingerprint,
                "previous_version": latest.version if latest else None,
                "settings_changed": len(changes),
            },
        )
    return row


def profile_changes(version: ProfileVersion) -> list[str] | None:
    """Readable changes from the previous version of the same profile (None for the first)."""
    previous = (
        ProfileVersion.objects.filter(name=version.name, version__lt=version.version)
        .order_by("-version")
        .first()
    )
    if previous is None:
        return None
    old, new = profile_from_data(previous.data), profile_from_data(version.data)
    return [c for c in old.diff(new) if not c.startswith("version:")]


# --- run lifecycle -----------------------------------------------------------------------------


def start_run(
    batch: IngestBatch,
    *,
    profile: DeidProfile | ProfileVersion | None = None,
    acting_user: User | None,
    enqueue: bool = True,
) -> DeidRun:
    """Create a pending run of ``profile`` (a saved :class:`ProfileVersion`, an ad-hoc
    :class:`DeidProfile`, or None for the default profile) over ``batch``.

    Audited as ``deid.run_started``. With ``enqueue`` the Celery task is sent after commit;
    the CLI passes ``enqueue=False`` and processes in-process.
    """
    if batch.status == IngestBatch.Status.RUNNING:
        raise DeidServiceError(_("ingest batch %(id)s is still being scanned") % {"id": batch.pk})
    version = profile if isinstance(profile, ProfileVersion) else None
    if version is not None:
        profile = profile_from_data(version.data)
    profile = profile or DeidProfile()
    key = config.project_key()
    with transaction.atomic():
        run = DeidRun.objects.create(
            batch=batch,
            profile_version=version,
            profile=profile.to_dict(),
            profile_fingerprint=profile.fingerprint(),
            key_fingerprint=key.fingerprint(),
            files_total=batch.files.count(),
            created_by_id=getattr(acting_user, "pk", None),
        )
        # One folder per run: two runs never write over each other's released files.
        run.output_root = str(config.output_base(batch.source.deid_root) / f"run-{run.pk}")
        run.save(update_fields=["output_root", "updated"])
        record(
            "deid.run_started",
            f"deid.deidrun:{run.pk}",
            actor=acting_user,
            post=_run_state(run),
            details={
                "batch_id": batch.pk,
                "files_total": run.files_total,
                "profile": run.profile_fingerprint,
            },
        )
        if enqueue:
            _enqueue(run.pk)
    return run


def cancel_run(run: DeidRun, *, acting_user: User | None) -> DeidRun:
    """Stop a run. A pending run, or a running one with no live worker, is cancelled at once;
    a live worker sees the request between two files and stops there."""
    now = timezone.now()
    live = Q(heartbeat_at__gte=now - STALE_AFTER)
    with transaction.atomic():
        pre = _run_state(run)
        stopped = (
            DeidRun.objects.filter(pk=run.pk)
            .filter(Q(status=RunStatus.PENDING) | (Q(status=RunStatus.RUNNING) & ~live))
            .update(status=RunStatus.CANCELLED, finished_at=now, heartbeat_at=None, updated=now)
        )
        if stopped:
            action = "deid.run_cancelled"
        elif (
            DeidRun.objects.filter(pk=run.pk, status=RunStatus.RUNNING)
            .filter(live)
            .update(cancel_requested=True, updated=now)
        ):
            action = "deid.run_cancel_requested"
        else:
            raise DeidServiceError(_("run %(id)s is not pending or running") % {"id": run.pk})
        run.refresh_from_db()
        record(action, f"deid.deidrun:{run.pk}", actor=acting_user, pre=pre, post=_run_state(run))
    return run


def resume_run(run: DeidRun, *, acting_user: User | None, enqueue: bool = True) -> DeidRun:
    """Continue a cancelled or failed run, or a running one whose worker died: files that
    already have a result are skipped."""
    now = timezone.now()
    with transaction.atomic():
        pre = _run_state(run)
        changed = DeidRun.objects.filter(
            pk=run.pk, status__in=[RunStatus.CANCELLED, RunStatus.FAILED]
        ).update(
            status=RunStatus.PENDING,
            cancel_requested=False,
            error="",
            finished_at=None,
            updated=now,
        ) or DeidRun.objects.filter(pk=run.pk, status=RunStatus.RUNNING).filter(
            Q(heartbeat_at__isnull=True) | Q(heartbeat_at__lt=now - STALE_AFTER)
        ).update(heartbeat_at=None, updated=now)
        if not changed:
            raise DeidServiceError(
                _("run %(id)s cannot be resumed in its current state") % {"id": run.pk}
            )
        run.refresh_from_db()
        record(
            "deid.run_resumed",
            f"deid.deidrun:{run.pk}",
            actor=acting_user,
            pre=pre,
            post=_run_state(run),
            details={"files_done": run.files_done, "files_total": run.files_total},
        )
        if enqueue:
            _enqueue(run.pk)
    return run


def retry_errors(run: DeidRun, *, acting_user: User | None, enqueue: bool = True) -> int:
    """Process the run's ``error`` files again (e.g. after a missing raw file was restored).

    Their rows are removed and the run goes back to pending; the worker fills the gaps.
    Quarantined files are not retried: their input is the problem, not the run. Returns how
    many files will be retried.
    """
    finished = [RunStatus.DONE, RunStatus.CANCELLED, RunStatus.FAILED]
    now = timezone.now()
    with transaction.atomic():
        locked = DeidRun.objects.select_for_update().filter(pk=run.pk, status__in=finished)
        if not locked.exists():
            raise DeidServiceError(
                _("run %(id)s is still active; retry when it has stopped") % {"id": run.pk}
            )
        if run.released_at is not None:
            raise DeidServiceError(
                _("run %(id)s is released; start a new run instead") % {"id": run.pk}
            )
        pre = _run_state(run)
        errors = DeidFileResult.objects.filter(run=run, status=Status.ERROR)
        count = errors.count()
        if not count:
            raise DeidServiceError(_("run %(id)s has no files in error") % {"id": run.pk})
        try:
            errors.delete()
        except ProtectedError:
            raise DeidServiceError(
                _("run %(id)s: results in error are referenced elsewhere") % {"id": run.pk}
            ) from None
        DeidRun.objects.filter(pk=run.pk).update(
            status=RunStatus.PENDING,
            files_done=F("files_done") - count,
            files_error=F("files_error") - count,
            cancel_requested=False,
            error="",
            finished_at=None,
            updated=now,
        )
        run.refresh_from_db()
        record(
            "deid.run_retry_errors",
            f"deid.deidrun:{run.pk}",
            actor=acting_user,
            pre=pre,
            post=_run_state(run),
            details={"files_retried": count},
        )
        if enqueue:
            _enqueue(run.pk)
    return count


# --- processing ----------------------------------------------------------------------------------


def _claim(run_id: int) -> str | None:
    """Take the run for this worker; returns how ("started"/"resumed"/"continued") or None."""
    now = timezone.now()
    with transaction.atomic():
        if DeidRun.objects.filter(pk=run_id, status=RunStatus.PENDING).update(
            status=RunStatus.RUNNING, heartbeat_at=now, updated=now
        ):
            DeidRun.objects.filter(pk=run_id, started_at__isnull=True).update(started_at=now)
            record(
                "deid.run_running",
                f"deid.deidrun:{run_id}",
                actor=None,
                details={"claimed": "pending"},
            )
            return "started"
        if DeidRun.objects.filter(
            pk=run_id, status=RunStatus.RUNNING, heartbeat_at__lt=now - STALE_AFTER
        ).update(heartbeat_at=now, updated=now):
            # The previous worker died mid-run; say so in the trail.
            record(
                "deid.run_taken_over",
                f"deid.deidrun:{run_id}",
                actor=None,
                details={"claimed": "stale"},
            )
            return "resumed"
        # Cleared between two chunks of the same run (see tasks.process_run).
        if DeidRun.objects.filter(
            pk=run_id, status=RunStatus.RUNNING, heartbeat_at__isnull=True
        ).update(heartbeat_at=now, updated=now):
            return "continued"
    return None


def process_run(
    run_id: int,
    *,
    limit: int | None = None,
    progress: ProgressCallback | None = None,
    ocr: Any = CONFIGURED_OCR,
    workers: int = 1,
) -> RunOutcome:
    """Claim the run and de-identify every raw file of its batch that has no result yet.

    Never stops on a bad file (it gets a quarantine or error row); checks for a cancel
    request between files; with ``limit`` stops after that many files, clears the heartbeat
    so the next chunk can claim at once, and reports ``more``. ``progress`` is called with
    each file's status. ``ocr`` overrides the configured OCR (tests pass None). ``workers``
    above 1 runs the engine in that many processes (CLI only; reads, writes and rows stay in
    this process).
    """
    how = _claim(run_id)
    if how is None:
        status = DeidRun.objects.filter(pk=run_id).values_list("status", flat=True).first()
        return RunOutcome(run_id, claimed=False, status=status or "missing")
    try:
        return _walk(
            run_id,
            limit=limit,
            progress=progress,
            ocr=ocr,
            workers=workers,
            took_over=how == "resumed",
        )
    except Exception as exc:
        # Where, not the message: a database or library message can quote a value.
        frames = " <- ".join(
            f"{f.filename}:{f.lineno} in {f.name}"
            for f in reversed(traceback.extract_tb(exc.__traceback__))
        )
        logger.error("deid run %s failed: %s at %s", run_id, type(exc).__name__, frames)
        _fail(run_id, type(exc).__name__)
        raise
    except KeyboardInterrupt:
        # Ctrl-C in the CLI: let go of the run so a cancel or resume takes effect at once.
        DeidRun.objects.filter(pk=run_id, status=RunStatus.RUNNING).update(heartbeat_at=None)
        raise


def _fail(run_id: int, error: str) -> None:
    now = timezone.now()
    with transaction.atomic():
        if DeidRun.objects.filter(pk=run_id, status=RunStatus.RUNNING).update(
            status=RunStatus.FAILED, error=error[:300], finished_at=now, heartbeat_at=None
        ):
            record(
                "deid.run_failed",
                f"deid.deidrun:{run_id}",
                actor=None,
                details={"error": error[:200]},
            )


def _walk(
    run_id: int,
    *,
    limit: int | None,
    progress: ProgressCallback | None,
    ocr: Any,
    workers: int = 1,
    took_over: bool = False,
) -> RunOutcome:
    run = DeidRun.objects.select_related("batch__source").get(pk=run_id)
    if took_over:
        _remove_stale_temp_files(Path(run.output_root))
        _settle_suspect(run)
    # The batch may have grown since the run started (a late scan); count what is there now.
    total = RawFile.objects.filter(batch_id=run.batch_id).count()
    if total != run.files_total:
        DeidRun.objects.filter(pk=run_id).update(files_total=total)
    profile = profile_from_data(run.profile)
    if ocr is CONFIGURED_OCR:
        ocr = config.ocr_mode()
    mode = "auto" if ocr == "auto" else "off" if ocr is None else "custom"
    if run.ocr_mode and run.ocr_mode != mode:
        mode = "mixed"  # chunks ran with different OCR: never reuse this run's outputs
    if mode != run.ocr_mode:
        DeidRun.objects.filter(pk=run_id).update(ocr_mode=mode)
        run.ocr_mode = mode
    worker = _Worker(run, make_engine(profile, ocr=ocr), profile)
    # Primary keys only: a million ints is a few MB, and no cursor stays open across the
    # per-file transactions. Files of one study are adjacent so their context is reused.
    todo = list(
        RawFile.objects.filter(batch_id=run.batch_id)
        .exclude(deid_results__run_id=run_id)
        .order_by("study_key", "relpath", "pk")
        .values_list("pk", flat=True)
    )
    pool = _EnginePool(workers, profile, ocr) if workers > 1 and todo else None
    pending: deque[tuple[Future[Any], RawFile, dict[str, Any], PatientContext | None]] = deque()
    processed = 0

    def settle(keep: int) -> None:
        # Store finished engine jobs in submission order until at most ``keep`` are in flight.
        nonlocal processed
        while len(pending) > keep:
            future, raw, row, ctx = pending.popleft()
            result = pool.collect(future, raw) if pool else None
            status = worker.complete(raw, row, result, ctx) if result else None
            processed += 1
            if progress is not None and status:
                progress(status)

    try:
        submitted = 0
        for start in range(0, len(todo), _FETCH):
            chunk = todo[start : start + _FETCH]
            files = RawFile.objects.in_bulk(chunk)
            for pk in chunk:
                if limit is not None and submitted >= limit:
                    settle(0)
                    DeidRun.objects.filter(pk=run_id, status=RunStatus.RUNNING).update(
                        heartbeat_at=None
                    )
                    return RunOutcome(run_id, True, RunStatus.RUNNING, processed, more=True)
                if DeidRun.objects.filter(pk=run_id, cancel_requested=True).exists():
                    settle(0)
                    _finish(run_id, RunStatus.CANCELLED)
                    return RunOutcome(run_id, True, RunStatus.CANCELLED, processed)
                raw = files.get(pk)
                if raw is None:  # removed from the inventory since the list was taken
                    continue
                submitted += 1
                if pool is None:
                    DeidRun.objects.filter(pk=run_id).update(
                        inflight_raw_file_id=raw.pk, heartbeat_at=timezone.now()
                    )
                    status = worker.process(raw)
                    processed += 1
                    if progress is not None and status:
                        progress(status)
                    continue
                row, data, ctx = worker.prepare(raw)
                if data is None:
                    settle(0)  # keep rows in order and counters exact
                    status = worker._store(raw, row)
                    processed += 1
                    if progress is not None and status:
                        progress(status)
                    continue
                pending.append((pool.submit(data, raw, ctx), raw, row, ctx))
                settle(2 * workers)
        settle(0)
    finally:
        if pool is not None:
            pool.close()
    status = _finish(run_id, RunStatus.DONE)
    return RunOutcome(run_id, True, status, processed)


# --- engine processes (deid_run --workers N) ------------------------------------------------------


class _EnginePool:
    """The pure engine in ``workers`` spawned processes; the parent reads, writes and stores.

    Spawned (not forked) so no database connection or lock is inherited. Celery's prefork
    workers cannot have children, so only the CLI uses this.
    """

    def __init__(self, workers: int, profile: DeidProfile, ocr: Any) -> None:
        if ocr not in ("auto", None):
            raise DeidServiceError(_("engine processes need OCR 'auto' or off"))
        self.workers = workers
        self.args = (config.project_key().secret, config.vault_key(), profile.to_dict(), ocr)
        self.vault = DatabaseVaultStore()
        self.executor = self._start()

    def _start(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=engine_procs.init,
            initargs=self.args,
        )

    def submit(self, data: bytes, raw: RawFile, ctx: PatientContext | None) -> Future[Any]:
        try:
            return self.executor.submit(
                engine_procs.process, data, PurePosixPath(raw.relpath).name, ctx
            )
        except BrokenProcessPool:
            self.executor = self._start()
            return self.executor.submit(
                engine_procs.process, data, PurePosixPath(raw.relpath).name, ctx
            )

    def collect(self, future: Future[Any], raw: RawFile) -> FileResult:
        """The child's result, its vault records persisted; a crashed child (killed, out of
        memory) gives an error result for this file and a fresh pool for the rest."""
        try:
            result, records = future.result()
        except BrokenProcessPool:
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = self._start()
            return FileResult(kind=raw.kind, status="error", reason="engine_process_died")
        except Exception as exc:  # unpicklable result, or similar: this file only
            return FileResult(
                kind=raw.kind, status="error", reason=f"engine_process_error: {type(exc).__name__}"
            )
        for slot, blob in records.items():
            if slot not in self.vault:
                self.vault[slot] = blob
        return result

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


def _settle_suspect(run: DeidRun) -> None:
    """After a takeover: the file the dead worker held is retried once; if a worker already
    died on it before, it gets an error row (``retry errors`` tries it again) so one poison
    file cannot stall the run."""
    held = run.inflight_raw_file_id
    if held is None or DeidFileResult.objects.filter(run=run, raw_file_id=held).exists():
        DeidRun.objects.filter(pk=run.pk).update(inflight_raw_file_id=None)
        return
    if held != run.suspect_raw_file_id:
        DeidRun.objects.filter(pk=run.pk).update(suspect_raw_file_id=held)
        return
    raw = RawFile.objects.filter(pk=held).first()
    if raw is not None:
        _Worker.store_row(
            run,
            raw,
            {
                "status": Status.ERROR,
                "reason": "worker_died_on_file: the worker stopped twice on this file",
                "kind": raw.kind,
                "modality": (raw.modality or "")[:16],
                "input_sha256": raw.sha256,
                "study_key": raw.study_key,
                "profile_fingerprint": run.profile_fingerprint,
            },
        )
    DeidRun.objects.filter(pk=run.pk).update(suspect_raw_file_id=None)


def _remove_stale_temp_files(root: Path) -> None:
    """A killed worker may leave a half-written ``.<name>.<hex>.tmp``; it was never renamed
    into place (so no result points at it), but it must not linger in the output tier."""
    if not root.is_dir():
        return
    for tmp in root.rglob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def _finish(run_id: int, status: str) -> str:
    """Close the run with counters recomputed from the rows (the rows are the truth)."""
    now = timezone.now()
    counts = dict(
        DeidFileResult.objects.filter(run_id=run_id)
        .values_list("status")
        .annotate(n=Count("pk"))
        .values_list("status", "n")
    )
    ok, quarantined, error = (
        counts.get(s, 0) for s in (Status.OK, Status.QUARANTINED, Status.ERROR)
    )
    totals = _totals(DeidFileResult.objects.filter(run_id=run_id))
    flagged = totals["flagged"]
    with transaction.atomic():
        changed = DeidRun.objects.filter(pk=run_id, status=RunStatus.RUNNING).update(
            status=status,
            summary=totals,
            files_done=ok + quarantined + error,
            files_ok=ok,
            files_quarantined=quarantined,
            files_error=error,
            finished_at=now,
            heartbeat_at=None,
            cancel_requested=False,
            updated=now,
        )
        if not changed:
            return DeidRun.objects.get(pk=run_id).status
        run = DeidRun.objects.get(pk=run_id)
        record(
            "deid.run_finished" if status == RunStatus.DONE else "deid.run_cancelled",
            f"deid.deidrun:{run_id}",
            actor=None,
            post=_run_state(run),
            details={
                "files_total": run.files_total,
                "files_ok": ok,
                "files_quarantined": quarantined,
                "files_error": error,
                "files_flagged": flagged,
                "profile": run.profile_fingerprint,
            },
        )
    logger.info(
        "deid run %s %s: %s ok, %s quarantined, %s error", run_id, status, ok, quarantined, error
    )
    return status


# --- one file ------------------------------------------------------------------------------------


class _OutputError(Exception):
    """Writing or verifying an output failed; ``str()`` is a PHI-free reason code."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write(path: Path, data: bytes) -> tuple[str, bool]:
    """Write ``data`` to ``path`` via temp file, fsync and rename, then verify by re-reading.

    Returns ``(sha256, written)``; a file already there with the same hash is left alone
    (``written`` False), so re-runs never rewrite released outputs.
    """
    expected = hashlib.sha256(data).hexdigest()
    if path.is_file() and sha256_file(path) == expected:
        return expected, False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "xb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself must survive a power cut
        finally:
            os.close(dir_fd)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _OutputError(f"output_write_failed: {type(exc).__name__}") from None
    if sha256_file(path) != expected:
        path.unlink(missing_ok=True)
        raise _OutputError("output_hash_mismatch: written bytes differ from the engine output")
    return expected, True


def _link_or_copy(src: Path, dst: Path, expected: str) -> bool:
    """Reuse an earlier run's verified output; False when it is gone or changed."""
    try:
        if not src.is_file() or sha256_file(src) != expected:
            return False
        if dst.is_file() and sha256_file(dst) == expected:
            return True
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.parent / f".{dst.name}.{uuid.uuid4().hex}.tmp"
        try:
            os.link(src, tmp)  # outputs are replaced, never modified, so sharing is safe
        except OSError:
            shutil.copyfile(src, tmp)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, dst)
        return sha256_file(dst) == expected
    except OSError:
        return False


def _inside(root: str, path: str) -> bool:
    return os.path.commonpath([root, path]) == root


def read_raw(raw_root: str, relpath: str) -> tuple[bytes | None, str, str]:
    """The raw file's bytes, or ``(None, status, reason)`` when it may not or cannot be read.

    ``relpath`` must stay inside the raw root after every symlink is resolved: an absolute
    path, ``..`` or a link pointing out of the root is quarantined, never followed.
    """
    if not raw_root:
        return None, Status.ERROR, "raw_root_not_set: the data source has no raw root"
    rel = PurePosixPath(relpath)
    if not relpath or rel.is_absolute() or ".." in rel.parts or "\x00" in relpath:
        return None, Status.QUARANTINED, "path_outside_raw_root: relative path escapes the root"
    root = os.path.realpath(raw_root)
    full = os.path.realpath(os.path.join(root, *rel.parts))
    if not _inside(root, full):
        return None, Status.QUARANTINED, "path_outside_raw_root: a symlink points outside the root"
    if not os.path.lexists(full):
        return None, Status.ERROR, "raw_file_missing: not found under the raw root"
    if not os.path.isfile(full):
        return None, Status.QUARANTINED, "not_a_regular_file"
    try:
        # O_NOFOLLOW: the resolved path must not have been swapped for a link since.
        fd = os.open(full, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as fh:
            return fh.read(), "", ""
    except OSError as exc:
        return None, Status.ERROR, f"raw_file_unreadable: {type(exc).__name__}"


def flag_reasons(result: FileResult) -> list[str]:
    """Why a result is borderline and must be in the clinicians' review sample.

    The engine reports no confidence per finding, so "weak" is read from what it did: text
    found in pixels (masked or dismissed as anatomy), pixels screened on a downsampled copy,
    and person names found by heuristics in free text (name detection is the least certain
    rule; known patient names are reported under the same type, so all PERSON hits count).
    """
    reasons = []
    if result.findings.get("PIXEL_TEXT_BOX") or result.actions.get("pixel_boxes_masked"):
        reasons.append("ocr_boxes")
    if result.actions.get("ocr_boxes_dropped"):
        reasons.append("ocr_boxes_dismissed")
    if result.actions.get("ocr_screened"):
        reasons.append("ocr_screened")
    if result.findings.get("PERSON"):
        reasons.append("name_hits")
    return reasons


def _header_context(data: bytes, engine: DeidEngine) -> PatientContext | None:
    """The patient context of a DICOM header, or None when it cannot be read (the file gets
    its own quarantine row when its turn comes)."""
    from apps.deid.engine.dicom import patient_context, read_dicom

    try:
        return patient_context(read_dicom(data), engine.key)
    except Exception:  # a bad header only means no shared context
        return None


class _Worker:
    """Processes the files of one run; holds the engine and a small per-study context cache."""

    def __init__(self, run: DeidRun, engine: DeidEngine, profile: DeidProfile) -> None:
        self.run = run
        self.engine = engine
        self.fingerprint = profile.fingerprint()
        self.raw_root = run.batch.source.raw_root
        self.out_root = Path(run.output_root)
        self.contexts: OrderedDict[str, PatientContext | None] = OrderedDict()
        # Output paths already taken in this run: two inputs must never share one output.
        self.taken: dict[str, int] = dict(
            DeidFileResult.objects.filter(run=run)
            .exclude(output_relpath="")
            .values_list("output_relpath", "raw_file_id")
        )

    # The patient named in a study's DICOM header is removed from that study's notes and
    # waveform headers too (the engine's PatientContext); it lives in memory only.
    def context_for(self, raw: RawFile) -> PatientContext | None:
        if not raw.study_key:
            return None
        if raw.study_key in self.contexts:
            self.contexts.move_to_end(raw.study_key)
            return self.contexts[raw.study_key]
        ctx = None
        candidates = RawFile.objects.filter(
            batch_id=raw.batch_id, study_key=raw.study_key, kind=RawFile.Kind.DICOM, excluded=False
        ).order_by("relpath")[:3]
        for cand in candidates:
            data, _status, _reason = read_raw(self.raw_root, cand.relpath)
            if data is None:
                continue
            ctx = _header_context(data, self.engine)
            if ctx is not None:
                break
        self.contexts[raw.study_key] = ctx
        if len(self.contexts) > _STUDY_CONTEXT_CACHE:
            self.contexts.popitem(last=False)
        return ctx

    def process(self, raw: RawFile) -> str | None:
        """Produce and store the one result row of ``raw``; returns its status (None when
        another worker stored it first)."""
        row, data, ctx = self.prepare(raw)
        if data is None:
            return self._store(raw, row)
        result = self.engine.process(data, name=PurePosixPath(raw.relpath).name, context=ctx)
        return self.complete(raw, row, result, ctx)

    def prepare(self, raw: RawFile) -> tuple[dict[str, Any], bytes | None, PatientContext | None]:
        """Everything before the engine: a finished row (no bytes) when the file is excluded,
        reused, unreadable or changed; otherwise its bytes and the study's patient context."""
        row: dict[str, Any] = {
            "kind": raw.kind,
            "modality": (raw.modality or "")[:16],
            "input_sha256": raw.sha256,
            "study_key": raw.study_key,
            "profile_fingerprint": self.fingerprint,
        }
        if raw.excluded:
            # Excluded by data QA: recorded (nothing vanishes from the count), never released.
            row.update(status=Status.QUARANTINED, reason="excluded_by_data_qa")
            return row, None, None
        reused = self._reuse(raw, row)
        if reused is not None:
            return reused, None, None
        data, status, reason = read_raw(self.raw_root, raw.relpath)
        if data is None:
            row.update(status=status, reason=reason)
            return row, None, None
        actual = hashlib.sha256(data).hexdigest()
        row["input_sha256"] = actual
        if actual != raw.sha256:
            row.update(
                status=Status.QUARANTINED,
                reason="raw_file_changed: content differs from the scanned sha256; rescan",
            )
            return row, None, None
        return row, data, self.context_for(raw)

    def complete(
        self,
        raw: RawFile,
        row: dict[str, Any],
        result: FileResult,
        ctx: PatientContext | None,
    ) -> str | None:
        """Everything after the engine: write and verify outputs, store the row."""
        row.update(
            status=result.status,
            reason=(result.reason or "")[:300],
            kind=(result.kind or raw.kind)[:20],
            findings={k: int(v) for k, v in result.findings.items()},
            actions={k: int(v) for k, v in result.actions.items()},
            spans=[{"type": f.type, "start": f.out_start, "end": f.out_end} for f in result.spans],
            profile_fingerprint=result.profile or self.fingerprint,
        )
        pseudonym = result.patient_pseudonym or (
            self.engine.key.pseudonym(ctx.patient_key) if ctx and ctx.patient_key else ""
        )
        row["patient_pseudonym"] = pseudonym[:80]
        reasons = flag_reasons(result)
        row.update(flagged=bool(reasons), flag_reasons=reasons)
        if result.status == OK:
            try:
                row.update(self._write(raw, result, ctx))
            except _OutputError as exc:
                row.update(status=Status.ERROR, reason=str(exc)[:300])
        elif result.status != QUARANTINED:
            row["status"] = Status.ERROR
        if row["status"] == Status.ERROR:
            logger.warning(
                "deid run %s: raw file %s error (%s)", self.run.pk, raw.pk, row["reason"]
            )
        return self._store(raw, row)

    def _output_relpath(self, raw: RawFile, result: FileResult, ctx: PatientContext | None) -> str:
        rel = PurePosixPath(self.engine.pseudonymize_path(raw.relpath, context=ctx))
        name = result.output_name
        if name:
            if "/" in name or "\\" in name or name in (".", "..") or "\x00" in name:
                raise _OutputError("output_name_invalid: engine named an unsafe output")
            rel = rel.parent / name
        if rel.is_absolute() or ".." in rel.parts:
            raise _OutputError("output_path_invalid: pseudonymized path escapes the root")
        return rel.as_posix()

    def _write(
        self, raw: RawFile, result: FileResult, ctx: PatientContext | None
    ) -> dict[str, Any]:
        if result.output is None:
            raise _OutputError("output_missing: engine reported ok without an output")
        rel = self._output_relpath(raw, result, ctx)
        owner = self.taken.get(rel)
        if owner is not None and owner != raw.pk:
            raise _OutputError("output_path_collision: another file of this run has this path")
        sha, _written = atomic_write(self.out_root / rel, result.output)
        if result.output_sha256 and sha != result.output_sha256:
            raise _OutputError("output_hash_mismatch")
        extras: dict[str, str] = {}
        for suffix, blob in result.extra_outputs.items():
            extra = self._extra_path(rel, suffix)
            extras[suffix] = atomic_write(self.out_root / extra, blob)[0]
        self.taken[rel] = raw.pk
        return {"output_relpath": rel, "output_sha256": sha, "extra_outputs": extras}

    @staticmethod
    def _extra_path(rel: str, suffix: str) -> str:
        """Where an extra output lives: ``.ext`` replaces the main extension, a plain name
        sits next to the main output."""
        if "/" in suffix or "\\" in suffix or ".." in suffix or not suffix:
            raise _OutputError("output_name_invalid: engine named an unsafe extra output")
        main = PurePosixPath(rel)
        path = main.with_suffix(suffix) if suffix.startswith(".") else main.parent / suffix
        return path.as_posix()

    def _reuse(self, raw: RawFile, row: dict[str, Any]) -> dict[str, Any] | None:
        """The result of an earlier run for the same bytes at the same path under the same
        profile, key and OCR engine, with its output linked into this run; None when there
        is none."""
        # Only de-identified outputs are reused: a quarantine may depend on the environment
        # (OCR off, vault unreachable) and is cheap to reach again.
        if not self.run.key_fingerprint or self.run.ocr_mode not in ("auto", "off"):
            return None
        prior = (
            DeidFileResult.objects.filter(
                raw_file__source_id=raw.source_id,
                raw_file__relpath=raw.relpath,
                input_sha256=raw.sha256,
                profile_fingerprint=self.fingerprint,
                run__key_fingerprint=self.run.key_fingerprint,
                run__ocr_mode=self.run.ocr_mode,
                status=Status.OK,
            )
            .exclude(run_id=self.run.pk)
            .select_related("run")
            .order_by("-pk")
            .first()
        )
        if prior is None or prior.extra_outputs or not prior.output_relpath:
            return None  # keep reuse simple: single-output files only
        owner = self.taken.get(prior.output_relpath)
        if owner is not None and owner != raw.pk:
            return None
        src = Path(prior.run.output_root) / prior.output_relpath
        dst = self.out_root / prior.output_relpath
        if not _link_or_copy(src, dst, prior.output_sha256):
            return None
        self.taken[prior.output_relpath] = raw.pk
        fields = [
            "status",
            "reason",
            "kind",
            "modality",
            "output_relpath",
            "output_sha256",
            "extra_outputs",
            "findings",
            "actions",
            "spans",
            "patient_pseudonym",
            "flagged",
            "flag_reasons",
        ]
        reused = dict(row)
        reused.update({name: getattr(prior, name) for name in fields})
        reused["actions"] = {**prior.actions, "reused_from_run": prior.run_id}
        return reused

    def _store(self, raw: RawFile, row: dict[str, Any]) -> str | None:
        return self.store_row(self.run, raw, row)

    @staticmethod
    def store_row(run: DeidRun, raw: RawFile, row: dict[str, Any]) -> str | None:
        """Insert the row and bump the counters in one transaction (once per file)."""
        status = row["status"]
        counter = {
            Status.OK: "files_ok",
            Status.QUARANTINED: "files_quarantined",
            Status.ERROR: "files_error",
        }[status]
        now = timezone.now()
        with transaction.atomic():
            try:
                with transaction.atomic():
                    DeidFileResult.objects.create(run=run, raw_file=raw, **row)
            except IntegrityError:
                return None  # already stored by another worker: count it once
            DeidRun.objects.filter(pk=run.pk).update(
                files_done=F("files_done") + 1,
                **{counter: F(counter) + 1},
                heartbeat_at=now,
                inflight_raw_file_id=None,
            )
        return status


# --- reveal ----------------------------------------------------------------------------------


def reveal_pseudonym(
    pseudonym: str, *, reason: str, acting_user: User, kind: str = "patient_id"
) -> str:
    """The original identifier behind ``pseudonym``: privacy officers only, with a reason.

    Every attempt, found or not, is logged (:class:`RevealLog` keeps the reason) and audited
    as ``deid.pseudonym_revealed`` with the pseudonym's hash; the original is returned to the
    caller and stored nowhere.
    """
    if PRIVACY not in roles_of(acting_user):
        raise PermissionDenied(_("only privacy officers may re-identify"))
    reason = (reason or "").strip()
    if len(reason) < REVEAL_REASON_MIN_LENGTH:
        raise ValidationError(
            _("state a reason of at least %(n)s characters") % {"n": REVEAL_REASON_MIN_LENGTH},
            code="reason_too_short",
        )
    pseudonym = (pseudonym or "").strip().upper()
    if not _PSEUDONYM_RE.fullmatch(pseudonym):
        raise ValidationError(_("not a pseudonym (letters and digits only)"), code="bad_pseudonym")
    if not re.fullmatch(r"[a-z_]{1,40}", kind):
        raise ValidationError(_("unknown record kind"), code="bad_kind")
    digest = hashlib.sha256(pseudonym.encode()).hexdigest()
    original: str | None = None
    failure = ""
    try:
        original = make_vault().reveal(kind, pseudonym)
    except VaultError as exc:
        failure = exc.reason
    with transaction.atomic():
        log = RevealLog.objects.create(
            actor_id=acting_user.pk,
            pseudonym_sha256=digest,
            kind=kind,
            reason=reason,
            found=original is not None,
        )
        record(
            "deid.pseudonym_revealed" if original is not None else "deid.reveal_failed",
            f"deid.reveallog:{log.pk}",
            actor=acting_user,
            details={
                "pseudonym_sha256": digest,
                "kind": kind,
                "found": original is not None,
                "failure": failure or None,
                "reason_sha256": hashlib.sha256(reason.encode()).hexdigest(),
            },
        )
    if original is None:
        raise DeidServiceError(
            _("no vault record for this pseudonym (%(code)s)") % {"code": failure}
        )
    return original


def pseudonym_of_patient_id(patient_id: str, *, reason: str, acting_user: User) -> tuple[str, bool]:
    """The pseudonym the project key gives a hospital patient ID (the DICOM Patient ID every
    file of a patient is keyed on), for a consent withdrawal or an access request.

    Linking an identity to its pseudonym is as sensitive as re-identifying one: privacy
    officers only, with a reason; every lookup gets a :class:`RevealLog` row and the audit
    event ``deid.pseudonym_looked_up`` with the pseudonym's and the reason's hashes. The
    patient ID is stored nowhere, hashed or not (a hospital ID is short enough to guess from
    its hash). Returns the pseudonym and whether any de-identified file carries it.
    """
    if PRIVACY not in roles_of(acting_user):
        raise PermissionDenied(_("only privacy officers may look up pseudonyms"))
    reason = (reason or "").strip()
    if len(reason) < REVEAL_REASON_MIN_LENGTH:
        raise ValidationError(
            _("state a reason of at least %(n)s characters") % {"n": REVEAL_REASON_MIN_LENGTH},
            code="reason_too_short",
        )
    patient_id = (patient_id or "").strip()
    # DICOM's Patient ID is an LO: at most 64 characters, one line.
    if not patient_id or len(patient_id) > 64 or re.search(r"[\x00-\x1f\x7f]", patient_id):
        raise ValidationError(_("a patient ID is 1 to 64 characters on one line"), code="bad_id")
    pseudonym = config.project_key().pseudonym(patient_id)
    found = DeidFileResult.objects.filter(patient_pseudonym=pseudonym).exists()
    digest = hashlib.sha256(pseudonym.encode()).hexdigest()
    with transaction.atomic():
        log = RevealLog.objects.create(
            actor_id=acting_user.pk,
            pseudonym_sha256=digest,
            kind="patient_id_lookup",
            reason=reason,
            found=found,
        )
        record(
            "deid.pseudonym_looked_up",
            f"deid.reveallog:{log.pk}",
            actor=acting_user,
            details={
                "pseudonym_sha256": digest,
                "found": found,
                "reason_sha256": hashlib.sha256(reason.encode()).hexdigest(),
            },
        )
    return pseudonym, found


# --- read helpers shared by pages and API ------------------------------------------------------


# While a run is active its findings are totalled live from at most this many rows.
LIVE_FINDINGS_ROWS = 20_000


def _totals(results: Any, *, limit: int | None = None) -> dict[str, Any]:
    """Files by kind, findings by type and flagged count over ``results`` (counts only)."""
    by_kind = dict(results.values_list("kind").annotate(n=Count("pk")).values_list("kind", "n"))
    findings: dict[str, int] = {}
    rows = results.exclude(findings={}).order_by("pk").values_list("findings", flat=True)
    seen = 0
    for row in rows[:limit].iterator() if limit else rows.iterator():
        seen += 1
        for name, n in (row or {}).items():
            findings[name] = findings.get(name, 0) + int(n)
    return {
        "by_kind": dict(sorted(by_kind.items())),
        "findings": dict(sorted(findings.items(), key=lambda kv: (-kv[1], kv[0]))),
        "flagged": results.filter(flagged=True).count(),
        "partial": bool(limit and seen >= limit),
    }


def run_summary(run: DeidRun) -> dict[str, Any]:
    """Counts by status and kind, findings by type and flagged count (ids and counts only):
    the totals stored when the run stopped, or live ones while it is active."""
    results = DeidFileResult.objects.filter(run=run)
    if run.summary and not run.is_active:
        totals = dict(run.summary)
    else:
        totals = _totals(results, limit=LIVE_FINDINGS_ROWS)
    return {
        **totals,
        "by_status": {
            Status.OK: run.files_ok,
            Status.QUARANTINED: run.files_quarantined,
            Status.ERROR: run.files_error,
        },
        "balanced": run.files_done == run.files_ok + run.files_quarantined + run.files_error,
        "unlinked": unlinked_by_kind(run),
    }


def unlinked_by_kind(run: DeidRun) -> dict[str, int]:
    """De-identified files that name no patient (no study, no patient ID of their own), by
    kind: lineage by patient and consent withdrawal cannot reach them (docs/deid-runs.md).
    WFDB signal files are left out: they go with their header's patient."""
    rows = (
        DeidFileResult.objects.filter(run=run, status=Status.OK, patient_pseudonym="")
        .exclude(kind="wfdb_signal")
        .values_list("kind")
        .annotate(n=Count("pk"))
        .order_by("kind")
    )
    return dict(rows)


# --- overview ----------------------------------------------------------------------------------


def overview() -> list[tuple[str, Any]]:
    """De-identification's card on the overview page: runs by state, files held back."""
    runs = dict(DeidRun.objects.values_list("status").annotate(n=Count("pk")).order_by())
    active = runs.get(DeidRun.Status.PENDING, 0) + runs.get(DeidRun.Status.RUNNING, 0)
    # The runs' own counters: no scan of the results table on every page view.
    held = DeidRun.objects.aggregate(n=Sum("files_quarantined"))["n"] or 0
    return [
        (_("runs done"), runs.get(DeidRun.Status.DONE, 0)),
        (_("running or queued"), active),
        (_("files quarantined"), held),
    ]
