"""Thin Celery wrappers around the audit services."""

from __future__ import annotations

from datetime import date

from celery import shared_task

from apps.audit import services
from apps.core.context import bound_context


@shared_task(
    name="apps.audit.tasks.write_daily_digest",
    acks_late=True,
    max_retries=5,
    default_retry_delay=300,
    time_limit=600,
)
def write_daily_digest(day: str | None = None) -> dict[str, object]:
    """Seal ``day`` (ISO date; default yesterday in the site's time zone)."""
    with bound_context():
        result = services.write_daily_digest(date.fromisoformat(day) if day else None)
    return {
        "day": result.day.isoformat(),
        "head_seq": result.head_seq,
        "created": result.created,
        "location": result.location,
    }


@shared_task(name="apps.audit.tasks.verify_chain", acks_late=True, time_limit=3600)
def verify_chain() -> dict[str, object]:
    """Verify the chain and the stored digests; the result lands in the status panel."""
    with bound_context():
        result = services.check_chain()
    return {"ok": result.ok, "events": result.events_checked, "broken_seq": result.broken_seq}
