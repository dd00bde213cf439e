"""Test helpers that step around the append-only triggers. Tests and benchmarks only.

Tamper tests must edit history the way an attacker with database superuser rights would, and
the test runner must empty the table between transactional tests (Django's flush issues
TRUNCATE on PostgreSQL and DELETE on SQLite, which the triggers refuse).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from django.db import connection as default_connection
from django.db import transaction

_SQLITE_TRIGGERS = {
    "audit_auditevent_no_update": (
        "CREATE TRIGGER audit_auditevent_no_update BEFORE UPDATE ON audit_auditevent "
        "BEGIN SELECT RAISE(ABORT, 'audit trail is append-only: UPDATE refused'); END;"
    ),
    "audit_auditevent_no_delete": (
        "CREATE TRIGGER audit_auditevent_no_delete BEFORE DELETE ON audit_auditevent "
        "BEGIN SELECT RAISE(ABORT, 'audit trail is append-only: DELETE refused'); END;"
    ),
}


@contextlib.contextmanager
def triggers_bypassed(connection: Any = None) -> Iterator[Any]:
    """Run the body with the append-only triggers out of the way; yields a cursor.

    PostgreSQL: ``session_replication_role = replica`` (superuser only) for one transaction, so
    ordinary triggers do not fire. SQLite: drop the triggers and recreate them afterwards.
    """
    connection = connection or default_connection
    with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET LOCAL session_replication_role = replica")
            yield cursor
            cursor.execute("SET LOCAL session_replication_role = origin")
        else:
            for name in _SQLITE_TRIGGERS:
                cursor.execute(f"DROP TRIGGER IF EXISTS {name}")
            try:
                yield cursor
            finally:
                for sql in _SQLITE_TRIGGERS.values():
                    cursor.execute(sql)


def allow_flush(connection: Any) -> Callable[[], None]:
    """Let Django's test flush empty the audit table; returns the function that undoes it.

    Wraps ``execute_sql_flush`` of the connection's operations class (so every connection of
    that vendor, in every thread) to run with the triggers bypassed. Install it once per test
    session, before any ``transactional_db`` / ``live_server`` test tears down.
    """
    ops_class = type(connection.ops)
    original = ops_class.execute_sql_flush
    if getattr(original, "_audit_flush_allowed", False):
        return lambda: None

    def execute_sql_flush(self: Any, sql_list: list[str]) -> None:
        with triggers_bypassed(self.connection):
            original(self, sql_list)

    execute_sql_flush._audit_flush_allowed = True  # type: ignore[attr-defined]
    ops_class.execute_sql_flush = execute_sql_flush

    def undo() -> None:
        ops_class.execute_sql_flush = original

    return undo


def seal_immediately(connection: Any = None) -> None:
    """Chain this transaction's audit events as each is recorded instead of at COMMIT.

    For transactions that never commit: the test runner's per-test transaction, rolled back at
    the end of each test, in which events must be readable right after ``record()``. It takes
    the chain lock at the first event until the transaction ends, so never in production.
    PostgreSQL only (migration 0003_seal_at_commit); SQLite always chains at once.
    """
    connection = connection or default_connection
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET CONSTRAINTS audit_pendingevent_seal IMMEDIATE")
