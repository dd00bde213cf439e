"""The lease queue: one reviewer per item at a time, leases expire, double review by a second
person, never the same person twice, every verdict kept; findings and re-review."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.audit.models import AuditEvent
from apps.review import services
from apps.review.models import Finding, ReviewItem, Verdict
from tests.review import factories as f

pytestmark = pytest.mark.django_db


@pytest.fixture
def batch(root, steward):
    run = f.make_run(root, status="running")
    f.bulk_results(run, 6, kind="dicom", modality="CT")
    f.finish(run)
    return services.create_batch(
        run, acting_user=steward, fraction=0.05, min_per_stratum=6, double_review_fraction=0.0
    )


def test_two_reviewers_get_different_items(batch, clinicians):
    a, b = clinicians(2)
    assert services.next_item(batch, a).pk != services.next_item(batch, b).pk


def test_a_reviewer_keeps_getting_the_item_they_hold(batch, clinicians):
    (a,) = clinicians(1)
    assert services.next_item(batch, a).pk == services.next_item(batch, a).pk


def test_an_expired_lease_returns_the_item_to_the_queue(batch, clinicians):
    a, b = clinicians(2)
    item = services.next_item(batch, a)
    ReviewItem.objects.filter(pk=item.pk).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert services.next_item(batch, b).pk == item.pk
    with pytest.raises(services.LeaseLost):
        services.submit_verdict(item, a, decision="pass")


def test_a_verdict_needs_the_lease(batch, clinicians):
    a, b = clinicians(2)
    item = services.next_item(batch, a)
    with pytest.raises(services.LeaseLost):
        services.submit_verdict(item, b, decision="pass")


def test_a_pass_finishes_a_single_review_item_and_frees_the_lease(batch, clinicians):
    (a,) = clinicians(1)
    item = services.next_item(batch, a)
    verdict = services.submit_verdict(item, a, decision="pass")
    item.refresh_from_db()
    assert (item.status, item.outcome, item.lease_user_id) == ("done", "pass", None)
    assert verdict.output_sha256 == item.result.output_sha256
    assert verdict.seconds >= 0
    assert services.next_item(batch, a).pk != item.pk


def test_a_fail_needs_a_category_and_opens_a_finding(batch, clinicians):
    (a,) = clinicians(1)
    item = services.next_item(batch, a)
    with pytest.raises(services.ReviewError, match="category"):
        services.submit_verdict(item, a, decision="fail")
    services.submit_verdict(
        item,
        a,
        decision="fail",
        category="burned_in_text",
        region={"x0": 1, "y0": 1, "x1": 9, "y1": 5},
    )
    finding = Finding.objects.get(item=item)
    assert (finding.status, finding.category, finding.round) == ("open", "burned_in_text", 1)


def test_a_region_must_be_a_span_or_a_box(batch, clinicians):
    (a,) = clinicians(1)
    item = services.next_item(batch, a)
    with pytest.raises(services.ReviewError, match="region"):
        services.submit_verdict(item, a, decision="fail", category="name", region={"text": "Zhang"})
    with pytest.raises(services.ReviewError, match="span"):
        services.submit_verdict(
            item, a, decision="fail", category="name", region={"start": 5, "end": 2}
        )


def test_a_double_review_item_goes_to_a_second_clinician(root, steward, clinicians):
    run = f.make_run(root, status="running")
    f.bulk_results(run, 3)
    f.finish(run)
    batch = services.create_batch(
        run, acting_user=steward, fraction=0.05, min_per_stratum=3, double_review_fraction=1.0
    )
    a, b = clinicians(2)
    first = services.next_item(batch, a)
    services.submit_verdict(first, a, decision="pass")
    first.refresh_from_db()
    assert (first.status, first.reviews_done) == ("pending", 1)
    # a never sees it again; b does.
    seen_by_a = set()
    while (item := services.next_item(batch, a)) is not None:
        seen_by_a.add(item.pk)
        services.submit_verdict(item, a, decision="pass")
    assert first.pk not in seen_by_a
    seen_by_b = []
    while (item := services.next_item(batch, b)) is not None:
        seen_by_b.append(item.pk)
        services.submit_verdict(
            item,
            b,
            decision="fail" if item.pk == first.pk else "pass",
            category="name" if item.pk == first.pk else "",
        )
    assert sorted(seen_by_b) == sorted(batch.items.values_list("pk", flat=True))
    first.refresh_from_db()
    assert (first.status, first.outcome) == ("done", "fail")  # a disagreement counts as a fail
    gate = services.gate(batch)
    assert gate.kappa_pairs == 3


def test_the_database_refuses_a_second_verdict_by_the_same_person(batch, clinicians):
    (a,) = clinicians(1)
    item = services.next_item(batch, a)
    verdict = services.submit_verdict(item, a, decision="pass")
    with pytest.raises(IntegrityError), transaction.atomic():
        Verdict.objects.create(
            item=item,
            reviewer=a,
            round=1,
            decision="pass",
            seconds=1,
            output_sha256=verdict.output_sha256,
        )


def test_every_verdict_is_audited_without_content(batch, clinicians):
    (a,) = clinicians(1)
    item = services.next_item(batch, a)
    verdict = services.submit_verdict(item, a, decision="fail", category="phone")
    event = AuditEvent.objects.get(action="review.verdict_recorded")
    assert event.user_id == a.pk
    assert event.details["verdict_id"] == verdict.pk
    assert event.details["category"] == "phone"


def test_fixing_a_finding_sends_the_item_back_for_someone_else(batch, clinicians, steward):
    a, b = clinicians(2)
    item = services.next_item(batch, a)
    services.submit_verdict(item, a, decision="fail", category="name")
    finding = Finding.objects.get(item=item)
    services.resolve_finding(finding, acting_user=steward, resolution="fixed")
    item.refresh_from_db()
    assert (item.round, item.status, item.outcome, item.reviews_done) == (2, "pending", "", 0)
    # The failing verdict is kept; the re-review is somebody else's.
    assert Verdict.objects.filter(item=item).count() == 1
    while (other := services.next_item(batch, a)) is not None:
        assert other.pk != item.pk
        services.submit_verdict(other, a, decision="pass")
    assert services.next_item(batch, b).pk == item.pk
    with pytest.raises(services.ReviewError, match="already resolved"):
        services.resolve_finding(finding, acting_user=steward, resolution="fixed")


def test_fixing_a_stratum_requeues_all_its_items(batch, clinicians, steward):
    (a,) = clinicians(1)
    f.review_everything(
        batch, [a], decide=lambda item, r: ("fail", "date") if item.position == 0 else ("pass", "")
    )
    finding = Finding.objects.get(batch=batch)
    services.resolve_finding(finding, acting_user=steward, resolution="fixed", scope="stratum")
    assert batch.items.filter(status="pending", round=2).count() == 6
    assert Finding.objects.get(pk=finding.pk).requeued == 6


def test_a_rerun_supersedes_the_batch(batch, clinicians, steward):
    (a,) = clinicians(1)
    item = services.next_item(batch, a)
    services.submit_verdict(item, a, decision="fail", category="address")
    services.resolve_finding(
        Finding.objects.get(item=item), acting_user=steward, resolution="rerun"
    )
    batch.refresh_from_db()
    assert batch.status == "superseded"
    assert services.next_item(batch, a) is None


def test_a_clinician_cannot_resolve_findings(batch, clinicians):
    (a,) = clinicians(1)
    item = services.next_item(batch, a)
    services.submit_verdict(item, a, decision="fail", category="name")
    with pytest.raises(PermissionError):
        services.resolve_finding(Finding.objects.get(item=item), acting_user=a, resolution="fixed")


def test_dashboards_count_per_reviewer_and_per_category(batch, clinicians):
    a, b = clinicians(2)
    f.review_everything(
        batch,
        [a, b],
        decide=lambda item, r: ("fail", "face") if item.position < 2 else ("pass", ""),
    )
    rows = {r["username"]: r for r in services.reviewer_stats(batch)}
    assert sum(r["verdicts"] for r in rows.values()) == 6
    assert services.failures_by_category(batch)["face"] == 2
    assert services.progress(batch) == {
        "total": 6,
        "done": 6,
        "leased": 0,
        "waiting": 0,
        "withdrawn": 0,
        "percent": 100,
    }
