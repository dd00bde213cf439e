"""The review sample: stratified, at least a minimum per stratum, every flagged file, only
de-identified files, and the same draw again from the stored seed."""

from __future__ import annotations

from collections import Counter

import pytest

from apps.audit.models import AuditEvent
from apps.review import services
from apps.review.models import ReviewItem
from tests.review import factories as f

pytestmark = pytest.mark.django_db


@pytest.fixture
def big_run(root):
    run = f.make_run(root, status="running")
    other = f.make_source(root, "second-site")
    f.bulk_results(run, 400, kind="dicom", modality="CT", flagged_every=97)
    f.bulk_results(run, 120, kind="dicom", modality="MR")
    f.bulk_results(run, 200, kind="text", modality="")
    f.bulk_results(run, 30, kind="edf", modality="ECG", source=other)
    f.bulk_results(run, 50, kind="dicom", modality="CT", status="quarantined", flagged_every=1)
    return f.finish(run)


def drawn(batch):
    return set(batch.items.values_list("result_id", flat=True))


def test_it_takes_the_fraction_of_each_stratum_with_a_minimum(big_run, steward):
    batch = services.create_batch(big_run, acting_user=steward, fraction=0.02, min_per_stratum=5)
    per_stratum = Counter(batch.items.filter(flagged=False).values_list("stratum", flat=True))
    source = big_run.batch.source_id
    assert per_stratum[f"dicom|CT|{source}"] == 8  # ceil(0.02 * 400)
    assert per_stratum[f"dicom|MR|{source}"] == 5  # ceil(2.4) = 3, raised to the minimum
    assert per_stratum[f"text|-|{source}"] == 5  # ceil(4) = 4, raised to the minimum
    assert sum(1 for k in per_stratum if k.startswith("edf|ECG|")) == 1
    assert batch.results_ok == 750


def test_every_flagged_de_identified_file_is_in_the_sample(big_run, steward):
    batch = services.create_batch(big_run, acting_user=steward, fraction=0.01, min_per_stratum=1)
    flagged_ok = set(big_run.results.filter(flagged=True, status="ok").values_list("pk", flat=True))
    assert flagged_ok and flagged_ok <= drawn(batch)


def test_quarantined_files_are_never_sampled(big_run, steward):
    batch = services.create_batch(big_run, acting_user=steward, fraction=0.05, min_per_stratum=3)
    statuses = set(ReviewItem.objects.filter(batch=batch).values_list("result__status", flat=True))
    assert statuses == {"ok"}


def test_the_stored_seed_draws_the_same_sample_again(big_run, steward):
    batch = services.create_batch(big_run, acting_user=steward, fraction=0.03, min_per_stratum=2)
    population = [
        (pk, services.stratum_of(kind, modality, source), flagged)
        for pk, kind, modality, source, flagged in big_run.results.filter(status="ok").values_list(
            "pk", "kind", "modality", "raw_file__source_id", "flagged"
        )
    ]
    again = services.draw_sample(population, fraction=0.03, min_per_stratum=2, seed=batch.seed)
    assert {d.result_id for d in again} == drawn(batch)
    other = services.draw_sample(population, fraction=0.03, min_per_stratum=2, seed=batch.seed + 1)
    assert {d.result_id for d in other} != drawn(batch)


def test_a_given_seed_is_kept_and_the_draw_does_not_depend_on_row_order(big_run, steward):
    batch = services.create_batch(
        big_run, acting_user=steward, fraction=0.02, min_per_stratum=2, seed=12345
    )
    assert batch.seed == 12345
    population = [
        (pk, services.stratum_of(kind, modality, source), flagged)
        for pk, kind, modality, source, flagged in big_run.results.filter(status="ok").values_list(
            "pk", "kind", "modality", "raw_file__source_id", "flagged"
        )
    ]
    shuffled = list(reversed(population))
    again = services.draw_sample(shuffled, fraction=0.02, min_per_stratum=2, seed=12345)
    assert {d.result_id for d in again} == drawn(batch)


def test_a_share_of_the_sample_is_marked_for_double_review(big_run, steward):
    batch = services.create_batch(
        big_run, acting_user=steward, fraction=0.05, min_per_stratum=1, double_review_fraction=0.2
    )
    doubles = batch.items.filter(needs_reviews=2).count()
    assert doubles == round(0.2 * batch.items_total)


@pytest.mark.parametrize("fraction", [0.0, 0.005, 0.051, 0.5])
def test_a_fraction_outside_one_to_five_percent_is_refused(big_run, steward, fraction):
    with pytest.raises(services.ReviewError, match="fraction"):
        services.create_batch(big_run, acting_user=steward, fraction=fraction)


def test_a_threshold_outside_policy_is_refused(big_run, steward):
    with pytest.raises(services.ReviewError, match="threshold"):
        services.create_batch(big_run, acting_user=steward, fraction=0.01, threshold=0.5)


def test_an_unfinished_run_cannot_be_sampled(root, steward):
    run = f.make_run(root, status="running")
    f.bulk_results(run, 10)
    with pytest.raises(services.ReviewError, match="not done"):
        services.create_batch(run, acting_user=steward, fraction=0.01)


def test_a_run_gets_one_live_batch_only(big_run, steward):
    services.create_batch(big_run, acting_user=steward, fraction=0.01)
    with pytest.raises(services.ReviewError, match="live review batch"):
        services.create_batch(big_run, acting_user=steward, fraction=0.05)


def test_a_clinician_cannot_draw_a_batch(big_run, cast):
    with pytest.raises(PermissionError):
        services.create_batch(big_run, acting_user=cast["clinician_reviewer"], fraction=0.01)


def test_drawing_a_batch_is_audited_with_its_seed(big_run, steward):
    batch = services.create_batch(big_run, acting_user=steward, fraction=0.01)
    event = AuditEvent.objects.get(action="review.batch_created")
    assert event.resource == f"review.reviewbatch:{batch.pk}"
    assert event.details["seed"] == str(batch.seed)
