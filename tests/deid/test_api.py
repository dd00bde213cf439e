"""``/api/deid/runs/`` and ``/api/deid/results/``: roles, start, cancel, filters."""

from __future__ import annotations

import pytest

from apps.core.roles import ALL_ROLES, AUDITOR, PRIVACY, STEWARD
from apps.deid import services
from apps.deid.models import DeidRun
from tests.deid.factories import PHI_VALUES

pytestmark = pytest.mark.django_db
VIEWERS = {STEWARD, PRIVACY, AUDITOR}


@pytest.fixture
def done_run(mixed, no_ocr_profile):
    run = services.start_run(mixed.batch, profile=no_ocr_profile, acting_user=None, enqueue=False)
    services.process_run(run.pk, ocr=None)
    return run


@pytest.mark.parametrize("role", sorted(ALL_ROLES))
def test_reading_runs_and_results_follows_the_roles(role, client_as, done_run):
    client = client_as(role)
    for url in ("/api/deid/runs/", f"/api/deid/runs/{done_run.pk}/", "/api/deid/results/"):
        assert client.get(url).status_code == (200 if role in VIEWERS else 403), url


def test_the_results_list_filters_and_carries_no_phi(client_as, done_run):
    client = client_as(AUDITOR)
    data = client.get(f"/api/deid/results/?run={done_run.pk}&status=quarantined").json()
    rows = data["results"] if isinstance(data, dict) else data
    assert len(rows) == 4 and {r["status"] for r in rows} == {"quarantined"}
    everything = client.get("/api/deid/results/?kind=text").content.decode()
    for value in PHI_VALUES:
        assert value not in everything
    assert client.get("/api/deid/results/?status=bogus").status_code == 400


def test_a_steward_starts_and_cancels_a_run(client_as, mixed, monkeypatch):
    from apps.deid import tasks

    monkeypatch.setattr(tasks.process_run, "delay", lambda run_id: None)
    client = client_as(STEWARD)
    created = client.post(
        "/api/deid/runs/", {"batch": mixed.batch.pk}, content_type="application/json"
    )
    assert created.status_code == 201, created.content
    run_id = created.json()["id"]
    assert created.json()["status"] == "pending"
    cancelled = client.post(f"/api/deid/runs/{run_id}/cancel/")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    again = client.post(f"/api/deid/runs/{run_id}/cancel/")
    assert again.status_code == 409


def test_an_auditor_may_not_start_or_cancel(client_as, mixed):
    client = client_as(AUDITOR)
    response = client.post(
        "/api/deid/runs/", {"batch": mixed.batch.pk}, content_type="application/json"
    )
    assert response.status_code == 403 and not DeidRun.objects.exists()
    run = services.start_run(mixed.batch, acting_user=None, enqueue=False)
    for action in ("cancel", "resume", "retry-errors"):
        assert client.post(f"/api/deid/runs/{run.pk}/{action}/").status_code == 403, action
    run.refresh_from_db()
    assert run.status == "pending"


def test_a_bad_profile_is_a_400(client_as, mixed):
    response = client_as(PRIVACY).post(
        "/api/deid/runs/",
        {"batch": mixed.batch.pk, "profile": {"bogus": True}},
        content_type="application/json",
    )
    assert response.status_code == 400 and "profile" in response.json()


def test_a_run_starts_from_a_saved_profile_version(client_as, mixed, monkeypatch, cast):
    from apps.deid import tasks
    from apps.deid.engine import DeidProfile

    monkeypatch.setattr(tasks.process_run, "delay", lambda run_id: None)
    version = services.save_profile(DeidProfile(), name="site", acting_user=cast[PRIVACY])
    client = client_as(STEWARD)
    listed = client.get("/api/deid/profiles/").json()
    rows = listed["results"] if isinstance(listed, dict) else listed
    assert [r["fingerprint"] for r in rows] == [version.fingerprint]
    created = client.post(
        "/api/deid/runs/",
        {"batch": mixed.batch.pk, "profile_version": version.pk},
        content_type="application/json",
    )
    assert created.status_code == 201
    assert created.json()["profile_version"] == version.pk
    assert created.json()["profile_fingerprint"] == version.fingerprint
