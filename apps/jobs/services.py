"""The jobs app's operations: the only write path for runs and attempts.

Every function that changes state does it inside ``transaction.atomic()``, moves state by
conditional UPDATE (``filter(pk=..., state=OLD).update(state=NEW)``, acting only when a row
changed, so retried tasks and overlapping reconcile passes stay idempotent), writes its audit
event in the same transaction, and schedules side effects (Celery tasks, WebSocket pushes)
with ``transaction.on_commit``. Views, the API, tasks and commands call these; none saves a
model itself.

Lifecycle::

    launch_run -> attempt 1 CREATED -(task submit_attempt)-> PENDING -> RUNNING -> COMPLETED
    cancel_run / requeue_run: scheduler calls in tasks; the reconciler records the outcome
    NODE_FAIL / PREEMPTED / trainer exit 75: a new attempt, up to max_auto_requeues
    resume_run (run finished): attempt n+1 from the newest verified checkpoint

Identity (issue 7.5): with ``slurmrestd`` and per-user tokens, a job is submitted as the
operator's own cluster user with a short-lived JWT minted for that user; otherwise as the
control plane's service account, with the operator in the job comment and the audit trail.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import transaction
from django.db.models import Count, Max
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from apps.audit.services import record
from apps.jobs import checkpoints as ckpt
from apps.jobs.models import (
    ACTIVE_RUN_STATES,
    POLLED_ATTEMPT_STATES,
    Attempt,
    AttemptState,
    RunState,
    TrainingRun,
)
from apps.jobs.rendering import Rendered, job_spec, render, run_dir
from apps.jobs.schedulers import (
    ClusterInfo,
    JobState,
    Scheduler,
    SchedulerError,
    get_scheduler,
    submit_once,
)
from apps.jobs.schedulers.base import read_tail
from apps.jobs.validation import RunPlan, RunSpec, plan_run

if TYPE_CHECKING:
    from apps.accounts.models import User
    from apps.datasets.models import DatasetVersion

logger = logging.getLogger(__name__)

# The trainer's exit code for "stopped by a signal after a checkpoint: requeue me".
EXIT_REQUEUE = 75
# Attempts that end like this are resumed automatically (up to the run's limit).
AUTO_REQUEUE_STATES = frozenset({AttemptState.NODE_FAIL, AttemptState.PREEMPTED})
SCHEDULER_NAMES = ("local", "slurm", "slurmrestd", "pyslurm")
_CLUSTER_USER_RE = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")
# How long a submitting worker holds an attempt; longer than any scheduler call's timeout.
SUBMIT_LEASE = timedelta(seconds=120)
# After a transient submit error: the task retries after SUBMIT_RETRY_S, the lease is held a
# little less so the retry finds it free.
SUBMIT_RETRY_S = 60
SUBMIT_RETRY_HOLD = timedelta(seconds=SUBMIT_RETRY_S - 5)
# A job the scheduler does not list this soon after submission is not lost yet.
LOST_GRACE = timedelta(seconds=60)


class JobsError(Exception):
    """An operation that cannot be done now; the message is for the operator."""


class LaunchRefused(JobsError):
    """The run spec failed validation; ``plan.errors`` names every field."""

    def __init__(self, plan: RunPlan) -> None:
        super().__init__("; ".join(f"{k}: {' '.join(v)}" for k, v in plan.errors.items()))
        self.plan = plan


# --- settings and adapters --------------------------------------------------------------------


def default_scheduler() -> str:
    return str(getattr(settings, "JOBS_SCHEDULER", "local"))


def scheduler_options(name: str) -> dict[str, Any]:
    """Adapter options from JOBS_SCHEDULER_OPTIONS; the local adapter keeps its jobs under
    var/ so the web and worker processes see the same ones."""
    options = dict(getattr(settings, "JOBS_SCHEDULER_OPTIONS", {}).get(name, {}))
    if name == "local":
        options.setdefault("state_dir", str(Path(settings.VAR_DIR) / "local-scheduler"))
    return options


def service_scheduler(name: str) -> Scheduler:
    """The adapter acting as the control plane's service account (status, cancel, logs)."""
    return get_scheduler(name, scheduler_options(name))


def cluster_user_for(user: Any) -> str | None:
    """The operator's cluster account: JOBS_CLUSTER_USERS maps usernames, else the username
    itself when it is a valid cluster user name; None when there is none."""
    if user is None:
        return None
    mapping = getattr(settings, "JOBS_CLUSTER_USERS", {})
    name = mapping.get(user.get_username(), user.get_username())
    return name if isinstance(name, str) and _CLUSTER_USER_RE.fullmatch(name) else None


def service_account() -> str:
    return str(getattr(settings, "JOBS_SERVICE_ACCOUNT", os.environ.get("USER", "medctl")))


def submitting_scheduler(run: TrainingRun, user: Any) -> tuple[Scheduler, str, str]:
    """(adapter, cluster user, how) for submitting ``run`` on behalf of ``user``.

    slurmrestd with JOBS_PER_USER_TOKENS: a JWT minted for the operator's cluster user (15
    minutes) so the job runs, and is accounted, as them. Otherwise the service account.
    """
    if run.scheduler == "slurmrestd" and getattr(settings, "JOBS_PER_USER_TOKENS", True):
        cluster_user = cluster_user_for(user)
        if cluster_user:
            minter = get_scheduler("slurm", scheduler_options("slurm"))
            token = minter.mint_token(cluster_user, lifespan_s=900)  # type: ignore[attr-defined]
            options = {
                k: v
                for k, v in scheduler_options("slurmrestd").items()
                if k not in ("token_file", "token", "user_name")
            }
            options.update(user_name=cluster_user, token=token)
            return get_scheduler("slurmrestd", options), cluster_user, "user-token"
    return service_scheduler(run.scheduler), service_account(), "service-account"


# --- small helpers ----------------------------------------------------------------------------


def _actor_id(actor: Any) -> int | None:
    if actor is None or isinstance(actor, int):
        return actor
    return getattr(actor, "pk", None)


def _run_res(run: TrainingRun | int) -> str:
    return f"jobs.trainingrun:{getattr(run, 'pk', run)}"


def _attempt_res(attempt: Attempt) -> str:
    return f"jobs.attempt:{attempt.pk}"


_VERSION = "dataset_version_id"  # a RunSpec field; the run holds the row itself


def run_spec_of(run: TrainingRun) -> RunSpec:
    """The spec a stored run was launched with (for re-rendering later attempts): every
    RunSpec field is a column of the run."""
    return RunSpec(**{f.name: getattr(run, f.name) for f in fields(RunSpec)})


def ready_dataset_versions() -> Any:
    """Dataset versions a new run may use: built, verified and immutable, and holding no
    sample of a patient who withdrew consent since (``check_run`` refuses those)."""
    from apps.datasets.services import trainable_versions

    return trainable_versions()


def tokenizer_choices() -> list[Any]:
    """Ready tokenizers trained on versions a new run may use (the launch form offers their
    files; any other absolute path may still be typed)."""
    from apps.datasets.tokenizers import ready_tokenizers

    return ready_tokenizers()


def _dataset(spec: RunSpec) -> DatasetVersion | None:
    from apps.datasets.models import DatasetVersion

    return DatasetVersion.objects.filter(pk=spec.dataset_version_id).first()


def withdrawn_in_run(run: TrainingRun) -> int:
    """How many samples of the run's dataset version belong to patients who withdrew consent
    since the version was built (the run page says so; whether to stop the run is the
    privacy officer's call)."""
    from apps.datasets.services import withdrawn_samples

    return withdrawn_samples(run.dataset_version)


def check_run(spec: RunSpec) -> RunPlan:
    """Validate a spec against the trainer's config and its dataset version."""
    version = _dataset(spec)
    plan = plan_run(
        spec,
        shard_count=version.shard_count if version else None,
        dataset_ready=bool(version and version.is_ready),
        dataset_root=version.root if version else "",
    )
    if version is None:
        plan.error("dataset_version", "no such dataset version")
    elif version.is_ready:
        from apps.datasets.services import withdrawn_samples

        # Training again on data whose patient withdrew consent is further processing: a new
        # run is refused (runs already going may resume; the lineage report lists them).
        withdrawn = withdrawn_samples(version)
        if withdrawn:
            plan.error(
                "dataset_version",
                ngettext(
                    "%(n)d sample of %(version)s belongs to a patient who withdrew consent "
                    "after it was built; build a new version, which leaves it out",
                    "%(n)d samples of %(version)s belong to patients who withdrew consent "
                    "after it was built; build a new version, which leaves them out",
                    withdrawn,
                )
                % {"n": withdrawn, "version": version.label},
            )
    if spec.tokenizer:
        from apps.datasets.tokenizers import trained_on_withdrawn

        if (source := trained_on_withdrawn(spec.tokenizer)) is not None:
            plan.error(
                "tokenizer",
                _(
                    "this tokenizer was trained on %(version)s, which holds text of a patient "
                    "who withdrew consent since; train one on a version built after"
                )
                % {"version": source.label},
            )
    if spec.scheduler and spec.scheduler not in SCHEDULER_NAMES:
        plan.error("scheduler", f"{spec.scheduler!r} is not one of {', '.join(SCHEDULER_NAMES)}")
    return plan


def _render(spec: RunSpec, plan: RunPlan, *, run_id: int, attempt: int) -> Rendered:
    version = _dataset(spec)
    return render(
        spec,
        run_id=run_id,
        attempt=attempt,
        dataset_root=version.root if version else "/",
        grad_accum_steps=plan.grad_accum_steps,
        scheduler=spec.scheduler or default_scheduler(),
    )


def preview_run(spec: RunSpec) -> tuple[RunPlan, str | None]:
    """What the launch form shows before submitting: the plan and, when it is valid, the
    script the first attempt would run (paths show run id 0 until the run exists)."""
    spec = replace(spec, scheduler=spec.scheduler or default_scheduler())
    plan = check_run(spec)
    if not plan.ok:
        return plan, None
    return plan, _render(spec, plan, run_id=0, attempt=1).script


# --- launch, resume, requeue, cancel ----------------------------------------------------------


def launch_run(spec: RunSpec, *, acting_user: User | None) -> TrainingRun:
    """Create a run and its first attempt and queue the submission (after commit).

    Raises LaunchRefused with every problem of the spec when it does not validate. Records
    the dataset version's use (lineage) and the audit event in the same transaction.
    """
    from apps.datasets.services import record_dataset_use

    spec = replace(spec, scheduler=spec.scheduler or default_scheduler())
    plan = check_run(spec)
    if not plan.ok:
        raise LaunchRefused(plan)
    version = _dataset(spec)
    assert version is not None  # check_run refused a missing version
    with transaction.atomic():
        run = TrainingRun.objects.create(
            **{f.name: getattr(spec, f.name) for f in fields(RunSpec) if f.name != _VERSION},
            dataset_version=version,
            state=RunState.SUBMITTING,
            plan=plan.as_dict(),
            created_by=acting_user,
        )
        attempt = _new_attempt(run, trigger="launch", acting_user=acting_user, plan=plan)
        record(
            "jobs.run_launched",
            _run_res(run),
            actor=acting_user,
            post={"state": run.state, "attempt": attempt.number},
            details={
                "dataset_version_id": version.pk,
                "preset": run.preset,
                "nodes": run.nodes,
                "gpus_per_node": run.gpus_per_node,
                "scheduler": run.scheduler,
                "attempt_id": attempt.pk,
                "script_sha256": _sha256(attempt.script),
            },
        )
        record_dataset_use(
            version,
            consumer_kind="jobs.trainingrun",
            consumer_id=run.pk,
            acting_user=acting_user,
            label=f"run {run.pk}",
        )
    return run


def _sha256(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def _new_attempt(
    run: TrainingRun,
    *,
    trigger: str,
    acting_user: Any,
    plan: RunPlan | None = None,
    resumed_from: ckpt.CheckpointInfo | None = None,
) -> Attempt:
    """Render and store attempt n+1 and queue its submission after commit (caller's atomic)."""
    spec = run_spec_of(run)
    if plan is None:
        plan = check_run(spec)
        if not plan.grad_accum_steps:
            raise JobsError(f"run {run.pk} no longer validates: {plan.errors}")
    number = (run.attempts.aggregate(n=Max("number"))["n"] or 0) + 1
    rendered = _render(spec, plan, run_id=run.pk, attempt=number)
    attempt = Attempt.objects.create(
        run=run,
        number=number,
        token=f"medctl-r{run.pk}-a{number}-{secrets.token_hex(6)}",
        script=rendered.script,
        trigger=trigger,
        resumed_from_path=resumed_from.path if resumed_from else "",
        resumed_from_step=resumed_from.step if resumed_from else None,
        submitted_via=run.scheduler,
        created_by_id=_actor_id(acting_user),
    )
    from apps.jobs import tasks

    transaction.on_commit(lambda: tasks.submit_attempt.delay(attempt.pk))
    return attempt


def current_attempt(run: TrainingRun) -> Attempt | None:
    return run.attempts.order_by("-number").first()


def resume_run(run: TrainingRun, *, acting_user: User | None) -> Attempt:
    """A new attempt of a finished run, from its newest verified checkpoint (or from scratch
    when there is none or the run's policy says so)."""
    latest = None
    if run.resume_policy == TrainingRun.ResumePolicy.LATEST:
        latest = ckpt.newest_verified(f"{run_dir(run.name, run.pk)}/checkpoints")
    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().get(pk=run.pk)
        if run.state in ACTIVE_RUN_STATES:
            raise JobsError(
                _("Run %(pk)s is %(state)s; cancel it or wait before resuming.")
                % {"pk": run.pk, "state": run.get_state_display()}
            )
        previous = run.state
        attempt = _new_attempt(run, trigger="resume", acting_user=acting_user, resumed_from=latest)
        TrainingRun.objects.filter(pk=run.pk, state=previous).update(
            state=RunState.SUBMITTING, updated=timezone.now()
        )
        record(
            "jobs.run_resumed",
            _run_res(run),
            actor=acting_user,
            pre={"state": previous},
            post={"state": RunState.SUBMITTING, "attempt": attempt.number},
            details={
                "attempt_id": attempt.pk,
                "checkpoint_step": latest.step if latest else None,
            },
        )
        _push_after_commit(run.pk, {"type": "run.state", "state": RunState.SUBMITTING})
    return attempt


def requeue_run(run: TrainingRun, *, acting_user: User | None) -> Attempt:
    """Ask the scheduler to stop the current job and queue it again under the same job id
    (its restart count goes up; the trainer resumes from its newest checkpoint)."""
    with transaction.atomic():
        attempt = current_attempt(run)
        if attempt is None or not attempt.job_id or attempt.state not in POLLED_ATTEMPT_STATES:
            raise JobsError(
                _("Run %(pk)s has no queued or running job to requeue; resume it instead.")
                % {"pk": run.pk}
            )
        record(
            "jobs.run_requeue_requested",
            _run_res(run),
            actor=acting_user,
            details={"attempt_id": attempt.pk, "job_id": attempt.job_id},
        )
        from apps.jobs import tasks

        attempt_id = attempt.pk
        transaction.on_commit(lambda: tasks.requeue_attempt.delay(attempt_id))
    return attempt


def cancel_run(run: TrainingRun, *, acting_user: User | None) -> Attempt | None:
    """Cancel the current attempt: at once when it was never submitted, otherwise by
    asking the scheduler (a task), after which the reconciler records CANCELLED."""
    with transaction.atomic():
        attempt = current_attempt(run)
        if attempt is None or run.state not in ACTIVE_RUN_STATES:
            raise JobsError(
                _("Run %(pk)s is %(state)s; there is nothing to cancel.")
                % {"pk": run.pk, "state": run.get_state_display()}
            )
        record(
            "jobs.run_cancel_requested",
            _run_res(run),
            actor=acting_user,
            details={"attempt_id": attempt.pk, "job_id": attempt.job_id or None},
        )
        if not attempt.job_id:
            changed = Attempt.objects.filter(
                pk=attempt.pk, state=AttemptState.CREATED, job_id=""
            ).update(state=AttemptState.CANCELLED, ended_at=timezone.now())
            if changed:
                _set_run_state(run.pk, RunState.CANCELLED, attempt, acting_user)
                return attempt
        from apps.jobs import tasks

        attempt_id = attempt.pk
        transaction.on_commit(lambda: tasks.cancel_attempt.delay(attempt_id))
    return attempt


# --- submission (called by the task) ----------------------------------------------------------


@dataclass
class SubmitOutcome:
    """What one submission try did: ``job_id`` when the scheduler holds the job."""

    job_id: str | None = None
    retry: bool = False
    message: str = ""


def submit_attempt(attempt_id: int) -> SubmitOutcome:
    """Submit attempt ``attempt_id`` exactly once, however often it is retried.

    A lease (conditional UPDATE of ``claimed_until``) keeps two workers from racing; the
    token in the job comment makes ``submit_once`` find a job an earlier, crashed try created.
    Transient scheduler errors return ``retry=True`` (the task retries with backoff);
    permanent ones mark the attempt SUBMIT_FAILED with the scheduler's message.
    """
    now = timezone.now()
    claimed = (
        Attempt.objects.filter(pk=attempt_id, state=AttemptState.CREATED, job_id="")
        .exclude(claimed_until__gt=now)
        .update(claimed_until=now + SUBMIT_LEASE)
    )
    if not claimed:
        return SubmitOutcome(message="already submitted, cancelled or being submitted")
    attempt = Attempt.objects.select_related("run", "created_by").get(pk=attempt_id)
    run = attempt.run
    Attempt.objects.filter(pk=attempt_id).update(submit_tries=attempt.submit_tries + 1)
    try:
        scheduler, cluster_user, how = submitting_scheduler(run, attempt.created_by)
        _prepare_folders(run)
        spec = run_spec_of(run)
        rendered = Rendered(
            script=attempt.script,
            workdir=run_dir(run.name, run.pk),
            save_dir=f"{run_dir(run.name, run.pk)}/checkpoints",
            output=f"{run_dir(run.name, run.pk)}/logs/%x-%j.out",
        )
        job = job_spec(spec, rendered, run_id=run.pk, comment=_comment(attempt), env={})
        job_id = submit_once(scheduler, job, attempt.token)
    except SchedulerError as exc:
        if not exc.permanent:
            _hold_for_retry(attempt_id, exc.message)
            return SubmitOutcome(retry=True, message=exc.message)
        Attempt.objects.filter(pk=attempt_id).update(claimed_until=None, error=exc.message[:500])
        _fail_submission(attempt, exc.message)
        return SubmitOutcome(message=exc.message)
    except OSError as exc:
        _hold_for_retry(attempt_id, str(exc))
        return SubmitOutcome(retry=True, message=str(exc))
    with transaction.atomic():
        changed = Attempt.objects.filter(
            pk=attempt_id, state=AttemptState.CREATED, job_id=""
        ).update(
            job_id=job_id,
            state=AttemptState.PENDING,
            submitted_at=timezone.now(),
            submitted_as=cluster_user,
            submitted_via=run.scheduler,
            claimed_until=None,
            error="",
        )
        if changed:
            record(
                "jobs.attempt_submitted",
                _attempt_res(attempt),
                actor=attempt.created_by_id,
                pre={"state": AttemptState.CREATED},
                post={"state": AttemptState.PENDING, "job_id": job_id},
                details={
                    "run_id": run.pk,
                    "job_id": job_id,
                    "scheduler": run.scheduler,
                    "submitted_as": cluster_user,
                    "identity": how,
                    "token": attempt.token,
                },
            )
            attempt.refresh_from_db()
            _set_run_state(run.pk, RunState.QUEUED, attempt, None, only_from=(RunState.SUBMITTING,))
    if not changed:
        # Cancelled while we were submitting: the job exists now, so stop it too.
        Attempt.objects.filter(pk=attempt_id, job_id="").update(job_id=job_id, claimed_until=None)
        try:
            scheduler.cancel(job_id)
        except SchedulerError as exc:
            logger.warning(
                "could not cancel job %s of cancelled attempt %s: %s", job_id, attempt_id, exc
            )
    return SubmitOutcome(job_id=job_id)


def _hold_for_retry(attempt_id: int, message: str) -> None:
    """Keep the lease until just before the task's retry: the reconciler does not queue a
    second submission meanwhile, so an outage never piles up retrying messages."""
    Attempt.objects.filter(pk=attempt_id).update(
        claimed_until=timezone.now() + SUBMIT_RETRY_HOLD, error=message[:500]
    )


def _comment(attempt: Attempt) -> str:
    """The job comment: the idempotency token and who asked (ids and ASCII names only)."""
    user = attempt.created_by
    name = user.get_username() if user else ""
    who = name if re.fullmatch(r"[A-Za-z0-9._@+-]{1,64}", name or "") else "-"
    return f"medctl:{attempt.token} operator:{who} operator_id:{attempt.created_by_id or '-'}"


def _prepare_folders(run: TrainingRun) -> None:
    """The run folder, its logs and checkpoints folders: the scheduler does not create the
    folder of --output, and a missing one makes the job fail without a word."""
    base = Path(run_dir(run.name, run.pk))
    for sub in ("logs", "checkpoints"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    mode = getattr(settings, "JOBS_RUN_DIR_MODE", None)
    if mode is not None:
        for path in (base, base / "logs", base / "checkpoints"):
            path.chmod(mode)


def _fail_submission(attempt: Attempt, message: str) -> None:
    with transaction.atomic():
        changed = Attempt.objects.filter(
            pk=attempt.pk, state=AttemptState.CREATED, job_id=""
        ).update(state=AttemptState.SUBMIT_FAILED, error=message[:500], ended_at=timezone.now())
        if changed:
            record(
                "jobs.attempt_submit_failed",
                _attempt_res(attempt),
                actor=None,
                pre={"state": AttemptState.CREATED},
                post={"state": AttemptState.SUBMIT_FAILED},
                details={"run_id": attempt.run_id},
            )
            attempt.refresh_from_db()
            _set_run_state(attempt.run_id, RunState.FAILED, attempt, None)


# --- scheduler calls for cancel and requeue (called by tasks) ---------------------------------


def cancel_job(attempt_id: int) -> None:
    """Cancel the attempt's job in the scheduler, then record what it says now."""
    attempt = Attempt.objects.select_related("run").get(pk=attempt_id)
    if not attempt.job_id:
        return
    scheduler = service_scheduler(attempt.run.scheduler)
    scheduler.cancel(attempt.job_id)
    refresh_attempts([attempt], scheduler=scheduler)


def requeue_job(attempt_id: int) -> None:
    """Requeue the attempt's job in the scheduler; a refusal is kept on the attempt."""
    attempt = Attempt.objects.select_related("run").get(pk=attempt_id)
    scheduler = service_scheduler(attempt.run.scheduler)
    try:
        scheduler.requeue(attempt.job_id)
    except SchedulerError as exc:
        Attempt.objects.filter(pk=attempt.pk).update(error=exc.message[:500])
        if exc.permanent:
            return
        raise
    refresh_attempts([attempt], scheduler=scheduler)


# --- reconciliation ---------------------------------------------------------------------------

# Run state for the state of its current attempt.
RUN_STATE_FOR: dict[str, str] = {
    AttemptState.CREATED: RunState.SUBMITTING,
    AttemptState.PENDING: RunState.QUEUED,
    AttemptState.REQUEUED: RunState.QUEUED,
    AttemptState.RUNNING: RunState.RUNNING,
    AttemptState.COMPLETING: RunState.RUNNING,
    AttemptState.COMPLETED: RunState.COMPLETED,
    AttemptState.FAILED: RunState.FAILED,
    AttemptState.TIMEOUT: RunState.FAILED,
    AttemptState.NODE_FAIL: RunState.FAILED,
    AttemptState.PREEMPTED: RunState.FAILED,
    AttemptState.OUT_OF_MEMORY: RunState.FAILED,
    AttemptState.SUBMIT_FAILED: RunState.FAILED,
    AttemptState.CANCELLED: RunState.CANCELLED,
    AttemptState.LOST: RunState.LOST,
}


@dataclass
class ReconcileResult:
    """One pass: attempts looked at, changed, marked lost, resubmitted; scheduler errors."""

    polled: int = 0
    changed: int = 0
    lost: int = 0
    resubmitted: int = 0
    errors: list[str] = field(default_factory=list)


def reconcile(*, now: Any = None) -> ReconcileResult:
    """Bring every unfinished attempt in line with its scheduler, one status call per
    scheduler; also re-queue submissions whose task was lost (CREATED, lease expired).

    Safe to run twice at once or to kill half-way: every change is a conditional UPDATE, so
    the next pass converges.
    """
    now = now or timezone.now()
    result = ReconcileResult()
    polled = list(
        Attempt.objects.filter(state__in=POLLED_ATTEMPT_STATES)
        .exclude(job_id="")
        .select_related("run")
    )
    by_scheduler: dict[str, list[Attempt]] = {}
    for attempt in polled:
        by_scheduler.setdefault(attempt.run.scheduler, []).append(attempt)
    for name, attempts in by_scheduler.items():
        try:
            scheduler = service_scheduler(name)
            out = refresh_attempts(attempts, scheduler=scheduler, now=now)
        except SchedulerError as exc:
            # Controller down: leave every state as it is and try again next pass.
            result.errors.append(f"{name}: {exc.message}")
            continue
        result.polled += len(attempts)
        result.changed += out.changed
        result.lost += out.lost
    stale = Attempt.objects.filter(
        state=AttemptState.CREATED, job_id="", created__lt=now - timedelta(seconds=30)
    ).exclude(claimed_until__gt=now)
    from apps.jobs import tasks

    for attempt_id in stale.values_list("pk", flat=True):
        tasks.submit_attempt.delay(attempt_id)
        result.resubmitted += 1
    return result


def refresh_attempts(
    attempts: Iterable[Attempt], *, scheduler: Scheduler, now: Any = None
) -> ReconcileResult:
    """Ask ``scheduler`` about these attempts' jobs in one call and apply the answers."""
    now = now or timezone.now()
    attempts = [a for a in attempts if a.job_id]
    result = ReconcileResult(polled=len(attempts))
    if not attempts:
        return result
    states = scheduler.status([a.job_id for a in attempts])
    watched = set(
        TrainingRun.objects.filter(
            pk__in={a.run_id for a in attempts}, watched_until__gt=now
        ).values_list("pk", flat=True)
    )
    for attempt in attempts:
        job = states.get(attempt.job_id)
        if job is None:
            if attempt.submitted_at and now - attempt.submitted_at < LOST_GRACE:
                continue
            if mark_lost(attempt):
                result.lost += 1
            continue
        if apply_job_state(attempt, job):
            result.changed += 1
        elif attempt.state == AttemptState.RUNNING and attempt.run_id in watched:
            _push_log_tail(attempt, job)
    return result


def mark_lost(attempt: Attempt) -> bool:
    """The scheduler no longer knows an unfinished job (purged, or a different cluster)."""
    message = (
        f"the scheduler no longer knows job {attempt.job_id}: it ended more than the "
        "scheduler's MinJobAge ago without being seen, or it was removed by hand"
    )
    with transaction.atomic():
        changed = Attempt.objects.filter(pk=attempt.pk, state=attempt.state).update(
            state=AttemptState.LOST, error=message, ended_at=timezone.now()
        )
        if not changed:
            return False
        record(
            "jobs.attempt_lost",
            _attempt_res(attempt),
            actor=None,
            pre={"state": attempt.state},
            post={"state": AttemptState.LOST},
            details={"run_id": attempt.run_id, "job_id": attempt.job_id},
        )
        attempt.state = AttemptState.LOST
        _follow_run(attempt)
    return True


def apply_job_state(attempt: Attempt, job: JobState) -> bool:
    """Record the scheduler's view of ``attempt``'s job; True when its state changed.

    The state moves only from the value read (conditional UPDATE), so a stale or concurrent
    pass changes nothing. Restarts, reason and timing are refreshed either way.
    """
    new_state = job.state if job.state in AttemptState.values else AttemptState.PENDING
    fields: dict[str, Any] = {
        "reason": (job.reason or "")[:200],
        "restarts": max(job.restarts, attempt.restarts),
        "last_seen_at": timezone.now(),
        "nodes_used": (job.nodes or "")[:200],
    }
    if job.start_time:
        fields["started_at"] = job.start_time
    if job.is_terminal:
        fields["exit_code"] = job.exit_code
        fields["exit_signal"] = job.exit_signal
        fields["ended_at"] = job.end_time or timezone.now()
    if new_state == attempt.state and all(
        getattr(attempt, key) == value for key, value in fields.items() if key != "last_seen_at"
    ):
        return False  # nothing new: no write, so a quiet pass over 1,000 jobs stays cheap
    with transaction.atomic():
        if new_state == attempt.state:
            Attempt.objects.filter(pk=attempt.pk, state=attempt.state).update(**fields)
            restarted = job.restarts > attempt.restarts
            if restarted:
                record(
                    "jobs.attempt_restarted",
                    _attempt_res(attempt),
                    actor=None,
                    details={"run_id": attempt.run_id, "restarts": job.restarts},
                )
            return False
        changed = Attempt.objects.filter(pk=attempt.pk, state=attempt.state).update(
            state=new_state, **fields
        )
        if not changed:
            return False
        record(
            "jobs.attempt_state_changed",
            _attempt_res(attempt),
            actor=None,
            pre={"state": attempt.state},
            post={"state": new_state},
            details={
                "run_id": attempt.run_id,
                "job_id": attempt.job_id,
                "reason": fields["reason"][:100] or None,
                "exit_code": job.exit_code if job.is_terminal else None,
                "restarts": fields["restarts"],
            },
        )
        for key, value in fields.items():
            setattr(attempt, key, value)
        attempt.state = new_state
        _follow_run(attempt)
    return True


def _follow_run(attempt: Attempt) -> None:
    """Move the run after its current attempt (in the caller's transaction); resume it
    automatically after a node failure, a pre-emption or the trainer's requeue exit."""
    run = TrainingRun.objects.select_for_update().get(pk=attempt.run_id)
    latest = run.attempts.aggregate(n=Max("number"))["n"]
    if attempt.number != latest:
        return  # an older attempt finishing does not move the run
    if _wants_auto_requeue(attempt) and run.auto_requeues < run.max_auto_requeues:
        bumped = TrainingRun.objects.filter(pk=run.pk, auto_requeues=run.auto_requeues).update(
            auto_requeues=run.auto_requeues + 1, state=RunState.SUBMITTING, updated=timezone.now()
        )
        if bumped:
            latest_ckpt = None
            if run.resume_policy == TrainingRun.ResumePolicy.LATEST:
                latest_ckpt = ckpt.newest_verified(f"{run_dir(run.name, run.pk)}/checkpoints")
            new = _new_attempt(run, trigger="auto", acting_user=None, resumed_from=latest_ckpt)
            record(
                "jobs.run_auto_requeued",
                _run_res(run),
                actor=None,
                pre={"state": run.state},
                post={"state": RunState.SUBMITTING, "attempt": new.number},
                details={
                    "attempt_id": new.pk,
                    "after_state": attempt.state,
                    "exit_code": attempt.exit_code,
                    "auto_requeues": run.auto_requeues + 1,
                    "checkpoint_step": latest_ckpt.step if latest_ckpt else None,
                },
            )
            _push_after_commit(run.pk, {"type": "run.state", "state": RunState.SUBMITTING})
            return
    _set_run_state(run.pk, RUN_STATE_FOR[attempt.state], attempt, None)


def _wants_auto_requeue(attempt: Attempt) -> bool:
    """Node failure, pre-emption, or the trainer asked for it: exit 75, or (under torchrun,
    which exits 1) its requeue.json written while this attempt ran."""
    if attempt.state in AUTO_REQUEUE_STATES:
        return True
    if attempt.state != AttemptState.FAILED:
        return False
    if attempt.exit_code == EXIT_REQUEUE:
        return True
    run = attempt.run
    marker = ckpt.requeue_marker(f"{run_dir(run.name, run.pk)}/checkpoints")
    if not marker or marker.get("exit_code") != EXIT_REQUEUE:
        return False
    started = attempt.started_at or attempt.submitted_at
    written = marker.get("time")
    return bool(started and isinstance(written, int | float) and written >= started.timestamp())


def _set_run_state(
    run_id: int,
    new: str,
    attempt: Attempt,
    actor: Any,
    *,
    only_from: Iterable[str] | None = None,
) -> bool:
    """Conditional move of the run's state, audited; pushes the change to watchers."""
    run = TrainingRun.objects.filter(pk=run_id).values("state").first()
    if run is None or run["state"] == new:
        return False
    old = run["state"]
    if only_from is not None and old not in set(only_from):
        return False
    changed = TrainingRun.objects.filter(pk=run_id, state=old).update(
        state=new, updated=timezone.now()
    )
    if not changed:
        return False
    record(
        "jobs.run_state_changed",
        _run_res(run_id),
        actor=actor,
        pre={"state": old},
        post={"state": new},
        details={"attempt_id": attempt.pk, "attempt_state": attempt.state},
    )
    _push_after_commit(
        run_id,
        {
            "type": "run.state",
            "state": new,
            "attempt": attempt.number,
            "attempt_state": attempt.state,
            "reason": attempt.reason,
        },
    )
    return True


# --- live updates -----------------------------------------------------------------------------


def run_group(run_id: int) -> str:
    """The channel-layer group of a run's watchers."""
    return f"jobs.run.{int(run_id)}"


def _push(run_id: int, message: dict[str, Any]) -> None:
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(run_group(run_id), message)
    except Exception:  # a live-update hiccup must never fail a state change
        logger.warning("could not push an update for run %s", run_id, exc_info=True)


def _push_after_commit(run_id: int, message: dict[str, Any]) -> None:
    transaction.on_commit(lambda: _push(run_id, message))


def _push_log_tail(attempt: Attempt, job: JobState) -> None:
    """Send the tail of the job's output file (the path the status call just reported) to
    the run's watchers; no second scheduler call."""
    if not job.output:
        return
    try:
        text = read_tail(job.output, 16384)
    except SchedulerError:
        return
    _push(attempt.run_id, {"type": "log.tail", "attempt": attempt.number, "text": text})


WATCH_TTL = timedelta(seconds=90)


def touch_watch(run_id: int) -> None:
    """Mark a run as watched for WATCH_TTL (its page's WebSocket pings every 30 s). A
    presence signal, not a state change: not audited."""
    TrainingRun.objects.filter(pk=run_id).update(watched_until=timezone.now() + WATCH_TTL)


# --- reads ------------------------------------------------------------------------------------


def log_tail(attempt: Attempt, *, tail_bytes: int = 16384) -> str:
    """The end of the attempt's output file, or '' when it has none (yet)."""
    if not attempt.job_id:
        return ""
    try:
        return service_scheduler(attempt.run.scheduler).logs(attempt.job_id, tail_bytes=tail_bytes)
    except SchedulerError as exc:
        return f"[{exc.message}]"


def cluster_info(name: str | None = None) -> ClusterInfo:
    """Partitions, nodes and GPUs as the scheduler reports them (raises SchedulerError)."""
    return service_scheduler(name or default_scheduler()).cluster_info()


def run_checkpoints(run: TrainingRun) -> list[ckpt.CheckpointInfo]:
    """The run's checkpoints with a quick manifest check (sizes, not hashes)."""
    return ckpt.list_checkpoints(f"{run_dir(run.name, run.pk)}/checkpoints")


def run_metrics(run: TrainingRun) -> dict[str, Any] | None:
    """The trainer's latest metrics record (its JSONL log next to the checkpoints)."""
    return ckpt.latest_metrics(f"{run_dir(run.name, run.pk)}/checkpoints")


def run_metric_series(run: TrainingRun) -> dict[str, list[float | None]]:
    """The trainer's per-step series (loss, gradient norm, learning rate, tokens/s)."""
    return ckpt.metric_series(f"{run_dir(run.name, run.pk)}/checkpoints")


def run_timeline(run: TrainingRun, attempts: Iterable[Attempt] | None = None) -> list[Any]:
    """The run's audit events (its own and its attempts'), oldest first: the states timeline."""
    from apps.audit.models import AuditEvent

    attempts = list(attempts if attempts is not None else run.attempts.all())
    resources = [_run_res(run)] + [_attempt_res(a) for a in attempts]
    return list(
        AuditEvent.objects.filter(resource__in=resources)
        .order_by("seq")
        .only("seq", "timestamp", "user_id", "action", "resource", "details_json")[:500]
    )


# --- overview ----------------------------------------------------------------------------------


def overview() -> list[tuple[str, Any]]:
    """Training runs' card on the overview page: runs by where they stand."""
    counts = dict(TrainingRun.objects.values_list("state").annotate(n=Count("pk")).order_by())
    ended_badly = sum(counts.get(s, 0) for s in (RunState.FAILED, RunState.LOST))
    return [
        (_("active"), sum(counts.get(s, 0) for s in ACTIVE_RUN_STATES)),
        (_("completed"), counts.get(RunState.COMPLETED, 0)),
        (_("failed or lost"), ended_badly),
    ]


_CLUSTER_OVERVIEW_SECONDS = 30  # one scheduler call per half minute, however many viewers


def cluster_overview() -> list[tuple[str, Any]]:
    """The cluster's card on the overview page: nodes up and GPUs free, from the scheduler
    (cached for 30 s); a scheduler that does not answer is said so, not raised."""
    from django.core.cache import cache

    key = "jobs:cluster-overview"
    counts = cache.get(key)
    if counts is None:
        try:
            info = cluster_info()
        except SchedulerError:
            return [(_("scheduler"), _("not answering"))]
        usable = ("idle", "mixed", "allocated")
        up = sum(1 for n in info.nodes if n.state.split("+")[0] in usable)
        counts = (up, len(info.nodes), info.free_gpus, info.total_gpus)
        cache.set(key, counts, _CLUSTER_OVERVIEW_SECONDS)
    up, nodes, free, gpus = counts
    return [(_("nodes up"), f"{up} / {nodes}"), (_("GPUs free"), f"{free} / {gpus}")]
