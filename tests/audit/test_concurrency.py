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


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_writers_do_not_wait_for_each_other_until_they_commit(on_postgres):
    """The chain lock is taken while a transaction commits, not when it records.

    Two transactions each record an event and stay open; neither blocks the other (a 2 s lock
    timeout would fail the second). The events are chained in commit order, and nothing is
    left waiting once both have committed.
    """
    first_recorded = threading.Event()
    first_may_commit = threading.Event()
    errors: list[BaseException] = []

    def first() -> None:
        try:
            with transaction.atomic():
                record("tests.first", "tests.writer:1", actor=1)
                first_recorded.set()
                first_may_commit.wait(timeout=30)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    def second() -> None:
        try:
            assert first_recorded.wait(timeout=30)
            with transaction.atomic():
                with connections["default"].cursor() as cursor:
                    cursor.execute("SET LOCAL lock_timeout = '2s'")
                record("tests.second", "tests.writer:2", actor=2)
            # committed while the first transaction is still open with its event recorded
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    t1 = threading.Thread(target=first)
    t1.start()
    t2 = threading.Thread(target=second)
    t2.start()
    t2.join(timeout=30)
    first_may_commit.set()
    t1.join(timeout=30)
    assert not errors, errors
    assert list(AuditEvent.objects.values_list("seq", "action")) == [
        (1, "tests.second"),
        (2, "tests.first"),
    ]
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT count(*) FROM audit_pendingevent")
        assert cursor.fetchone() == (0,)
    assert verify_chain().ok


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_transaction_leaves_no_event_and_nothing_pending(on_postgres):
    with pytest.raises(ZeroDivisionError), transaction.atomic():
        record("tests.lost", "tests.writer:1", actor=1)
        1 / 0  # noqa: B018
    with transaction.atomic():
        record("tests.kept", "tests.writer:1", actor=1)
    assert list(AuditEvent.objects.values_list("seq", "action")) == [(1, "tests.kept")]
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT count(*) FROM audit_pendingevent")
        assert cursor.fetchone() == (0,)


def test_the_seal_takes_the_lock_the_rest_of_the_code_names():
    """The trigger's SQL carries its own copy of the lock key; they must be the same lock."""
    import importlib

    from apps.audit.services import CHAIN_LOCK_KEY

    migration = importlib.import_module("apps.audit.migrations.0003_seal_at_commit")
    assert migration.LOCK_KEY == CHAIN_LOCK_KEY
    assert f"pg_advisory_xact_lock({CHAIN_LOCK_KEY:d})" in "".join(migration.PG_INSTALL)
