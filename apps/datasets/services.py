"""The datasets operations: build, verify, lineage, dataset uses and annotation sets.

The only write path for this app's models. Each state change runs in ``transaction.atomic``
with its audit event (ids and hashes only); side effects (the packing task) are scheduled with
``transaction.on_commit``. Views, the API, the Celery task and the management commands all
call these functions.

Packing reads only released de-identified outputs (``DeidRun.released_at`` is set by the
review gate), re-hashes each against the hash the de-id run recorded (DICOM files as the
writer copies them, the others before packing starts), and writes through the
trainer's ``ShardWriter`` (the one implementation of the shard format) into a temporary folder
that is renamed into place once complete.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count, Max, Q, QuerySet
from django.utils import timezone
from django.utils.translation import gettext as _

from apps.audit.services import record
from apps.datasets import packing
from apps.datasets.models import (
    AnnotationSet,
    ConsentReinstatement,
    ConsentWithdrawal,
    DatasetMember,
    DatasetUse,
    DatasetVersion,
    VerifyCheck,
)
from apps.deid.models import DeidFileResult, DeidRun
from apps.inventory.models import ConsentStatus, RawFile
from trainer.data.shards import (
    ShardFormatError,
    ShardWriter,
    fsync_dir,
    read_manifest,
    sha256_file,
    write_atomic,
)

if TYPE_CHECKING:
    from apps.accounts.models import User

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
# A build whose worker has not reported for this long is taken to be dead and may be re-run.
STALE_CLAIM_SECONDS = 15 * 60
MAX_SHARD_MB = 100_000.0
MAX_ANNOTATION_BYTES = 64 << 20
_PROGRESS_STEPS = 100


CANCELLED = "cancelled on request"


class DatasetError(ValueError):
    """A request the datasets services refuse; the message names the offending value."""


class UnreleasedRunError(DatasetError):
    """A de-id run that the review gate has not released was asked to be packed."""


def datasets_root() -> Path:
    """Where versions are written: ``DATASETS_ROOT`` (the training working-set tier), else
    ``<var>/datasets`` for the embedded demo."""
    root = getattr(settings, "DATASETS_ROOT", None) or Path(settings.VAR_DIR) / "datasets"
    return Path(root)


def pack_workers() -> int:
    """Processes that read and convert files, and shards written at once
    (``DATASETS_PACK_WORKERS``, default 1). The output does not depend on it, so it is not
    part of the build settings."""
    return max(1, int(getattr(settings, "DATASETS_PACK_WORKERS", 1) or 1))


def _resource(obj: Any) -> str:
    return f"datasets.{obj._meta.model_name}:{obj.pk}"


# --- building --------------------------------------------------------------------------------


def check_runs_packable(runs: Iterable[DeidRun | int]) -> list[DeidRun]:
    """The runs, loaded, if every one is released; else ``UnreleasedRunError`` naming it.

    Runs made under different project keys are refused together: their pseudonyms do not
    match, so one patient would look like two and the consent report would miss samples.
    """
    ids = sorted({r if isinstance(r, int) else r.pk for r in runs})
    if not ids:
        raise DatasetError("choose at least one released de-id run to pack")
    loaded = {r.pk: r for r in DeidRun.objects.filter(pk__in=ids)}
    for pk in ids:
        run = loaded.get(pk)
        if run is None:
            raise DatasetError(f"de-id run {pk} does not exist")
        if run.released_at is None:
            raise UnreleasedRunError(
                f"de-id run {pk} is not released (the review gate has not passed); "
                "only released runs can be packed"
            )
    keys = {getattr(r, "key_fingerprint", "") for r in loaded.values()} - {""}
    if len(keys) > 1:
        raise DatasetError(
            f"de-id runs {ids} were made under different project keys; pack them separately"
        )
    return [loaded[pk] for pk in ids]


def _check_size(target_shard_mb: float) -> float:
    try:
        value = float(target_shard_mb)
    except (TypeError, ValueError):
        raise DatasetError(f"target shard size {target_shard_mb!r} is not a number") from None
    if not 0 < value <= MAX_SHARD_MB:
        raise DatasetError(
            f"target shard size {value} MB must be above 0 and at most {MAX_SHARD_MB:g}"
        )
    return value


def _create_version(
    name: str,
    runs: Iterable[DeidRun | int],
    *,
    target_shard_mb: float,
    acting_user: User | None,
    root: str | Path | None,
    on_commit: Callable[[DatasetVersion], None] | None = None,
) -> DatasetVersion:
    from django.utils.text import slugify

    if not name or slugify(name) != name:
        raise DatasetError(f"dataset name {name!r} must be a slug (letters, digits, - and _)")
    size = _check_size(target_shard_mb)
    with transaction.atomic():
        packable = check_runs_packable(runs)
        # Lock the runs' rows (PostgreSQL) so a release revoked meanwhile is seen, and take
        # the next number; the unique constraint settles a race between two builders.
        list(DeidRun.objects.select_for_update().filter(pk__in=[r.pk for r in packable]))
        number = (DatasetVersion.objects.filter(name=name).aggregate(n=Max("number"))["n"] or 0) + 1
        base = Path(root) if root else datasets_root()
        try:
            with transaction.atomic():
                version = DatasetVersion.objects.create(
                    name=name,
                    number=number,
                    target_shard_mb=size,
                    root=str(base / name / f"v{number}"),
                    build_settings=_settings(size),
                    created_by=acting_user,
                )
        except IntegrityError:
            raise DatasetError(
                f"{name} v{number} was created by someone else just now; try again"
            ) from None
        version.runs.set(packable)
        record(
            "datasets.version_build_requested",
            _resource(version),
            actor=acting_user,
            post={"status": version.status, "runs": [r.pk for r in packable]},
            details={"runs": ",".join(str(r.pk) for r in packable), "target_shard_mb": size},
        )
        if on_commit is not None:
            transaction.on_commit(lambda: on_commit(version))
    return version


def _settings(target_shard_mb: float) -> dict[str, Any]:
    """Everything that shapes the bytes; it goes into the manifest, so it is reproducible."""
    return {
        "packer": packing.PACKER,
        "target_shard_mb": target_shard_mb,
        "group_by": "study_key, else patient pseudonym + kind",
        "order": "sample key",
        "image": "int16 modality units (rescaled) or uint8 colour",
        "waveform": "float32 physical units",
    }


def request_build(
    name: str,
    runs: Iterable[DeidRun | int],
    *,
    target_shard_mb: float,
    acting_user: User | None,
    root: str | Path | None = None,
) -> DatasetVersion:
    """Create ``name`` v<next> in ``building`` and queue the packing task after commit.

    Raises ``UnreleasedRunError`` (naming the run) before anything is written when a run is
    not released. The pages and the API call this; the worker does the packing.
    """

    def enqueue(version: DatasetVersion) -> None:
        from apps.datasets.tasks import pack_version as task

        task.delay(version.pk)

    return _create_version(
        name,
        runs,
        target_shard_mb=target_shard_mb,
        acting_user=acting_user,
        root=root,
        on_commit=enqueue,
    )


def build_version(
    name: str,
    runs: Iterable[DeidRun | int],
    *,
    target_shard_mb: float,
    acting_user: User | None,
    root: str | Path | None = None,
    progress: ProgressCallback | None = None,
) -> DatasetVersion:
    """Build ``name`` v<next> from released ``runs`` now, in this process; returns the version
    (``ready``, or ``failed`` with ``error`` set).

    Refuses, before writing anything, any run that is not released (``UnreleasedRunError``).
    Quarantined and errored results, QA-excluded raw files and files of sources whose consent
    was withdrawn are never packed (counted in ``version.skipped``).
    """
    version = _create_version(
        name, runs, target_shard_mb=target_shard_mb, acting_user=acting_user, root=root
    )
    return pack_version(version.pk, progress=progress)


def cancel_build(version: DatasetVersion, *, acting_user: User | None) -> DatasetVersion:
    """Stop a build: at once when no worker has started it, else at the packer's next
    progress step (it then removes its partial folder). A finished version is refused."""
    with transaction.atomic():
        now = timezone.now()
        unstarted = DatasetVersion.objects.filter(
            pk=version.pk, status="building", claimed_at__isnull=True
        ).update(
            status=DatasetVersion.Status.FAILED,
            error=CANCELLED,
            cancel_requested=True,
            finished_at=now,
        )
        flagged = unstarted or DatasetVersion.objects.filter(
            pk=version.pk, status="building"
        ).update(cancel_requested=True)
        if not flagged:
            raise DatasetError(f"{version.label} is {version.status}; only builds can be cancelled")
        record(
            "datasets.version_cancel_requested",
            _resource(version),
            actor=acting_user,
            details={"stopped_now": bool(unstarted)},
        )
    version.refresh_from_db()
    return version


def _claim(pk: int) -> bool:
    now = timezone.now()
    stale = now - timedelta(seconds=STALE_CLAIM_SECONDS)
    return bool(
        DatasetVersion.objects.filter(pk=pk, status=DatasetVersion.Status.BUILDING)
        .filter(Q(claimed_at__isnull=True) | Q(claimed_at__lt=stale))
        .update(claimed_at=now)
    )


def _source_files(runs: list[DeidRun]) -> tuple[list[packing.SourceFile], dict[str, int]]:
    """The packable files of ``runs``, and how many of the others were skipped, by reason."""
    skipped: dict[str, int] = defaultdict(int)
    files: list[packing.SourceFile] = []
    seen: set[str] = set()
    results = (
        DeidFileResult.objects.filter(run__in=runs)
        .select_related("raw_file", "raw_file__source", "run")
        .order_by("run_id", "raw_file_id")
    )
    for r in results.iterator(chunk_size=2000):
        raw = r.raw_file
        if r.status == DeidFileResult.Status.QUARANTINED:
            skipped["quarantined"] += 1
        elif r.status != DeidFileResult.Status.OK:
            skipped["error"] += 1
        elif raw.excluded:
            skipped["qa_excluded"] += 1
        elif raw.source.consent_status == ConsentStatus.WITHDRAWN:
            skipped["consent_withdrawn"] += 1
        elif not r.output_relpath or not r.run.output_root:
            skipped["no_output"] += 1
        elif raw.sha256 in seen:
            skipped["duplicate"] += 1  # the same content registered twice: pack it once
        else:
            seen.add(raw.sha256)
            files.append(
                packing.SourceFile(
                    result_id=r.pk,
                    raw_file_id=raw.pk,
                    raw_sha256=raw.sha256,
                    run_id=r.run_id,
                    kind=r.kind,
                    modality=r.modality,
                    path=_output_path(r),
                    relpath=r.output_relpath,
                    output_sha256=r.output_sha256,
                    patient_pseudonym=r.patient_pseudonym,
                    study_key=r.study_key or raw.study_key,
                    profile=r.run.profile_fingerprint,
                )
            )
    return files, dict(skipped)


def _without_withdrawn(
    planned: list[packing.PlannedSample], skipped: dict[str, int]
) -> list[packing.PlannedSample]:
    """Drop every sample holding a file of a patient who withdrew consent, whole: its WFDB
    signal files and any file without a pseudonym of its own go with it."""
    withdrawn = withdrawn_pseudonyms()
    if not withdrawn:
        return planned
    kept = []
    for sample in planned:
        files = sample.files
        if any(f.patient_pseudonym in withdrawn for f in files):
            skipped["consent_withdrawn"] = skipped.get("consent_withdrawn", 0) + len(files)
        else:
            kept.append(sample)
    return kept


def _output_path(result: DeidFileResult) -> Path:
    base = Path(result.run.output_root).resolve()
    path = (base / result.output_relpath).resolve()
    if not path.is_relative_to(base):
        raise DatasetError(f"de-id result {result.pk}: output path leaves the run's output root")
    return path


def _check_output(f: packing.SourceFile) -> None:
    """Released bytes must be the bytes the de-id run recorded: anything else is refused.

    DICOM files are only checked to exist here: the writer hashes them as it copies them into
    the shard (one read) and refuses any that differ (``DicomFile``).
    """
    if not f.path.is_file():
        raise DatasetError(f"de-id result {f.result_id}: output file is missing")
    if f.kind in packing.IMAGE_KINDS:
        if not f.output_sha256:
            raise DatasetError(f"de-id result {f.result_id}: no recorded sha256")
        return
    if not f.output_sha256 or sha256_file(f.path) != f.output_sha256:
        raise DatasetError(
            f"de-id result {f.result_id}: output file does not match its recorded sha256"
        )


def pack_version(pk: int, *, progress: ProgressCallback | None = None) -> DatasetVersion:
    """Pack a ``building`` version (the task's body). Idempotent: a version another worker is
    packing, or one already finished, is returned as it is."""
    if not _claim(pk):
        return DatasetVersion.objects.get(pk=pk)
    version = DatasetVersion.objects.get(pk=pk)
    final = Path(version.root)
    tmp = final.parent / f".{final.name}.partial"
    try:
        runs = check_runs_packable(list(version.runs.all()))
        result = _write(version, runs, tmp, progress)
        if final.exists():
            raise DatasetError(f"{final} already exists; versions are never overwritten")
        os.rename(tmp, final)
        fsync_dir(final.parent)
        return _finish(version, final, result)
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if final.exists() and not DatasetVersion.objects.filter(pk=pk, status="ready").exists():
            shutil.rmtree(final, ignore_errors=True)
        # The writer's errors name ids and sample keys only (a DICOM file changed since its
        # de-id run is found as it is copied).
        known = isinstance(exc, DatasetError | ShardFormatError)
        reason = str(exc) if known else type(exc).__name__
        if not known:
            logger.exception("packing dataset version %s failed", pk)
        return _fail(version, reason[:300])


@dataclass
class _Written:
    manifest: dict[str, Any]
    members: list[DatasetMember]
    skipped: dict[str, int]
    files: int


def _write(
    version: DatasetVersion,
    runs: list[DeidRun],
    tmp: Path,
    progress: ProgressCallback | None,
) -> _Written:
    files, skipped = _source_files(runs)
    planned, plan_skipped = packing.plan_samples(files)
    for reason, n in plan_skipped.items():
        skipped[reason] = skipped.get(reason, 0) + n
    planned = _without_withdrawn(planned, skipped)
    if not planned:
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items())) or "no files"
        raise DatasetError(f"nothing to pack in runs {[r.pk for r in runs]} ({counts})")
    for sample in planned:
        for f in sample.files:
            _check_output(f)
    shutil.rmtree(tmp, ignore_errors=True)  # a crashed earlier attempt; rebuilt from scratch
    tmp.parent.mkdir(parents=True, exist_ok=True)
    total = len(planned)
    DatasetVersion.objects.filter(pk=version.pk).update(progress_total=total, progress_done=0)
    members: list[DatasetMember] = []
    lineage_files: list[dict[str, Any]] = []
    tokens = 0
    step = max(1, total // _PROGRESS_STEPS)
    max_bytes = max(1, int(version.target_shard_mb * (1 << 20)))
    workers = pack_workers()
    with ShardWriter(
        tmp, samples_per_shard=1 << 40, max_shard_bytes=max_bytes, workers=workers
    ) as writer:
        built = packing.build_samples(planned, workers=workers)
        for done, (plan, samples, text_tokens, reason) in enumerate(built, 1):
            if reason:
                # One unreadable file costs its sample, named in the log by ids only.
                logger.warning("sample %s skipped: %s", plan.key, reason)
                skipped[reason] = skipped.get(reason, 0) + len(plan.files)
                continue
            for sample in samples:
                writer.write(sample)
            tokens += text_tokens
            for f in plan.files:
                key, member = packing.member_of(plan, f)
                members.append(
                    DatasetMember(
                        version=version,
                        deid_result_id=f.result_id,
                        raw_file_id=f.raw_file_id,
                        run_id=f.run_id,
                        sample_key=key,
                        patient_pseudonym=f.patient_pseudonym or plan.patient,
                        member=member,
                    )
                )
                lineage_files.append(
                    {
                        "raw_file": f.raw_file_id,
                        "raw_sha256": f.raw_sha256,
                        "run": f.run_id,
                        "result": f.result_id,
                        "output_sha256": f.output_sha256,
                        "sample": key,
                    }
                )
            if done % step == 0 or done == total:
                DatasetVersion.objects.filter(pk=version.pk, status="building").update(
                    progress_done=done, claimed_at=timezone.now()
                )
                if DatasetVersion.objects.filter(pk=version.pk, cancel_requested=True).exists():
                    raise DatasetError(CANCELLED)
                if progress is not None:
                    progress(done, total)
    manifest = read_manifest(tmp)
    lineage_files.sort(key=lambda e: (e["raw_file"], e["run"]))
    # The writer's manifest lacks index hashes, settings and the token estimate: add them so
    # one manifest hash pins every file and the build is reproducible from the manifest.
    manifest["index_sha256"] = {
        s["name"]: sha256_file(tmp / "index" / f"{Path(s['name']).stem}.json")
        for s in manifest["shards"]
    }
    manifest["token_estimate"] = tokens
    manifest["settings"] = version.build_settings
    manifest["lineage"] = {
        "runs": [
            {
                "run": r.pk,
                "batch": r.batch_id,
                "profile": r.profile_fingerprint,
            }
            for r in runs
        ],
        "files": lineage_files,
        "skipped": dict(sorted(skipped.items())),
    }
    write_atomic(tmp / "manifest.json", json.dumps(manifest, indent=1).encode())
    for path in sorted(tmp.rglob("*")):
        if path.is_file():
            path.chmod(0o444)  # versions are immutable; the folder stays removable
    return _Written(manifest, members, dict(sorted(skipped.items())), len(lineage_files))


def _finish(version: DatasetVersion, final: Path, written: _Written) -> DatasetVersion:
    manifest = written.manifest
    manifest_sha = sha256_file(final / "manifest.json")
    with transaction.atomic():
        DatasetMember.objects.bulk_create(written.members, batch_size=2000)
        changed = DatasetVersion.objects.filter(pk=version.pk, status="building").update(
            status=DatasetVersion.Status.READY,
            manifest_sha256=manifest_sha,
            shard_count=len(manifest["shards"]),
            bytes_total=sum(s["bytes"] for s in manifest["shards"]),
            sample_count=manifest["samples"],
            file_count=written.files,
            modality_counts=manifest["modalities"],
            token_estimate=manifest["token_estimate"],
            skipped=written.skipped,
            finished_at=timezone.now(),
        )
        if changed != 1:
            raise DatasetError(f"dataset version {version.pk} is no longer building")
        record(
            "datasets.version_built",
            _resource(version),
            actor=None,
            pre={"status": "building"},
            post={"status": "ready", "manifest_sha256": manifest_sha},
            details={
                "manifest_sha256": manifest_sha,
                "samples": manifest["samples"],
                "shards": len(manifest["shards"]),
                "files": written.files,
            },
        )
    version.refresh_from_db()
    return version


def _fail(version: DatasetVersion, reason: str) -> DatasetVersion:
    with transaction.atomic():
        changed = DatasetVersion.objects.filter(pk=version.pk, status="building").update(
            status=DatasetVersion.Status.FAILED, error=reason, finished_at=timezone.now()
        )
        if changed:
            record(
                "datasets.version_failed",
                _resource(version),
                actor=None,
                pre={"status": "building"},
                post={"status": "failed"},
                details={"error": reason[:200]},
            )
    version.refresh_from_db()
    return version


# --- verifying -------------------------------------------------------------------------------


@dataclass
class VerifyReport:
    """What a re-hash found; ``problems`` names each file that differs and how."""

    ok: bool
    files_checked: int
    problems: list[dict[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        if self.ok:
            return f"OK: {self.files_checked} files match the manifest"
        return f"{len(self.problems)} problem(s): " + "; ".join(
            f"{p['file']}: {p['problem']}" for p in self.problems[:5]
        )


def _hash_files(
    paths: list[Path], progress: ProgressCallback | None = None
) -> dict[Path, str | None]:
    """sha256 of each file (None where it cannot be read), ``pack_workers()`` files at a time:
    hashlib releases the GIL, so threads hash shards in parallel as the writers wrote them.
    ``progress(bytes hashed, total bytes)`` after each file."""
    sizes = {path: path.stat().st_size if path.is_file() else 0 for path in paths}
    total, done = sum(sizes.values()), 0

    def digest(path: Path) -> str | None:
        try:
            return sha256_file(path)
        except OSError:
            return None

    digests: dict[Path, str | None] = {}
    with ThreadPoolExecutor(max_workers=pack_workers()) as pool:
        futures = {pool.submit(digest, path): path for path in paths}
        for future in as_completed(futures):
            path = futures[future]
            digests[path] = future.result()
            done += sizes[path]
            if progress is not None:
                progress(done, total)
    return digests


def _rehash(version: DatasetVersion, progress: ProgressCallback | None = None) -> VerifyReport:
    root = Path(version.root)
    problems: list[dict[str, str]] = []
    checked = 0

    def problem(name: str, text: str) -> None:
        problems.append({"file": name, "problem": text})

    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        problem("manifest.json", "missing")
        return VerifyReport(False, 0, problems)
    checked += 1
    actual = sha256_file(manifest_path)
    if actual != version.manifest_sha256:
        problem(
            "manifest.json", f"sha256 {actual} differs from the recorded {version.manifest_sha256}"
        )
    try:
        manifest = read_manifest(root)
    except (ShardFormatError, ValueError) as exc:
        problem("manifest.json", f"unreadable: {exc}")
        return VerifyReport(False, checked, problems)
    expected = {"manifest.json"}
    index_hashes = manifest.get("index_sha256", {})
    shards = manifest.get("shards", [])
    digests = _hash_files(
        [root / s["name"] for s in shards if (root / s["name"]).is_file()]
        + [root / "index" / f"{Path(s['name']).stem}.json" for s in shards],
        progress,
    )
    for shard in shards:
        name = shard["name"]
        index_name = f"index/{Path(name).stem}.json"
        expected |= {name, index_name}
        path = root / name
        checked += 1
        if not path.is_file():
            problem(name, "missing")
        elif path.stat().st_size != shard["bytes"]:
            problem(name, f"{path.stat().st_size} bytes, manifest says {shard['bytes']}")
        elif (digest := digests[path]) is None:
            problem(name, "unreadable")
        elif digest != shard["sha256"]:
            problem(name, f"sha256 {digest} differs from the manifest's {shard['sha256']}")
        index_path = root / index_name
        checked += 1
        if not index_path.is_file():
            problem(index_name, "missing")
        elif name in index_hashes and digests.get(index_path) != index_hashes[name]:
            problem(index_name, "sha256 differs from the manifest's")
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and rel not in expected:
            problem(rel, "not in the manifest")
    return VerifyReport(not problems, checked, problems)


def version_by_ref(ref: str, number: int | None = None) -> DatasetVersion | None:
    """A version by id, or by dataset name with ``number`` (the command line's way)."""
    if number is not None:
        return DatasetVersion.objects.filter(name=ref, number=number).first()
    return DatasetVersion.objects.filter(pk=int(ref)).first() if ref.isdigit() else None


def request_verify(version: DatasetVersion, *, acting_user: User | None) -> VerifyCheck:
    """Queue a re-hash of a ready version on a worker (the pages and the API call this).

    Returns the check to poll. While one is queued or running for the version, that one is
    returned instead of a second (two clicks, one re-hash); one whose worker fell silent for
    ``STALE_CLAIM_SECONDS`` is marked failed and a new one is queued.
    """
    if version.status != DatasetVersion.Status.READY:
        raise DatasetError(f"{version.label} is {version.status}; only ready versions verify")
    with transaction.atomic():
        # Serialises two requests for one version (PostgreSQL; SQLite writes one at a time).
        DatasetVersion.objects.select_for_update().filter(pk=version.pk).first()
        _give_up_stale_checks(version)
        pending = version.checks.filter(status__in=_UNFINISHED).first()
        if pending is not None:
            return pending
        check = VerifyCheck.objects.create(
            version=version, checked_by_id=getattr(acting_user, "pk", None)
        )
        record(
            "datasets.version_verify_requested",
            _resource(version),
            actor=acting_user,
            details={"check": check.pk},
        )

        def enqueue() -> None:
            from apps.datasets.tasks import run_verify_check as task

            task.delay(check.pk)

        transaction.on_commit(enqueue)
    return check


_UNFINISHED = (VerifyCheck.Status.QUEUED, VerifyCheck.Status.RUNNING)
# The database row is written at most this often while hashing (and at the end).
_HEARTBEAT_SECONDS = 1.0


# Worker rows (verification checks, tokenizer builds) share one life: ``queued`` when asked
# for, ``running`` once a worker claims it (with a heartbeat), then finished or ``failed``.


def give_up_stale(rows: QuerySet[Any], asked_field: str, reason: str) -> None:
    """Fail the rows no worker reported on for ``STALE_CLAIM_SECONDS`` (a dead worker, or a
    lost task), so that asking again makes a new one."""
    stale = timezone.now() - timedelta(seconds=STALE_CLAIM_SECONDS)
    lost = Q(status="running", heartbeat_at__lt=stale) | Q(
        status="queued", **{f"{asked_field}__lt": stale}
    )
    rows.filter(lost).update(status="failed", error=reason[:300], finished_at=timezone.now())


def fail_work(model: Any, pk: int, reason: str) -> None:
    model.objects.filter(pk=pk, status__in=("queued", "running")).update(
        status="failed", error=reason[:300], finished_at=timezone.now()
    )


def claim_work(model: Any, pk: int, **reset: Any) -> bool:
    """Take a queued row (or a running one whose worker fell silent: a redelivered task),
    resetting its progress fields to ``reset``."""
    now = timezone.now()
    stale = now - timedelta(seconds=STALE_CLAIM_SECONDS)
    taken = Q(status="queued") | Q(status="running", heartbeat_at__lt=stale)
    return bool(
        model.objects.filter(taken, pk=pk).update(status="running", heartbeat_at=now, **reset)
    )


def work_progress(
    model: Any, pk: int, fields: tuple[str, str], progress: ProgressCallback | None
) -> ProgressCallback:
    """A progress callback that writes (done, total) and the heartbeat to the row at most
    every ``_HEARTBEAT_SECONDS`` (and at the end), then calls ``progress``."""
    last_beat = 0.0

    def beat(done: int, total: int) -> None:
        nonlocal last_beat
        now = time.monotonic()
        if now - last_beat >= _HEARTBEAT_SECONDS or done == total:
            last_beat = now
            model.objects.filter(pk=pk).update(
                **{fields[0]: done, fields[1]: total}, heartbeat_at=timezone.now()
            )
        if progress is not None:
            progress(done, total)

    return beat


def _give_up_stale_checks(version: DatasetVersion) -> None:
    give_up_stale(
        version.checks.all(), "checked_at", "no worker reported on this check; asked again"
    )


def _fail_check(pk: int, reason: str) -> None:
    fail_work(VerifyCheck, pk, reason)


def _claim_check(pk: int) -> bool:
    return claim_work(VerifyCheck, pk, bytes_done=0)


def run_verify_check(pk: int, *, progress: ProgressCallback | None = None) -> VerifyCheck:
    """Re-hash the check's version (the worker's task body; the CLI runs it inline) and store
    the result: ``done`` with ``ok`` and the problems, or ``failed`` with a reason when the
    files could not be read at all. Idempotent: a check another worker holds, or a finished
    one, is returned as it is. ``progress(bytes hashed, total bytes)`` as files finish."""
    if not _claim_check(pk):
        return VerifyCheck.objects.get(pk=pk)
    check = VerifyCheck.objects.select_related("version").get(pk=pk)
    version = check.version
    beat = work_progress(VerifyCheck, pk, ("bytes_done", "bytes_total"), progress)
    try:
        report = _rehash(version, beat)
    except Exception as exc:
        # Names and paths inside a version are pseudonymous; the type is enough for the page.
        logger.exception("verifying dataset version %s failed", version.pk)
        _fail_check(pk, f"verification stopped: {type(exc).__name__}")
        return VerifyCheck.objects.get(pk=pk)
    with transaction.atomic():
        VerifyCheck.objects.filter(pk=pk).update(
            status=VerifyCheck.Status.DONE,
            ok=report.ok,
            problems=report.problems,
            files_checked=report.files_checked,
            finished_at=timezone.now(),
        )
        record(
            "datasets.version_verified",
            _resource(version),
            actor=check.checked_by_id,
            details={
                "ok": report.ok,
                "files_checked": report.files_checked,
                "problems": len(report.problems),
                "check": pk,
            },
        )
    return VerifyCheck.objects.get(pk=pk)


def verify_version(
    version: DatasetVersion,
    *,
    acting_user: User | None = None,
    progress: ProgressCallback | None = None,
) -> VerifyReport:
    """Re-hash every file of a ready version against its manifest and the manifest against
    the hash recorded at build time, here and now (the CLI and scheduled checks); stores the
    result (``VerifyCheck``) and audits it. ``progress(bytes hashed, total bytes)`` as files
    finish."""
    if version.status != DatasetVersion.Status.READY:
        raise DatasetError(f"{version.label} is {version.status}; only ready versions verify")
    check = VerifyCheck.objects.create(
        version=version, checked_by_id=getattr(acting_user, "pk", None)
    )
    check = run_verify_check(check.pk, progress=progress)
    if check.status != VerifyCheck.Status.DONE:
        raise DatasetError(f"{version.label}: {check.error}")
    return VerifyReport(bool(check.ok), check.files_checked, list(check.problems))


# --- lineage ---------------------------------------------------------------------------------


def lineage_of_version(version: DatasetVersion) -> QuerySet[DatasetMember]:
    """Every file behind a version: member rows with their raw file, source, batch and run
    (one query; paginate it)."""
    return (
        DatasetMember.objects.filter(version=version)
        .select_related("raw_file", "raw_file__source", "raw_file__batch", "run")
        .order_by("sample_key", "raw_file_id")
    )


@dataclass
class VersionReach:
    version: DatasetVersion
    samples: list[str]
    files: int


@dataclass
class Reach:
    """Where some raw data went: the consent-withdrawal report.

    ``versions``: every dataset version holding it (with the affected sample keys);
    ``uses``: every training run, checkpoint or other registered consumer of those versions.
    """

    subject: str
    raw_file_ids: list[int]
    versions: list[VersionReach]
    uses: list[DatasetUse]
    members: QuerySet[DatasetMember] | None = None  # the lineage rows, for exports
    patient: str = ""  # the pseudonym, when the report is a patient's
    withdrawal: ConsentWithdrawal | None = None  # that patient's, while in force
    consent_history: list[ConsentWithdrawal] = field(default_factory=list)  # oldest first

    @property
    def consent_past(self) -> list[ConsentWithdrawal]:
        """Withdrawals a re-consent ended (the one in force is ``withdrawal``)."""
        return [w for w in self.consent_history if hasattr(w, "reinstatement")]

    # Packed files whose sample names no patient (no study, no patient ID in the file): no
    # patient search can reach them, so a withdrawal says how many there are.
    unlinked_files: int = 0

    @property
    def found(self) -> bool:
        return bool(self.raw_file_ids or self.versions)


def _reach(subject: str, members: QuerySet[DatasetMember], raw_ids: list[int]) -> Reach:
    rows = (
        members.values_list("version_id", "sample_key")
        .distinct()
        .order_by("version_id", "sample_key")
    )
    samples: dict[int, list[str]] = defaultdict(list)
    for version_id, key in rows:
        samples[version_id].append(key)
    counts = dict(members.values_list("version_id").annotate(n=Count("pk")).order_by())
    versions = DatasetVersion.objects.in_bulk(list(samples))
    reach = [
        VersionReach(versions[pk], samples[pk], counts.get(pk, 0))
        for pk in sorted(samples, key=lambda pk: (versions[pk].name, versions[pk].number))
    ]
    uses = uses_of(versions)
    return Reach(subject, raw_ids, reach, uses, members.select_related("version"))


def uses_of(versions: dict[int, DatasetVersion]) -> list[DatasetUse]:
    """Every consumer of these versions (by id): recorded ``DatasetUse`` rows plus other
    apps' rows that point at a version by foreign key, each listed once."""
    ids = list(versions)
    uses = list(DatasetUse.objects.filter(version_id__in=ids).order_by())
    recorded = {(u.version_id, u.consumer_kind, u.consumer_id) for u in uses}
    uses += [
        u
        for u in linked_consumers(ids)
        if (u.version_id, u.consumer_kind, u.consumer_id) not in recorded
    ]
    for use in uses:
        use.version = versions[use.version_id]
    return sorted(uses, key=lambda u: (u.version_id, u.consumer_kind, u.consumer_id))


def consumer_relations() -> list[tuple[Any, Any]]:
    """(model, foreign key field) of every other app's model with a key to DatasetVersion."""
    return [
        (rel.related_model, rel.field)
        for rel in DatasetVersion._meta.related_objects
        if rel.one_to_many and rel.related_model._meta.app_label != "datasets"
    ]


def linked_consumers(version_ids: list[int]) -> list[DatasetUse]:
    """Rows of other apps that point at these versions by foreign key (a training run's
    ``dataset_version``), as unsaved ``DatasetUse`` rows.

    Found through Django's relation graph, so datasets imports none of those apps and a new
    consumer model is in the consent report the day it is migrated. Consumers that reach a
    version only indirectly (a checkpoint through its run) record a ``DatasetUse``.
    """
    found: list[DatasetUse] = []
    if not version_ids:
        return found
    for model, fk in consumer_relations():
        rows = (
            model._default_manager.filter(**{f"{fk.name}__in": version_ids})
            .order_by("pk")
            .values_list("pk", fk.attname)
        )
        for pk, version_id in rows:
            found.append(
                DatasetUse(
                    version_id=version_id,
                    consumer_kind=model._meta.label_lower,
                    consumer_id=str(pk),
                )
            )
    return found


def reach_of_raw_file(raw_file: RawFile) -> Reach:
    """Every version (and its consumers) that holds ``raw_file`` or a file with the same
    content registered elsewhere (the same bytes scanned twice are the same patient data)."""
    same = list(
        RawFile.objects.filter(sha256=raw_file.sha256).order_by("pk").values_list("pk", flat=True)
    )
    members = DatasetMember.objects.filter(raw_file_id__in=same)
    return _reach(f"raw file {raw_file.pk}", members, same)


def reach_of_patient(pseudonym: str) -> Reach:
    """Every version, training run and checkpoint a pseudonymized patient's data reached.

    Matches the pseudonym on the lineage rows (the sample's patient) and on the de-id
    results (the file's own), so neither a file without a pseudonym of its own nor a sample
    whose first file named another patient hides data.
    """
    # The patient's own files as a list first: an OR with a subquery makes PostgreSQL scan the
    # whole lineage table (80 ms at 200,000 rows); two index lookups do not (bench/).
    own = sorted(
        set(
            DeidFileResult.objects.filter(patient_pseudonym=pseudonym).values_list(
                "raw_file_id", flat=True
            )
        )
    )
    members = DatasetMember.objects.filter(Q(patient_pseudonym=pseudonym) | Q(raw_file_id__in=own))
    raw_ids = sorted(set(members.values_list("raw_file_id", flat=True)) | set(own))
    reach = _reach(f"patient {pseudonym}", members, raw_ids)
    reach.patient = pseudonym
    reach.unlinked_files = DatasetMember.objects.filter(patient_pseudonym="").count()
    reach.consent_history = consent_history(pseudonym)
    reach.withdrawal = next(
        (w for w in reversed(reach.consent_history) if not hasattr(w, "reinstatement")), None
    )
    return reach


def find_raw_files(query: str) -> QuerySet[RawFile]:
    """Raw files by id (digits) or SHA-256 (64 hex digits)."""
    query = query.strip().lower()
    if query.isdigit():
        return RawFile.objects.filter(pk=int(query))
    if len(query) == 64 and all(c in "0123456789abcdef" for c in query):
        return RawFile.objects.filter(sha256=query)
    return RawFile.objects.none()


def versions_used_by(consumer_kind: str, consumer_id: str | int) -> QuerySet[DatasetVersion]:
    """The versions a training run / checkpoint read: its ``DatasetUse`` rows, and the
    version its own foreign key names when ``consumer_kind`` is a model with one."""
    ids = set(
        DatasetUse.objects.filter(
            consumer_kind=consumer_kind, consumer_id=str(consumer_id)
        ).values_list("version_id", flat=True)
    )
    for model, fk in consumer_relations():
        if model._meta.label_lower == consumer_kind and str(consumer_id).isdigit():
            ids |= set(
                model._default_manager.filter(pk=int(consumer_id))
                .exclude(**{fk.attname: None})
                .values_list(fk.attname, flat=True)
            )
    return DatasetVersion.objects.filter(pk__in=ids).order_by("name", "number")


def lineage_of_consumer(consumer_kind: str, consumer_id: str | int) -> QuerySet[DatasetMember]:
    """Every file behind a training run or checkpoint, across the versions it read."""
    return (
        DatasetMember.objects.filter(version__in=list(versions_used_by(consumer_kind, consumer_id)))
        .select_related("raw_file", "raw_file__source", "raw_file__batch", "run", "version")
        .order_by("version_id", "sample_key", "raw_file_id")
    )


def consumer_versions(consumer_kind: str, consumer_id: str | int) -> list[DatasetVersion]:
    """The versions a consumer read (each knows its ``file_count`` and ``sample_count`` from
    its build): the head of the "what data is behind this run" page."""
    return list(versions_used_by(consumer_kind, consumer_id))


def record_dataset_use(
    version: DatasetVersion,
    *,
    consumer_kind: str,
    consumer_id: str | int,
    acting_user: User | None,
    label: str = "",
) -> DatasetUse:
    """The lineage hook: a training run or checkpoint records that it read ``version``.

    Idempotent (one row per version and consumer). Only ready versions can be used.
    """
    if version.status != DatasetVersion.Status.READY:
        raise DatasetError(f"{version.label} is {version.status}; only ready versions are used")
    if "." not in consumer_kind or len(consumer_kind) > 60:
        raise DatasetError(f"consumer kind {consumer_kind!r} must look like 'app.model'")
    with transaction.atomic():
        use, created = DatasetUse.objects.get_or_create(
            version=version,
            consumer_kind=consumer_kind,
            consumer_id=str(consumer_id),
            defaults={"label": label[:200], "recorded_by_id": getattr(acting_user, "pk", None)},
        )
        if created:
            record(
                "datasets.dataset_use_recorded",
                _resource(version),
                actor=acting_user,
                details={"consumer_kind": consumer_kind, "consumer_id": str(consumer_id)},
            )
    return use


# --- consent withdrawal ----------------------------------------------------------------------

# A case or ticket number ("DPO-2026-041"): never free text, which could carry a name.
REFERENCE_PATTERN = re.compile(r"[A-Za-z0-9_.:/#-]{0,80}\Z")
_ONE_LINE = re.compile(r"[\x00-\x1f\x7f]")


def _consent_fields(pseudonym: str, reference: str) -> tuple[str, str]:
    pseudonym, reference = (pseudonym or "").strip(), (reference or "").strip()
    if not pseudonym or len(pseudonym) > 80 or _ONE_LINE.search(pseudonym):
        raise DatasetError("a pseudonym is 1 to 80 characters on one line")
    if not REFERENCE_PATTERN.match(reference):
        raise DatasetError(
            "the reference is a case number: letters, digits and - _ . : / #, at most 80"
        )
    return pseudonym, reference


def active_withdrawals() -> QuerySet[ConsentWithdrawal]:
    """Withdrawals in force: those no reinstatement has ended."""
    return ConsentWithdrawal.objects.filter(reinstatement__isnull=True)


def withdraw_consent(
    pseudonym: str, *, reference: str, acting_user: User | None
) -> tuple[ConsentWithdrawal, bool]:
    """Record that a patient withdrew consent: no version built afterwards packs their files.

    Refuses a pseudonym that no de-identified file carries (a typo would protect nobody) and
    a reference that is not a case number. A second call returns the first row (``created``
    False). The audit event's state holds the pseudonym and reference (hashed, like all
    state); its details say which versions already hold the patient's data.
    """
    pseudonym, reference = _consent_fields(pseudonym, reference)
    if not (
        DeidFileResult.objects.filter(patient_pseudonym=pseudonym).exists()
        or DatasetMember.objects.filter(patient_pseudonym=pseudonym).exists()
    ):
        raise DatasetError(f"no de-identified file belongs to patient {pseudonym}")
    with transaction.atomic():
        # Two officers recording the same request at once may both write a row: harmless,
        # both are in force and a reinstatement ends every one of them.
        row = active_withdrawals().filter(patient_pseudonym=pseudonym).first()
        created = row is None
        if row is None:
            row = ConsentWithdrawal.objects.create(
                patient_pseudonym=pseudonym, reference=reference, recorded_by=acting_user
            )
            reach = reach_of_patient(pseudonym)
            record(
                "datasets.consent_withdrawn",
                _resource(row),
                actor=acting_user,
                post={"patient_pseudonym": pseudonym, "reference": reference},
                details={
                    "versions_holding": [v.version.pk for v in reach.versions],
                    "consumers_of_those": len(reach.uses),
                },
            )
    return row, created


def withdrawn_members() -> QuerySet[DatasetMember]:
    """Packed files whose sample belongs to a patient who withdrew consent.

    The withdrawals are read first, so the lineage table is searched through its pseudonym
    index; a subquery made both databases scan it."""
    return DatasetMember.objects.filter(patient_pseudonym__in=withdrawn_pseudonyms())


def withdrawn_pseudonyms() -> set[str]:
    """Every patient whose consent withdrawal is in force. Withdrawals are few (patients,
    not files): the table is read whole, and the packer, the lineage checks and review
    match against the set."""
    return set(active_withdrawals().values_list("patient_pseudonym", flat=True))


def reinstate_consent(
    pseudonym: str, *, reference: str, acting_user: User | None
) -> ConsentReinstatement:
    """End a patient's withdrawal: they consented again (or it was recorded against the
    wrong patient). Later builds pack them again, older versions are no longer flagged and
    review offers their items again; versions built meanwhile stay without them.

    Needs a withdrawal in force and a case number (the new consent's, or the correction's):
    undoing a withdrawal with nothing to show for it is refused. Both rows stay (append-only),
    so the patient report reads the history in order. Audited like the withdrawal: pseudonym
    and case number only as the hash of the state.
    """
    pseudonym, reference = _consent_fields(pseudonym, reference)
    if not reference:
        raise DatasetError("re-consent needs the case number of the new consent or correction")
    try:
        return _reinstate(pseudonym, reference, acting_user)
    except IntegrityError:
        # Another officer's re-consent ended the same withdrawal a moment earlier (the lock
        # does not re-read the join); it is no longer in force either way.
        raise DatasetError(f"patient {pseudonym} has no consent withdrawal in force") from None


def _reinstate(pseudonym: str, reference: str, acting_user: User | None) -> ConsentReinstatement:
    with transaction.atomic():
        rows = list(
            active_withdrawals()
            .select_for_update(of=("self",))
            .filter(patient_pseudonym=pseudonym)
            .order_by("recorded_at", "pk")
        )
        if not rows:
            raise DatasetError(f"patient {pseudonym} has no consent withdrawal in force")
        made = [
            ConsentReinstatement.objects.create(
                withdrawal=row, reference=reference, recorded_by=acting_user
            )
            for row in rows
        ]
        record(
            "datasets.consent_reinstated",
            _resource(made[0]),
            actor=acting_user,
            post={"patient_pseudonym": pseudonym, "reference": reference},
            details={"withdrawals": [row.pk for row in rows]},
        )
    return made[0]


def consent_history(pseudonym: str) -> list[ConsentWithdrawal]:
    """A patient's withdrawals, oldest first, each with its reinstatement if any."""
    return list(
        ConsentWithdrawal.objects.filter(patient_pseudonym=pseudonym)
        .select_related("recorded_by", "reinstatement", "reinstatement__recorded_by")
        .order_by("recorded_at", "pk")
    )


def versions_holding_withdrawn(version_ids: list[int]) -> set[int]:
    """Which of these versions hold a sample of a patient who withdrew consent since."""
    members = withdrawn_members().filter(version_id__in=version_ids)
    return set(members.values_list("version_id", flat=True).distinct())


def trainable_versions() -> QuerySet[DatasetVersion]:
    """Ready versions with no sample of a patient who withdrew consent after their build:
    the ones a new training run may read."""
    touched = withdrawn_members().values("version_id")
    return DatasetVersion.objects.filter(status=DatasetVersion.Status.READY).exclude(pk__in=touched)


def withdrawn_samples(version: DatasetVersion) -> int:
    """How many of ``version``'s samples belong to patients who withdrew consent since."""
    return withdrawn_members().filter(version=version).values("sample_key").distinct().count()


# --- annotation sets -------------------------------------------------------------------------


class AnnotationError(DatasetError):
    """An uploaded label set was refused; ``errors`` lists the lines and reasons."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors[:5]))
        self.errors = errors


def _parse_labels(data: bytes, fmt: str, keys: set[str]) -> tuple[int, int]:
    """Check every label names a sample of the version; returns (labels, distinct samples)."""
    errors: list[str] = []
    seen: set[str] = set()
    count = 0
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise AnnotationError(["the file is not UTF-8"]) from None
    if fmt == "jsonl":
        rows: list[tuple[int, Any]] = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append((n, json.loads(line)))
            except json.JSONDecodeError as exc:
                errors.append(f"line {n}: not JSON ({exc.msg})")
    else:
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or "key" not in reader.fieldnames:
            raise AnnotationError(["line 1: the CSV header must have a 'key' column"])
        rows = [(n, row) for n, row in enumerate(reader, 2)]
    for n, row in rows:
        key = row.get("key") if isinstance(row, dict) else None
        if not isinstance(key, str) or not key:
            errors.append(f"line {n}: no 'key'")
        elif key not in keys:
            errors.append(f"line {n}: sample {key!r} is not in this dataset version")
        else:
            seen.add(key)
            count += 1
        if len(errors) >= 20:
            errors.append("(stopped after 20 errors)")
            break
    if errors:
        raise AnnotationError(errors)
    if not count:
        raise AnnotationError(["the file has no labels"])
    return count, len(seen)


def _write_once(path: Path, data: bytes) -> None:
    """Create ``path`` with ``data``; never replaces an existing file (link is exclusive)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    try:
        os.link(tmp, path)
    except FileExistsError:
        # Left by an upload whose transaction then failed: fine if it holds these bytes.
        if sha256_file(path) != hashlib.sha256(data).hexdigest():
            raise DatasetError(f"{path.name} exists with other content; never rewritten") from None
    finally:
        tmp.unlink(missing_ok=True)
    path.chmod(0o444)
    fsync_dir(path.parent)


def add_annotation_set(
    version: DatasetVersion,
    *,
    name: str,
    data: bytes,
    filename: str,
    quality_score: float,
    acting_user: User | None,
    notes: str = "",
) -> AnnotationSet:
    """Store a new version of label set ``name`` on a ready dataset version.

    The file (JSON lines or CSV, each label with a ``key`` naming a sample of the version) is
    checked, written once next to the version and pinned by its sha256; earlier versions of the
    set are never touched.
    """
    from django.utils.text import slugify

    if version.status != DatasetVersion.Status.READY:
        raise DatasetError(f"{version.label} is {version.status}; label only ready versions")
    if not name or slugify(name) != name:
        raise DatasetError(f"label set name {name!r} must be a slug")
    if not 0.0 <= float(quality_score) <= 1.0:
        raise DatasetError(f"quality score {quality_score} must be between 0 and 1")
    if len(data) > MAX_ANNOTATION_BYTES:
        raise DatasetError(f"label file is {len(data)} bytes; the limit is {MAX_ANNOTATION_BYTES}")
    suffix = Path(filename).suffix.lower()
    fmt = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}.get(suffix)
    if fmt is None:
        raise DatasetError(f"label file type {suffix or filename!r} is not .jsonl or .csv")
    # The index files hold every sample key, follow-on waveform samples included.
    labels, samples = _parse_labels(data, fmt, _all_sample_keys(version))
    digest = hashlib.sha256(data).hexdigest()
    with transaction.atomic():
        number = (
            AnnotationSet.objects.filter(version=version, name=name).aggregate(n=Max("number"))["n"]
            or 0
        ) + 1
        path = (
            Path(version.root).parent
            / f"v{version.number}.labels"
            / name
            / f"v{number}-{digest[:12]}.{fmt}"
        )
        _write_once(path, data)
        try:
            with transaction.atomic():
                annotation = AnnotationSet.objects.create(
                    version=version,
                    name=name,
                    number=number,
                    author=acting_user,
                    quality_score=float(quality_score),
                    notes=notes[:300],
                    path=str(path),
                    sha256=digest,
                    size=len(data),
                    format=fmt,
                    label_count=labels,
                    sample_count=samples,
                )
        except IntegrityError:
            raise DatasetError(f"{name} v{number} was just added by someone else; retry") from None
        record(
            "datasets.annotation_set_added",
            _resource(annotation),
            actor=acting_user,
            post={"sha256": digest, "number": number, "version": version.pk},
            details={"version": version.pk, "number": number, "sha256": digest},
        )
    return annotation


def _all_sample_keys(version: DatasetVersion) -> set[str]:
    """Every sample key in the version's index files (includes follow-on samples)."""
    keys: set[str] = set()
    root = Path(version.root)
    for index in sorted((root / "index").glob("*.json")):
        keys.update(json.loads(index.read_text())["samples"])
    return keys


# --- overview ----------------------------------------------------------------------------------


def overview() -> list[tuple[str, Any]]:
    """The datasets' card on the overview page."""
    counts = dict(DatasetVersion.objects.values_list("status").annotate(n=Count("pk")).order_by())
    return [
        (_("versions ready"), counts.get(DatasetVersion.Status.READY, 0)),
        (_("building"), counts.get(DatasetVersion.Status.BUILDING, 0)),
    ]


def lineage_overview() -> list[tuple[str, Any]]:
    """The lineage card on the overview page: consent withdrawals and what they touch."""
    return [
        (_("consent withdrawals in force"), active_withdrawals().count()),
        (
            _("versions holding withdrawn data"),
            withdrawn_members().values("version_id").distinct().count(),
        ),
    ]
