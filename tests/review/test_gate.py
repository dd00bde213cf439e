"""The release gate: below the bound, with open findings, unreviewed or stale items, a run is
refused through the page, the API and the command alike; a release never carries
quarantined files, and an unreleased run carries nothing."""

from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command

from apps.audit.models import AuditEvent
from apps.deid.models import DeidRun
from apps.review import services
from apps.review.models import Finding
from tests.review import factories as f

pytestmark = pytest.mark.django_db


def small_reviewed_batch(root, steward, reviewer, *, fail_one=False):
    run = f.make_run(root, status="running")
    f.bulk_results(run, 5)
    f.bulk_results(run, 2, status="quarantined")
    f.finish(run)
    batch = services.create_batch(
        run, acting_user=steward, fraction=0.05, min_per_stratum=5, double_review_fraction=0
    )
    f.review_everything(
        batch,
        [reviewer],
        decide=lambda item, r: (
            ("fail", "name") if fail_one and item.position == 0 else ("pass", "")
        ),
    )
    return batch


@pytest.fixture
def low_batch(root, steward, clinicians):
    """Five clean reviews: a pass rate of 1.0 whose lower bound (0.55) is far below 0.99."""
    return small_reviewed_batch(root, steward, clinicians(1)[0])


@pytest.fixture
def clean_batch(root, steward, clinicians):
    """299 clean reviews of a run that also has quarantined and errored files."""
    run = f.make_run(root, status="running")
    f.bulk_results(run, 299)
    f.bulk_results(run, 7, status="quarantined")
    f.bulk_results(run, 2, status="error")
    f.finish(run)
    batch = services.create_batch(
        run, acting_user=steward, fraction=0.05, min_per_stratum=299, double_review_fraction=0
    )
    f.mark_all_passed(batch, clinicians(1)[0])
    return batch


def test_the_gate_names_the_bound_when_it_is_too_low(low_batch):
    gate = services.gate(low_batch)
    assert (gate.reviewed, gate.passed, gate.rate) == (5, 5, 1.0)
    assert gate.lower_bound == pytest.approx(0.05 ** (1 / 5))
    assert not gate.releasable
    assert any("below the threshold" in r and "299" in r for r in gate.reasons)


def test_a_batch_below_the_bound_cannot_be_released_through_the_page(low_batch, client_as):
    response = client_as("data_steward").post(
        f"/review/batches/{low_batch.pk}/release/", follow=True
    )
    assert response.status_code == 200
    assert "below the threshold" in response.content.decode()
    assert DeidRun.objects.get(pk=low_batch.run_id).released_at is None


def test_a_batch_below_the_bound_cannot_be_released_through_the_api(low_batch, client_as):
    response = client_as("privacy_officer").post(
        "/api/review/releases/", {"run": low_batch.run_id}, content_type="application/json"
    )
    assert response.status_code == 409
    assert any("below the threshold" in r for r in response.json()["reasons"])
    assert DeidRun.objects.get(pk=low_batch.run_id).released_at is None


def test_a_batch_below_the_bound_cannot_be_released_through_the_command(low_batch, steward):
    with pytest.raises(CommandError, match="below the threshold"):
        call_command("review_release", str(low_batch.run_id), "--user", steward.username)
    assert DeidRun.objects.get(pk=low_batch.run_id).released_at is None


def test_the_command_refuses_a_user_who_may_not_release(low_batch, clinicians):
    with pytest.raises(CommandError, match="may not release"):
        call_command("review_release", str(low_batch.run_id), "--user", clinicians(1)[0].username)


def test_a_refused_release_is_audited(low_batch, steward):
    with pytest.raises(services.GateClosed):
        services.release_run(low_batch.run, acting_user=steward)
    event = AuditEvent.objects.get(action="review.release_refused")
    assert event.resource == f"deid.deidrun:{low_batch.run_id}"


def test_unreviewed_items_keep_the_gate_closed(root, steward):
    run = f.make_run(root, status="running")
    f.bulk_results(run, 4)
    f.finish(run)
    batch = services.create_batch(run, acting_user=steward, fraction=0.05, min_per_stratum=4)
    gate = services.gate(batch)
    assert any("not reviewed yet" in r for r in gate.reasons)
    with pytest.raises(services.GateClosed, match="not reviewed yet"):
        services.release_run(run, acting_user=steward)


def test_an_open_finding_keeps_the_gate_closed(root, steward, clinicians):
    batch = small_reviewed_batch(root, steward, clinicians(1)[0], fail_one=True)
    gate = services.gate(batch)
    assert gate.unresolved_findings == 1
    assert "1 finding is unresolved." in gate.reasons


def test_a_file_changed_after_review_is_not_covered(low_batch):
    result = low_batch.items.first().result
    type(result).objects.filter(pk=result.pk).update(output_sha256="0" * 64)
    gate = services.gate(low_batch)
    assert gate.stale == 1
    assert any("changed after it was reviewed" in r for r in gate.reasons)


def test_a_clinician_cannot_release(low_batch, clinicians, client_as):
    with pytest.raises(PermissionError):
        services.release_run(low_batch.run, acting_user=clinicians(1)[0])
    assert (
        client_as("clinician_reviewer").post(f"/review/batches/{low_batch.pk}/release/").status_code
        == 403
    )
    response = client_as("clinician_reviewer").post(
        "/api/review/releases/", {"run": low_batch.run_id}, content_type="application/json"
    )
    assert response.status_code == 403


def test_299_clean_reviews_release_the_run_once_and_only_its_de_identified_files(
    clean_batch, steward, client_as
):
    run = clean_batch.run
    assert services.released_results(run).count() == 0  # nothing before the release
    gate = services.gate(clean_batch)
    assert gate.releasable, gate.reasons
    assert gate.lower_bound == pytest.approx(0.99003, abs=1e-5)

    response = client_as("data_steward").post(
        "/api/review/releases/", {"run": run.pk}, content_type="application/json"
    )
    assert response.status_code == 200, response.content
    run.refresh_from_db()
    assert run.released_at is not None and run.released_by_id == steward.pk
    clean_batch.refresh_from_db()
    assert clean_batch.status == "released"

    released = services.released_results(run)
    assert released.count() == 299
    assert set(released.values_list("status", flat=True)) == {"ok"}
    event = AuditEvent.objects.get(action="review.run_released")
    assert event.details["files_quarantined"] == 7 and event.details["reviewed"] == 299

    # A second release changes nothing.
    with pytest.raises(services.GateClosed, match="already released"):
        services.release_run(run, acting_user=steward)
    page = client_as("data_steward").get(f"/review/batches/{clean_batch.pk}/").content.decode()
    assert 'data-testid="gate-released"' in page and "gate-open" in page
    assert 'data-testid="gate-reasons"' not in page  # released: nothing blocks it


def test_the_command_releases_through_the_same_gate(clean_batch, steward, capsys):
    call_command("review_release", str(clean_batch.run_id), "--user", steward.username)
    assert "released" in capsys.readouterr().out
    assert DeidRun.objects.get(pk=clean_batch.run_id).released_at is not None


def test_a_released_run_cannot_be_sampled_again(clean_batch, steward):
    services.release_run(clean_batch.run, acting_user=steward)
    with pytest.raises(services.ReviewError):
        services.create_batch(clean_batch.run, acting_user=steward, fraction=0.01)


def test_a_superseded_batch_never_releases_its_run(root, steward, clinicians):
    batch = small_reviewed_batch(root, steward, clinicians(1)[0], fail_one=True)
    services.resolve_finding(
        Finding.objects.get(batch=batch), acting_user=steward, resolution="rerun"
    )
    with pytest.raises(services.GateClosed, match="no open review batch"):
        services.release_run(batch.run, acting_user=steward)


def test_a_superseded_run_cannot_be_sampled_again(root, steward, clinicians):
    batch = small_reviewed_batch(root, steward, clinicians(1)[0], fail_one=True)
    services.resolve_finding(
        Finding.objects.get(batch=batch), acting_user=steward, resolution="rerun"
    )
    with pytest.raises(services.ReviewError, match="superseded"):
        services.create_batch(batch.run, acting_user=steward, fraction=0.05)


def test_files_added_to_the_run_after_sampling_close_the_gate(clean_batch, steward):
    f.bulk_results(clean_batch.run, 1)
    gate = services.gate(clean_batch)
    assert any("changed since the sample was drawn" in r for r in gate.reasons)
    with pytest.raises(services.GateClosed):
        services.release_run(clean_batch.run, acting_user=steward)
