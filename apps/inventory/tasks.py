"""Thin Celery wrappers: load by primary key, call one service, return ids and counts."""

from __future__ import annotations

from celery import shared_task

from apps.core.context import bound_context
from apps.inventory import services


@shared_task(
    name="apps.inventory.tasks.scan_source",
    acks_late=True,
    # A redelivered task finds the batch no longer pending and returns at once.
    max_retries=0,
    soft_time_limit=6 * 3600,
    time_limit=6 * 3600 + 300,
)
def scan_source(batch_id: int) -> dict[str, object]:
    """Scan one IngestBatch's source; progress and the outcome live on the batch row."""
    with bound_context():
        batch = services.scan_source(batch_id)
    return {"batch_id": batch.pk, "status": batch.status, "files_done": batch.files_done}


@shared_task(name="apps.inventory.tasks.run_qa", acks_late=True, time_limit=6 * 3600)
def run_qa(batch_id: int, acting_user_id: int | None = None) -> dict[str, int]:
    """Re-run data QA on a batch's files."""
    with bound_context():
        return services.run_qa(batch_id, acting_user=acting_user_id)
