"""Thin Celery wrappers around the de-identification services (STYLE.md 3).

The task takes a run id only (never paths or values from raw data). It processes one chunk
of files and, when files remain, sends itself again: a long batch is a chain of short tasks,
each within its time limit, and a killed worker loses at most the file in hand (acks_late
redelivers the task; the run's stale heartbeat lets the redelivered task take over).
"""

from __future__ import annotations

from celery import shared_task

from apps.core.context import bound_context
from apps.deid import services

CHUNK_FILES = 500


class RunFailed(Exception):
    """A run stopped on an unexpected error (the message holds the run id and class only)."""


@shared_task(
    name="apps.deid.tasks.process_run",
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=3300,
    time_limit=3600,
    max_retries=20,
)
def process_run(run_id: int) -> dict[str, object]:
    """Process the next chunk of run ``run_id``; re-enqueue while files remain."""
    with bound_context():
        try:
            outcome = services.process_run(run_id, limit=CHUNK_FILES)
        except Exception as exc:
            # The run is already marked failed and the site logged where; Celery would log
            # and store the exception's message, which may quote a value. Raise a bare one.
            raise RunFailed(f"deid run {run_id} failed: {type(exc).__name__}") from None
    if outcome.more:
        process_run.delay(run_id)
    elif not outcome.claimed and outcome.status == "running":
        # A live worker holds the run (or a dead one whose heartbeat is not stale yet): try
        # again later so a killed worker's run is picked up once its heartbeat expires.
        raise process_run.retry(countdown=int(services.STALE_AFTER.total_seconds()) + 30)
    return {
        "run_id": run_id,
        "claimed": outcome.claimed,
        "status": outcome.status,
        "processed": outcome.processed,
        "more": outcome.more,
    }
