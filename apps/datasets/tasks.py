"""Thin Celery wrappers around the datasets services (the version row holds the truth)."""

from __future__ import annotations

from celery import shared_task

from apps.core.context import bound_context
from apps.datasets import services

# Packing or re-hashing terabytes takes hours; a worker that dies leaves a stale claim that a
# redelivered task may take over (services.STALE_CLAIM_SECONDS).
_HOURS_LONG = {
    "acks_late": True,
    "soft_time_limit": 24 * 3600,
    "time_limit": 24 * 3600 + 300,
    "max_retries": 0,
}


@shared_task(name="apps.datasets.tasks.pack_version", **_HOURS_LONG)
def pack_version(version_id: int) -> dict[str, object]:
    """Pack a ``building`` dataset version; idempotent (a finished one is left as it is)."""
    with bound_context():
        version = services.pack_version(version_id)
    return {"version": version.pk, "status": version.status}


@shared_task(name="apps.datasets.tasks.verify_version", acks_late=True, time_limit=6 * 3600)
def verify_version(version_id: int) -> dict[str, object]:
    """Re-hash a ready version (scheduled checks of the training working set)."""
    from apps.datasets.models import DatasetVersion

    with bound_context():
        report = services.verify_version(DatasetVersion.objects.get(pk=version_id))
    return {"version": version_id, "ok": report.ok, "problems": len(report.problems)}


@shared_task(name="apps.datasets.tasks.run_verify_check", **_HOURS_LONG)
def run_verify_check(check_id: int) -> dict[str, object]:
    """Re-hash the version of a queued check (the verify button and API); idempotent."""
    with bound_context():
        check = services.run_verify_check(check_id)
    return {"check": check.pk, "status": check.status, "ok": check.ok}


@shared_task(name="apps.datasets.tasks.train_tokenizer", **_HOURS_LONG)
def train_tokenizer(tokenizer_id: int) -> dict[str, object]:
    """Train a queued tokenizer on its version's text (the version page and API); idempotent."""
    from apps.datasets import tokenizers

    with bound_context():
        row = tokenizers.run_tokenizer_build(tokenizer_id)
    return {"tokenizer": row.pk, "status": row.status}
