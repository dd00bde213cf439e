"""A patient who withdrew consent drops out of review: never sampled, never offered, never
shown or judged again, and not required by the gate; verdicts already given still count."""

from __future__ import annotations

import pytest

from apps.datasets.services import withdraw_consent
from apps.deid.models import DeidFileResult
from apps.review import services
from apps.review.models import ReviewItem
from tests.review import factories as f

pytestmark = pytest.mark.django_db


def withdraw(result, cast):
    withdraw_consent(
        result.patient_pseudonym, reference="DPO-2026-7", acting_user=cast["privacy_officer"]
    )


def with_pseudonyms(results, prefix="PX"):
    """bulk_results leaves pseudonyms blank; give each file its own patient."""
    for i, r in enumerate(results):
        DeidFileResult.objects.filter(pk=r.pk).update(patient_pseudonym=f"{prefix}{i:04d}")
        r.patient_pseudonym = f"{prefix}{i:04d}"
    return results


def run_of(root, count, prefix="PX"):
    run = f.make_run(root, status="running")
    results = with_pseudonyms(f.bulk_results(run, count), prefix)
    return f.finish(run), results


def draw(run, steward, **kw):
    options = {"fraction": 0.05, "min_per_stratum": 10_000, "double_review_fraction": 0}
    return services.create_batch(run, acting_user=steward, **{**options, **kw})


def test_a_new_sample_leaves_the_withdrawn_patient_out(root, steward, cast):
    run, results = run_of(root, 6)
    withdraw(results[2], cast)
    batch = draw(run, steward)
    sampled = set(batch.items.values_list("result_id", flat=True))
    assert sampled == {r.pk for r in results} - {results[2].pk}
    # The run's files did not change: the gate's "files changed" check must not fire.
    assert batch.results_ok == 6
    assert not any("changed since" in r for r in services.gate(batch).reasons)


def test_the_queue_skips_the_withdrawn_patient_and_takes_back_a_held_lease(
    root, steward, cast, clinicians
):
    run, _ = run_of(root, 4)
    batch = draw(run, steward)
    (a,) = clinicians(1)
    held = services.next_item(batch, a)
    withdraw(held.result, cast)
    offered = []
    while (item := services.next_item(batch, a)) is not None:
        offered.append(item.result_id)
        services.submit_verdict(item, a, decision="pass")
    assert held.result_id not in offered and len(offered) == 3
    held.refresh_from_db()
    assert held.lease_user_id is None and held.status == ReviewItem.Status.PENDING


def test_a_verdict_on_an_item_whose_patient_withdrew_is_refused(root, steward, cast, clinicians):
    run, _ = run_of(root, 2)
    batch = draw(run, steward)
    (a,) = clinicians(1)
    item = services.next_item(batch, a)
    withdraw(item.result, cast)
    with pytest.raises(services.Withdrawn):
        services.submit_verdict(item, a, decision="pass")
    assert not item.verdicts.exists()


def test_the_gate_does_not_wait_for_withdrawn_items(root, steward, cast, clinicians):
    # 59 clean reviews reach 0.95 (0.05^(1/59) = 0.9505); two more items are withdrawn unseen.
    run, results = run_of(root, 61)
    batch = draw(run, steward, threshold=0.95)
    withdraw(results[0], cast)
    withdraw(results[1], cast)
    before = services.gate(batch)
    assert before.withdrawn == 2 and before.required == 59
    assert any("59 of 59 sampled items are not reviewed" in r for r in before.reasons)
    given = f.review_everything(batch, clinicians(2))
    assert given == 59
    gate = services.gate(batch)
    assert (gate.reviewed, gate.passed, gate.withdrawn) == (59, 59, 2)
    assert gate.releasable, gate.reasons
    assert services.progress(batch) == {
        "total": 59,
        "done": 59,
        "leased": 0,
        "waiting": 0,
        "withdrawn": 2,
        "percent": 100,
    }


def test_a_failure_already_given_still_counts_after_the_withdrawal(root, steward, cast, clinicians):
    run, _ = run_of(root, 5)
    batch = draw(run, steward)
    a, b = clinicians(2)
    first = services.next_item(batch, a)
    services.submit_verdict(first, a, decision="fail", category="name")
    withdraw(first.result, cast)
    f.review_everything(batch, [a, b])
    gate = services.gate(batch)
    # The failed verdict is evidence about the run's rules: a withdrawal must not wash it out.
    assert (gate.reviewed, gate.failed, gate.withdrawn, gate.unresolved_findings) == (5, 1, 0, 1)
    assert not gate.releasable


def test_nobody_sees_a_withdrawn_patients_item_on_the_pages_or_the_api(
    mixed_run, steward, cast, client_as
):
    batch = draw(mixed_run, steward, min_per_stratum=1)
    item = batch.items.get(result__kind="dicom")
    ReviewItem.objects.filter(pk=item.pk).update(
        lease_user_id=cast["clinician_reviewer"].pk,
        leased_at=services.timezone.now(),
        lease_expires_at=services.timezone.now() + services.timedelta(minutes=5),
    )
    clinician = client_as("clinician_reviewer")
    assert clinician.get(f"/review/items/{item.pk}/image.png").status_code == 200
    withdraw(item.result, cast)

    html = clinician.get(f"/review/items/{item.pk}/").content.decode()
    assert 'data-testid="withdrawn"' in html and "withdrew consent" in html
    assert 'data-testid="verdict-form"' not in html and 'data-testid="dicom-viewer"' not in html
    assert clinician.get(f"/review/items/{item.pk}/image.png").status_code == 410
    refused = clinician.post(f"/review/items/{item.pk}/verdict/", {"decision": "pass"})
    assert refused.status_code == 302 and not item.verdicts.exists()

    privacy = client_as("privacy_officer")
    html = privacy.get(f"/review/items/{item.pk}/").content.decode()
    assert 'data-testid="withdrawn"' in html and 'data-testid="open-original"' not in html
    opened = privacy.post(f"/review/items/{item.pk}/original/", {"reason": "quality"})
    assert opened.status_code == 400 and "withdrew consent" in opened.content.decode()
    assert privacy.get(f"/review/items/{item.pk}/original.png").status_code in (404, 410)

    rows = privacy.get(f"/api/review/items/?batch={batch.pk}").json()["results"]
    assert {r["id"]: r["withdrawn"] for r in rows} == {
        i.pk: i.pk == item.pk for i in batch.items.all()
    }
    gate = privacy.get(f"/api/review/batches/{batch.pk}/gate/").json()
    assert (gate["withdrawn"], gate["required"], gate["items"]) == (1, 2, 3)
    dashboard = privacy.get(f"/review/batches/{batch.pk}/").content.decode()
    assert 'data-testid="progress-withdrawn"' in dashboard
    assert 'data-testid="gate-withdrawn"' in dashboard


def test_after_re_consent_the_items_are_offered_again(root, steward, cast, clinicians):
    from apps.datasets.services import reinstate_consent

    run, results = run_of(root, 3)
    batch = draw(run, steward)
    withdraw(results[0], cast)
    assert services.gate(batch).withdrawn == 1
    reinstate_consent(results[0].patient_pseudonym, reference="DPO-8", acting_user=None)
    assert services.gate(batch).withdrawn == 0
    assert f.review_everything(batch, clinicians(1)) == 3
