"""The de-identification pages: roles, progress polling, quarantine list, actions."""

from __future__ import annotations

import pytest

from apps.audit.models import AuditEvent
from apps.core.roles import ALL_ROLES, AUDITOR, PRIVACY, STEWARD
from apps.deid import services
from apps.deid.models import DeidRun
from tests.deid.factories import PHI_VALUES

pytestmark = pytest.mark.django_db

VIEWERS = {STEWARD, PRIVACY, AUDITOR}
RUNNERS = {STEWARD, PRIVACY}


@pytest.fixture
def done_run(mixed, no_ocr_profile):
    run = services.start_run(mixed.batch, profile=no_ocr_profile, acting_user=None, enqueue=False)
    services.process_run(run.pk, ocr=None)
    run.refresh_from_db()
    return run


def page_urls(run_id: int) -> list[str]:
    return [
        "/deid/",
        f"/deid/runs/{run_id}/",
        f"/deid/runs/{run_id}/progress/",
        f"/deid/runs/{run_id}/results/",
        f"/deid/runs/{run_id}/results/?status=quarantined",
    ]


@pytest.mark.parametrize("role", sorted(ALL_ROLES))
def test_each_role_sees_exactly_the_pages_it_may(role, client_as, done_run):
    client = client_as(role)
    for url in page_urls(done_run.pk):
        response = client.get(url)
        assert response.status_code == (200 if role in VIEWERS else 403), (url, role)
    start = client.get("/deid/runs/new/")
    assert start.status_code == (200 if role in RUNNERS else 403)
    reveal = client.get("/deid/reveal/")
    assert reveal.status_code == (200 if role == PRIVACY else 403)


def test_anonymous_is_sent_to_login(client, done_run):
    for url in [*page_urls(done_run.pk), "/deid/runs/new/", "/deid/reveal/"]:
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/")


def test_a_missing_run_is_404(client_as, db):
    client = client_as(STEWARD)
    for url in page_urls(999)[1:]:
        assert client.get(url).status_code == 404


def test_the_detail_page_shows_counts_findings_and_quarantine_without_phi(client_as, done_run):
    response = client_as(AUDITOR).get(f"/deid/runs/{done_run.pk}/")
    html = response.content.decode()
    assert 'data-testid="quarantine"' in html
    assert "path_outside_raw_root" in html and "excluded_by_data_qa" in html
    assert 'data-count="quarantined">4<' in html
    # plotly.js is vendored: the chart reads its numbers from a JSON block (no inline JS).
    assert 'id="deid-chart-data" type="application/json"' in html
    assert "vendor/plotly/plotly.min.js" in html and "js/deid.js" in html
    for value in PHI_VALUES:
        assert value not in html
    results = client_as(AUDITOR).get(f"/deid/runs/{done_run.pk}/results/").content.decode()
    for value in PHI_VALUES:
        assert value not in results


def test_the_progress_fragment_polls_only_while_the_run_is_active(client_as, mixed):
    run = services.start_run(mixed.batch, acting_user=None, enqueue=False)
    client = client_as(STEWARD)
    fragment = client.get(f"/deid/runs/{run.pk}/progress/", HTTP_HX_REQUEST="true")
    html = fragment.content.decode()
    assert html.lstrip().startswith("<section") and 'hx-trigger="every 2s"' in html
    assert "<html" not in html
    services.process_run(run.pk, ocr=None)
    html = client.get(f"/deid/runs/{run.pk}/progress/", HTTP_HX_REQUEST="true").content.decode()
    assert "hx-trigger" not in html and 'data-status="done"' in html


def test_results_filter_by_status_and_reject_bad_filters(client_as, done_run):
    client = client_as(STEWARD)
    html = client.get(
        f"/deid/runs/{done_run.pk}/results/?status=quarantined", HTTP_HX_REQUEST="true"
    ).content.decode()
    assert html.count('data-status="quarantined"') == 4 and 'data-status="ok"' not in html
    assert client.get(f"/deid/runs/{done_run.pk}/results/?status=nope").status_code == 400


def test_a_steward_starts_a_run_from_the_form(
    client_as, mixed, django_capture_on_commit_callbacks, monkeypatch
):
    from apps.deid import tasks

    sent = []
    monkeypatch.setattr(tasks.process_run, "delay", lambda run_id: sent.append(run_id))
    with django_capture_on_commit_callbacks(execute=True):
        response = client_as(STEWARD).post(
            "/deid/runs/new/",
            {"batch": mixed.batch.pk, "profile": '{"name": "site", "version": 3}'},
        )
    run = DeidRun.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/deid/runs/{run.pk}/"
    assert run.profile_fingerprint.startswith("site@v3#") and sent == [run.pk]
    event = AuditEvent.objects.get(action="deid.run_started")
    assert event.user_id is not None and event.resource == f"deid.deidrun:{run.pk}"


def test_the_start_form_refuses_an_invalid_profile(client_as, mixed):
    response = client_as(STEWARD).post(
        "/deid/runs/new/", {"batch": mixed.batch.pk, "profile": '{"nonsense": 1}'}
    )
    assert response.status_code == 400 and not DeidRun.objects.exists()
    assert "unknown profile keys" in response.content.decode()


def test_cancel_and_retry_are_posts_for_runners_only(client_as, mixed):
    run = services.start_run(mixed.batch, acting_user=None, enqueue=False)
    assert client_as(AUDITOR).post(f"/deid/runs/{run.pk}/cancel/").status_code == 403
    assert client_as(STEWARD).get(f"/deid/runs/{run.pk}/cancel/").status_code == 405
    response = client_as(STEWARD).post(f"/deid/runs/{run.pk}/cancel/")
    assert response.status_code == 302
    run.refresh_from_db()
    assert run.status == "cancelled"
    # Nothing in error: retry says so instead of failing.
    response = client_as(PRIVACY).post(f"/deid/runs/{run.pk}/retry/", follow=True)
    assert response.status_code == 200 and "no files in error" in response.content.decode()
    response = client_as(STEWARD).post(f"/deid/runs/{run.pk}/resume/")
    run.refresh_from_db()
    assert response.status_code == 302 and run.status == "pending"


def test_the_menu_shows_de_identification_to_viewers_and_reveal_to_privacy(client_as, db):
    html = client_as(AUDITOR).get("/deid/").content.decode()
    assert 'data-nav="deid"' in html and 'data-nav="deid_reveal"' not in html
    html = client_as(PRIVACY).get("/deid/").content.decode()
    assert 'data-nav="deid_reveal"' in html


def test_profiles_are_saved_as_versions_with_a_readable_diff(client_as, mixed):
    from apps.deid.models import ProfileVersion

    client = client_as(PRIVACY)
    assert client.get("/deid/profiles/new/").status_code == 200
    first = client.post("/deid/profiles/new/", {"name": "site", "profile": "{}", "note": "initial"})
    v1 = ProfileVersion.objects.get()
    assert first.status_code == 302 and (v1.name, v1.version) == ("site", 1)
    assert v1.fingerprint.startswith("site@v1#")
    changed = '{"ocr": {"min_score": 0.6}, "retain_safe_private": false}'
    client.post("/deid/profiles/new/", {"name": "site", "profile": changed, "note": "stricter"})
    v2 = ProfileVersion.objects.get(version=2)
    html = client_as(AUDITOR).get(f"/deid/profiles/{v2.pk}/").content.decode()
    assert (
        "ocr.min_score: 0.5 -&gt; 0.6" in html and "retain_safe_private: true -&gt; false" in html
    )
    # The same settings again add no version.
    client.post("/deid/profiles/new/", {"name": "site", "profile": changed})
    assert ProfileVersion.objects.count() == 2
    assert AuditEvent.objects.filter(action="deid.profile_saved").count() == 2
    # A run started from a saved version records it.
    client.post("/deid/runs/new/", {"batch": mixed.batch.pk, "saved_profile": v2.pk})
    run = DeidRun.objects.get()
    assert run.profile_version == v2 and run.profile_fingerprint == v2.fingerprint


@pytest.mark.parametrize("role", sorted(ALL_ROLES))
def test_profile_pages_follow_the_roles(role, client_as, db):
    client = client_as(role)
    assert client.get("/deid/profiles/").status_code == (200 if role in VIEWERS else 403)
    assert client.get("/deid/profiles/new/").status_code == (200 if role in RUNNERS else 403)
    assert client.get("/deid/profiles/999/").status_code == (404 if role in VIEWERS else 403)
