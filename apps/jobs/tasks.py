"""Thin Celery wrappers around the jobs services: primary keys in, one service call.

The rows hold the truth (attempt state, error); results are never read back. Submission
retries every minute, forever, while the scheduler is unreachable: the idempotency
token makes every retry safe, and the reconciler re-queues a submission whose message was lost.
"""

from __future__ import annotations

from celery import shared_task

from apps.core.context import bound_context
from apps.jobs import services
from apps.jobs.schedulers import SchedulerError


@shared_task(
    bind=True,
    name="apps.jobs.tasks.submit_attempt",
    acks_late=True,
    max_retries=None,
    time_limit=300,
)
def submit_attempt(self, attempt_id: int) -> str | None:  # type: ignore[no-untyped-def]
    """Submit one attempt (idempotent); retry while the scheduler is unreachable."""
    with bound_context():
        outcome = services.submit_attempt(attempt_id)
    if outcome.retry:
        raise self.retry(countdown=services.SUBMIT_RETRY_S, exc=RuntimeError(outcome.message))
    return outcome.job_id


@shared_task(
    bind=True,
    name="apps.jobs.tasks.cancel_attempt",
    acks_late=True,
    max_retries=20,
    time_limit=120,
)
def cancel_attempt(self, attempt_id: int) -> None:  # type: ignore[no-untyped-def]
    """Cancel an attempt's job in the scheduler."""
    with bound_context():
        try:
            services.cancel_job(attempt_id)
        except SchedulerError as exc:
            if exc.permanent:
                return
            raise self.retry(countdown=15, exc=exc) from exc


@shared_task(
    bind=True,
    name="apps.jobs.tasks.requeue_attempt",
    acks_late=True,
    max_retries=20,
    time_limit=120,
)
def requeue_attempt(self, attempt_id: int) -> None:  # type: ignore[no-untyped-def]
    """Requeue an attempt's job in the scheduler (same job id, restarts + 1)."""
    with bound_context():
        try:
            services.requeue_job(attempt_id)
        except SchedulerError as exc:
            raise self.retry(countdown=15, exc=exc) from exc


@shared_task(name="apps.jobs.tasks.reconcile", acks_late=True, time_limit=600, expires=60)
def reconcile() -> dict[str, object]:
    """One reconcile pass (Celery beat runs it every JOBS_RECONCILE_SECONDS)."""
    with bound_context():
        result = services.reconcile()
    return {
        "polled": result.polled,
        "changed": result.changed,
        "lost": result.lost,
        "resubmitted": result.resubmitted,
        "errors": result.errors,
    }
