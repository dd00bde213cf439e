"""record(): the one way into the audit trail."""

from __future__ import annotations

import hashlib

import pytest
from django.db import transaction

from apps.audit.models import GENESIS_DIGEST, AuditEvent
from apps.audit.services import AuditError, canonical_json, compute_digest, record, state_hash
from apps.core.context import bound_context

pytestmark = pytest.mark.django_db


def test_it_starts_the_chain_at_one_from_the_genesis_digest(events):
    (first,) = events(1)
    assert first.seq == 1
    assert first.prev_digest == GENESIS_DIGEST


def test_it_links_each_event_to_the_one_before(events):
    a, b, c = events(3)
    assert [a.seq, b.seq, c.seq] == [1, 2, 3]
    assert b.prev_digest == a.digest
    assert c.prev_digest == b.digest


def test_it_stores_the_digest_of_every_field(events):
    (event,) = events(1, details={"count": 3})
    stored = AuditEvent.objects.get(seq=event.seq)
    assert stored.digest == compute_digest(
        seq=stored.seq,
        prev_digest=stored.prev_digest,
        ts=stored.timestamp,
        user_id=stored.user_id,
        action=stored.action,
        resource=stored.resource,
        pre_hash=stored.pre_hash,
        post_hash=stored.post_hash,
        request_id=stored.request_id,
        client_ip=stored.client_ip,
        details_json=stored.details_json,
    )


def test_it_stores_hashes_of_the_states_never_the_states(events):
    pre = {"id": 17, "roles": ["auditor"]}
    post = {"roles": ["auditor", "operator"], "id": 17}
    (event,) = events(1, pre=pre, post=post)
    assert event.pre_hash == hashlib.sha256(canonical_json(pre).encode()).hexdigest()
    assert event.post_hash == state_hash({"id": 17, "roles": ["auditor", "operator"]})
    assert (
        "operator"
        not in AuditEvent.objects.filter(seq=event.seq).values_list("details_json", flat=True).get()
    )


def test_it_leaves_the_hash_empty_when_there_is_no_state(events):
    (event,) = events(1, pre=None, post={"id": 1})
    assert event.pre_hash == ""
    assert len(event.post_hash) == 64


def test_it_stamps_the_request_id_and_client_address_from_the_context(events):
    with bound_context("req-0123456789", "10.1.2.3"):
        (event,) = events(1)
    assert (event.request_id, event.client_ip) == ("req-0123456789", "10.1.2.3")


def test_it_takes_the_actor_as_a_user_or_an_id(cast):
    with transaction.atomic():
        record("tests.done", "tests.thing:1", actor=cast["operator"])
        record("tests.done", "tests.thing:1", actor=42)
        record("tests.done", "tests.thing:1", actor=None)
    by_user, by_id, by_system = AuditEvent.objects.order_by("seq")
    assert by_user.user_id == cast["operator"].pk
    assert by_id.user_id == 42
    assert by_system.user_id is None


def test_it_keeps_details_as_canonical_json(events):
    (event,) = events(1, details={"b": 2, "a": ["x", "y"]})
    assert event.details_json == '{"a":["x","y"],"b":2}'
    assert AuditEvent.objects.get(seq=event.seq).details == {"a": ["x", "y"], "b": 2}


def test_time_never_runs_backwards_along_the_chain(events, clock):
    clock.set(2026, 5, 2, 12, 0)
    (later,) = events(1)
    clock.set(2026, 5, 2, 11, 0)  # the clock stepped back
    (next_event,) = events(1)
    assert next_event.timestamp == later.timestamp


@pytest.mark.parametrize(
    "action", ["Accounts.login", "accounts", "accounts login", "accounts.login\n", "", "1x.y"]
)
def test_it_refuses_a_malformed_action(action):
    with transaction.atomic(), pytest.raises(AuditError, match="action"):
        record(action, "tests.thing:1", actor=None)


@pytest.mark.parametrize(
    "resource",
    ["tests.thing:1 2", "tests.thing:\x1f", "Jane Doe", "tests.thing:" + "9" * 200, "tests"],
)
def test_it_refuses_a_resource_that_is_not_an_id(resource):
    with transaction.atomic(), pytest.raises(AuditError, match="resource"):
        record("tests.done", resource, actor=None)


@pytest.mark.parametrize(
    "details",
    [
        {"note": "x" * 201},  # free text
        {"note": "line\nbreak"},  # control characters
        {"Bad Key": 1},
        {"nested": {"a": 1}},
        {"many": list(range(51))},
        {"nan": float("nan")},
        "not a dict",
    ],
)
def test_it_refuses_details_that_look_like_free_text_or_are_not_flat(details):
    with transaction.atomic(), pytest.raises(AuditError, match="details"):
        record("tests.done", "tests.thing:1", actor=None, details=details)


def test_it_refuses_a_state_that_is_not_json(events):
    with transaction.atomic(), pytest.raises(AuditError, match="JSON"):
        record("tests.done", "tests.thing:1", actor=None, post={"x": object()})


def test_it_refuses_a_bool_actor():
    with transaction.atomic(), pytest.raises(AuditError, match="actor"):
        record("tests.done", "tests.thing:1", actor=True)


def test_nothing_is_written_when_record_refuses(events):
    events(1)
    with transaction.atomic(), pytest.raises(AuditError):
        record("tests.done", "bad resource", actor=None)
    assert AuditEvent.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_it_refuses_to_run_outside_a_transaction():
    with pytest.raises(AuditError, match=r"transaction\.atomic"):
        record("tests.done", "tests.thing:1", actor=None)
    assert not AuditEvent.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_the_event_rolls_back_with_the_change_it_records():
    class Boom(Exception):
        pass

    with pytest.raises(Boom), transaction.atomic():
        record("tests.done", "tests.thing:1", actor=None)
        raise Boom
    assert not AuditEvent.objects.exists()
    with transaction.atomic():
        record("tests.done", "tests.thing:1", actor=None)
    assert AuditEvent.objects.get().seq == 1  # the rolled-back event left no gap


def test_the_app_registers_its_page_for_auditors_and_privacy_officers():
    from apps.core import navigation
    from apps.core.roles import AUDITOR, OPERATOR, PRIVACY

    assert "audit" in [i.key for i in navigation.items_for(frozenset({AUDITOR}))]
    assert "audit" in [i.key for i in navigation.items_for(frozenset({PRIVACY}))]
    assert "audit" not in [i.key for i in navigation.items_for(frozenset({OPERATOR}))]


def test_postgresql_builds_the_same_message_as_python(on_postgres, events, clock):
    """verify_chain lets PostgreSQL assemble each message; it must match event_message()."""
    from django.db.models.expressions import RawSQL

    from apps.audit.services import PG_MESSAGE_SQL, event_message

    clock.set(2026, 1, 1, 0, 0)  # a whole second: microseconds must still print as .000000
    events(1, actor=None)
    with bound_context("req-0123456789", "2001:db8::1"):
        events(1, actor=7, pre={"a": 1}, post={"a": 2}, details={"ids": [1, 2], "x": "é"})
    rows = AuditEvent.objects.annotate(message=RawSQL(PG_MESSAGE_SQL, ())).order_by("seq")  # noqa: S611
    for e in rows:
        assert e.message.encode() == event_message(
            e.seq,
            e.prev_digest,
            e.timestamp,
            e.user_id,
            e.action,
            e.resource,
            e.pre_hash,
            e.post_hash,
            e.request_id,
            e.client_ip,
            e.details_json,
        )
