"""Concurrent writers never fork the chain (PostgreSQL: advisory lock, unique seq backstop)."""

from __future__ import annotations

import threading

import pytest
from django.db import connections, transaction

from apps.audit.models import AuditEvent
from apps.audit.services import record, verify_chain

WRITERS = 8
EVENTS_EACH = 50


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_many_concurrent_writers_keep_one_gapless_chain(on_postgres):
    """8 threads, each with its own database connection, append 50 events each at once."""
    start = threading.Barrier(WRITERS)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            start.wait()
            for i in range(EVENTS_EACH):
                with transaction.atomic():
                    record("tests.concurrent", f"tests.writer:{n}", actor=n, details={"i": i})
        except BaseException as exc:  # surfaced below, with the thread's own traceback
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    total = WRITERS * EVENTS_EACH
    assert list(AuditEvent.objects.order_by("seq").values_list("seq", flat=True)) == list(
        range(1, total + 1)
    )
    # Every writer got all its events in, in its own order.
    for n in range(WRITERS):
        details = AuditEvent.objects.filter(resource=f"tests.writer:{n}").order_by("seq")
        assert [e.details["i"] for e in details] == list(range(EVENTS_EACH))
    result = verify_chain()
    assert result.ok, result.reason
    assert result.events_checked == total
