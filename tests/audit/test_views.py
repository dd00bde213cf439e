"""The auditor's page, its CSV export and the read-only API."""

from __future__ import annotations

import csv
import io

import pytest
from django.db import transaction

from apps.audit.models import AuditEvent
from apps.audit.services import record
from apps.core.context import bound_context
from apps.core.roles import ALL_ROLES, AUDITOR, PRIVACY

pytestmark = pytest.mark.django_db
PAGE = "/audit/"
CSV_URL = "/audit/events.csv"
API = "/api/audit/events/"
ALLOWED = {AUDITOR, PRIVACY}


def _record(
    action="tests.touched", resource="tests.thing:1", actor=None, request_id=None, **kwargs
):
    with bound_context(request_id, "192.0.2.7"), transaction.atomic():
        record(action, resource, actor=actor, **kwargs)
    return AuditEvent.objects.order_by("-seq").first()


@pytest.fixture
def auditor(client_as):
    return client_as(AUDITOR)


@pytest.fixture
def trail(auditor):
    """Six events (after the cast's own login events): two users, one request with two."""
    made = {
        "login11": _record("accounts.login", "accounts.user:11", actor=11),
        "roles12": _record(
            "accounts.roles_changed", "accounts.user:12", actor=11, request_id="req-shared-01"
        ),
        "token5": _record(
            "accounts.token_issued", "accounts.apitoken:5", actor=11, request_id="req-shared-01"
        ),
        "login12": _record("accounts.login", "accounts.user:12", actor=12),
        "release3": _record(
            "datasets.released", "datasets.version:3", actor=12, details={"shards": 4}
        ),
        "system": _record("audit.chain_verified", "audit.chaincheck:1", actor=None),
    }
    return {name: event.seq for name, event in made.items()}


def _seqs(response):
    return [e.seq for e in response.context["events"]]


def _names(trail, response):
    by_seq = {seq: name for name, seq in trail.items()}
    return [by_seq.get(seq, "other") for seq in _seqs(response)]


# --- who may look ----------------------------------------------------------------------------


def test_only_auditors_and_privacy_officers_see_the_trail(client_as):
    seen = {
        (role, url): client_as(role).get(url).status_code
        for role in sorted(ALL_ROLES)
        for url in (PAGE, CSV_URL, API)
    }
    assert seen == {
        (role, url): 200 if role in ALLOWED else 403
        for role in sorted(ALL_ROLES)
        for url in (PAGE, CSV_URL, API)
    }


@pytest.mark.parametrize("url", [PAGE, CSV_URL])
def test_anonymous_visitors_are_sent_to_login(client, url):
    response = client.get(url)
    assert response.status_code == 302
    assert "/accounts/login" in response["Location"]


def test_anonymous_api_callers_are_refused(client):
    assert client.get(API).status_code in (401, 403)


def test_the_api_is_read_only(auditor, trail):
    assert auditor.post(API, {}, content_type="application/json").status_code == 405
    assert auditor.delete(f"{API}1/").status_code == 405


# --- the list --------------------------------------------------------------------------------


def test_it_lists_events_newest_first(auditor, trail):
    seqs = _seqs(auditor.get(PAGE))
    assert seqs == sorted(seqs, reverse=True)
    assert seqs[:6] == sorted(trail.values(), reverse=True)


def test_it_filters_by_user_id(auditor, trail):
    assert _names(trail, auditor.get(PAGE, {"user_id": 12})) == ["release3", "login12"]


def test_it_filters_by_exact_action_or_prefix(auditor, trail):
    assert _names(trail, auditor.get(PAGE, {"action": "accounts.token_issued"})) == ["token5"]
    assert _names(trail, auditor.get(PAGE, {"action": "datasets."})) == ["release3"]
    assert _names(trail, auditor.get(PAGE, {"action": "accounts.", "user_id": 11})) == [
        "token5",
        "roles12",
        "login11",
    ]


def test_it_filters_by_exact_resource_or_kind(auditor, trail):
    assert _names(trail, auditor.get(PAGE, {"resource": "accounts.user:12"})) == [
        "login12",
        "roles12",
    ]
    assert _names(trail, auditor.get(PAGE, {"resource": "accounts.user", "user_id": 11})) == [
        "roles12",
        "login11",
    ]


def test_it_filters_by_time_range(auditor, trail):
    times = dict(AuditEvent.objects.values_list("seq", "timestamp"))
    response = auditor.get(
        PAGE,
        {
            "since": times[trail["roles12"]].isoformat(),
            "until": times[trail["login12"]].isoformat(),
        },
    )
    assert _names(trail, response) == ["login12", "token5", "roles12"]


def test_request_ids_link_all_events_of_one_request(auditor, trail):
    page = auditor.get(PAGE).content.decode()
    assert 'href="?request_id=req-shared-01"' in page
    assert _names(trail, auditor.get(PAGE, {"request_id": "req-shared-01"})) == [
        "token5",
        "roles12",
    ]


def test_it_paginates(auditor):
    for _ in range(55):
        _record(action="tests.paged")
    newest = AuditEvent.objects.order_by("-seq").values_list("seq", flat=True).first()
    query = {"action": "tests.paged"}
    assert _seqs(auditor.get(PAGE, query)) == list(range(newest, newest - 50, -1))
    last_page = list(range(newest - 50, newest - 55, -1))
    assert _seqs(auditor.get(PAGE, {**query, "page": 2})) == last_page
    assert _seqs(auditor.get(PAGE, {**query, "page": "9999"})) == last_page
    assert len(_seqs(auditor.get(PAGE, {**query, "page": "'; drop"}))) == 50


@pytest.mark.parametrize(
    "params",
    [
        {"user_id": "abc"},
        {"user_id": "-1"},
        {"user_id": "99999999999999999999999"},
        {"action": "<script>alert(1)</script>"},
        {"action": "a" * 101},
        {"resource": "accounts.user:1 OR 1=1"},
        {"request_id": "x\x00y"},
        {"since": "yesterday-ish"},
        {"since": "2026-03-02T00:00", "until": "2026-03-01T00:00"},
    ],
)
def test_hostile_filters_get_a_clear_error_never_a_500(auditor, params):
    response = auditor.get(PAGE, params)
    assert response.status_code == 400
    assert b'data-testid="filter-errors"' in response.content
    assert b"<script>alert(1)</script>" not in response.content
    assert auditor.get(CSV_URL, params).status_code == 400
    assert auditor.get(API, params).status_code == 400


def test_htmx_requests_get_only_the_results(auditor, trail):
    response = auditor.get(PAGE, {"user_id": 12}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert b"<html" not in response.content
    assert b'data-testid="audit-events"' in response.content


def test_the_status_panel_shows_the_last_verification(auditor, trail):
    from django.core.management import call_command

    assert b'data-chain="never"' in auditor.get(PAGE).content
    call_command("audit_verify", "--quiet")
    assert b'data-chain="ok"' in auditor.get(PAGE).content


def test_the_status_panel_shows_a_broken_chain(auditor, trail):
    from django.core.management import CommandError, call_command

    from apps.audit.testing import triggers_bypassed

    with triggers_bypassed() as cursor:
        cursor.execute("UPDATE audit_auditevent SET user_id = 1 WHERE seq = %s", [trail["token5"]])
    with pytest.raises(CommandError):
        call_command("audit_verify", "--quiet")
    content = auditor.get(PAGE).content.decode()
    assert 'data-chain="broken"' in content
    assert f"#{trail['token5']}" in content


# --- CSV -------------------------------------------------------------------------------------


def _csv(response):
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    return list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))


def test_the_csv_export_holds_the_filtered_set_oldest_first(auditor, trail):
    rows = _csv(auditor.get(CSV_URL, {"action": "accounts.", "user_id": 11}))
    assert [int(r["seq"]) for r in rows] == [trail["login11"], trail["roles12"], trail["token5"]]
    event = AuditEvent.objects.get(seq=trail["roles12"])
    assert rows[1] == {
        "seq": str(event.seq),
        "timestamp": event.timestamp.isoformat(),
        "user_id": "11",
        "action": "accounts.roles_changed",
        "resource": "accounts.user:12",
        "pre_hash": "",
        "post_hash": "",
        "request_id": "req-shared-01",
        "client_ip": "192.0.2.7",
        "details": "{}",
        "prev_digest": event.prev_digest,
        "digest": event.digest,
    }


def test_the_csv_export_defuses_spreadsheet_formulas(auditor):
    _record(request_id="-cmd-1234567")
    rows = _csv(auditor.get(CSV_URL, {"request_id": "-cmd-1234567"}))
    assert rows[0]["request_id"] == "'-cmd-1234567"


def test_the_csv_export_of_everything(client_as, trail):
    rows = _csv(client_as(PRIVACY).get(CSV_URL))
    assert len(rows) == AuditEvent.objects.count()


# --- API -------------------------------------------------------------------------------------


def test_the_api_filters_like_the_page(auditor, trail):
    body = auditor.get(API, {"request_id": "req-shared-01"}).json()
    assert [e["seq"] for e in body["results"]] == [trail["token5"], trail["roles12"]]
    assert body["results"][0]["resource"] == "accounts.apitoken:5"


def test_the_api_returns_one_event_with_its_details(auditor, trail):
    body = auditor.get(f"{API}{trail['release3']}/").json()
    assert body["details"] == {"shards": 4}
    assert body["digest"] == AuditEvent.objects.get(seq=trail["release3"]).digest


def test_the_list_query_count_does_not_grow_with_the_page(
    auditor, trail, django_assert_max_num_queries
):
    auditor.get(PAGE)  # warm the session and role caches
    with django_assert_max_num_queries(12):
        auditor.get(PAGE)


def test_the_page_speaks_chinese(auditor):
    response = auditor.get(PAGE, HTTP_ACCEPT_LANGUAGE="zh-hans")
    assert "审计日志" in response.content.decode()
