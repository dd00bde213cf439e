"""Tampering: the database refuses changes, and audit_verify names the first broken event."""

from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction

from apps.audit.models import AuditEvent, ChainCheck
from apps.audit.services import compute_digest, verify_chain
from apps.audit.testing import triggers_bypassed

pytestmark = pytest.mark.django_db
TABLE = AuditEvent._meta.db_table


# --- the database refuses -------------------------------------------------------------------


def test_the_database_refuses_an_update(events):
    events(2)
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(seq=1).update(resource="tests.thing:2")
    assert AuditEvent.objects.get(seq=1).resource == "tests.thing:1"


def test_the_database_refuses_a_raw_update(events):
    events(1)
    with (
        pytest.raises(DatabaseError, match="append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(f"UPDATE {TABLE} SET user_id = 1")


def test_the_database_refuses_a_delete(events):
    events(2)
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(seq=2).delete()
    assert AuditEvent.objects.count() == 2


def test_postgresql_refuses_a_truncate(on_postgres, events):
    events(2)
    with (
        pytest.raises(DatabaseError, match="append-only"),
        transaction.atomic(),
        on_postgres.cursor() as cursor,
    ):
        cursor.execute(f"TRUNCATE {TABLE}")
    assert AuditEvent.objects.count() == 2


def test_postgresql_refuses_a_truncate_cascade(on_postgres, events):
    events(1)
    with (
        pytest.raises(DatabaseError, match="append-only"),
        transaction.atomic(),
        on_postgres.cursor() as cursor,
    ):
        cursor.execute(f"TRUNCATE {TABLE} CASCADE")


# --- the chain notices ----------------------------------------------------------------------


def _tamper(sql: str, params: list | None = None) -> None:
    with triggers_bypassed() as cursor:
        cursor.execute(sql, params or [])


def test_an_untouched_chain_verifies(events):
    made = events(5)
    result = verify_chain()
    assert result.ok, result.reason
    assert (result.events_checked, result.head_seq, result.head_digest) == (5, 5, made[-1].digest)
    assert result.broken_seq is None


def test_an_empty_chain_verifies(db):
    result = verify_chain()
    assert result.ok
    assert result.events_checked == 0


def test_it_detects_an_edited_row(events):
    events(6)
    _tamper(f"UPDATE {TABLE} SET user_id = 99 WHERE seq = 4")
    result = verify_chain()
    assert not result.ok
    assert result.broken_seq == 4
    assert "digest" in result.reason


def test_it_detects_an_edited_timestamp(events):
    events(3)
    _tamper(f"UPDATE {TABLE} SET timestamp = timestamp WHERE seq = 2")  # no-op stays intact
    assert verify_chain().ok
    with triggers_bypassed():
        AuditEvent.objects.filter(seq=2).update(details_json='{"count":1}')
    assert verify_chain().broken_seq == 2


def test_it_detects_a_deleted_row(events):
    events(6)
    _tamper(f"DELETE FROM {TABLE} WHERE seq = 3")
    result = verify_chain()
    assert not result.ok
    assert result.broken_seq == 3
    assert "missing" in result.reason


def test_it_detects_a_reordered_pair(events):
    events(6)
    # Swap the positions of events 3 and 4 (via a free key: seq is unique).
    _tamper(f"UPDATE {TABLE} SET seq = -1 WHERE seq = 3")
    _tamper(f"UPDATE {TABLE} SET seq = 3 WHERE seq = 4")
    _tamper(f"UPDATE {TABLE} SET seq = 4 WHERE seq = -1")
    result = verify_chain()
    assert not result.ok
    assert result.broken_seq == 3
    assert "link" in result.reason


def test_it_detects_an_inserted_row(events):
    made = events(6)
    # The forger shifts events 3.. up by one and slips a well-formed event in at #3, even
    # computing its digest correctly; the old #3 (now #4) no longer links to it.
    _tamper(f"UPDATE {TABLE} SET seq = -seq WHERE seq >= 3")
    _tamper(f"UPDATE {TABLE} SET seq = 1 - seq WHERE seq < 0")
    forged = dict(
        seq=3,
        prev_digest=made[1].digest,
        ts=made[1].timestamp,
        user_id=1,
        action="accounts.role_granted",
        resource="accounts.user:1",
        pre_hash="",
        post_hash="",
        request_id="forged-request",
        client_ip="",
        details_json="{}",
    )
    with triggers_bypassed():
        AuditEvent.objects.create(
            seq=3,
            timestamp=forged["ts"],
            user_id=1,
            action=forged["action"],
            resource=forged["resource"],
            request_id=forged["request_id"],
            prev_digest=forged["prev_digest"],
            digest=compute_digest(**forged),
        )
    result = verify_chain()
    assert not result.ok
    assert result.broken_seq == 4
    assert "link" in result.reason


def test_it_names_the_first_of_several_breaks(events):
    events(8)
    _tamper(f"UPDATE {TABLE} SET action = 'tests.edited' WHERE seq IN (3, 7)")
    assert verify_chain().broken_seq == 3


# --- the command ----------------------------------------------------------------------------


def test_the_command_reports_ok_with_the_count_and_head(events, capsys):
    made = events(3)
    call_command("audit_verify", "--quiet")
    out = capsys.readouterr().out
    assert "OK: 3 events" in out
    assert f"#3 {made[-1].digest[:16]}" in out


def test_the_command_fails_with_the_first_broken_sequence_number(events):
    events(5)
    _tamper(f"DELETE FROM {TABLE} WHERE seq = 2")
    with pytest.raises(CommandError, match="BROKEN at #2") as excinfo:
        call_command("audit_verify", "--quiet")
    assert excinfo.value.returncode == 1


def test_the_command_keeps_the_result_for_the_status_panel_and_audits_it(events):
    events(2)
    call_command("audit_verify", "--quiet")
    check = ChainCheck.objects.get()
    assert (check.ok, check.events_checked, check.head_seq) == (True, 2, 2)
    last = AuditEvent.objects.order_by("-seq").first()
    assert (last.action, last.resource) == ("audit.chain_verified", f"audit.chaincheck:{check.pk}")


def test_the_command_shows_progress_on_large_chains(events, capsys, monkeypatch):
    from apps.audit import services

    events(5)
    real = services.verify_chain
    monkeypatch.setattr(services, "verify_chain", lambda **kw: real(**dict(kw, chunk_size=2)))
    call_command("audit_verify", "--no-save")
    assert "4/5 events" in capsys.readouterr().err
