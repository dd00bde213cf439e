"""Fifty reviewers work one batch at once on PostgreSQL: no item is assigned twice at the
same time, no verdict is lost, and every count adds up."""

from __future__ import annotations

import threading
from collections import Counter, defaultdict

import pytest
from django.db import connections

from apps.review import services
from apps.review.models import Finding, ReviewItem, Verdict
from tests.review import factories as f

SESSIONS = 50
ITEMS = 150


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_fifty_reviewers_share_one_batch_without_double_assignment_or_loss(
    on_postgres, root, steward, clinicians
):
    run = f.make_run(root, status="running")
    f.bulk_results(run, ITEMS, kind="dicom", modality="CT")
    f.finish(run)
    batch = services.create_batch(
        run,
        acting_user=steward,
        fraction=0.05,
        min_per_stratum=ITEMS,
        double_review_fraction=0.2,
        seed=2026,
    )
    needed = sum(batch.items.values_list("needs_reviews", flat=True))
    assert needed == ITEMS + 30
    reviewers = clinicians(SESSIONS)
    start = threading.Barrier(SESSIONS)
    lock = threading.Lock()
    holding: dict[int, int] = {}  # item -> reviewer holding it right now
    overlaps: list[tuple[int, int, int]] = []
    given: list[tuple[int, int, str]] = []  # (item, reviewer, decision), as acknowledged
    errors: list[BaseException] = []

    def session(reviewer) -> None:
        try:
            start.wait()
            while (item := services.next_item(batch, reviewer)) is not None:
                with lock:
                    if item.pk in holding and holding[item.pk] != reviewer.pk:
                        overlaps.append((item.pk, holding[item.pk], reviewer.pk))
                    holding[item.pk] = reviewer.pk
                # Every 17th item fails, so findings and category counts are exercised too.
                failing = item.position % 17 == 0
                with lock:
                    del holding[item.pk]  # released before the verdict's commit frees it
                services.submit_verdict(
                    item,
                    reviewer,
                    decision="fail" if failing else "pass",
                    category="name" if failing else "",
                )
                with lock:
                    given.append((item.pk, reviewer.pk, "fail" if failing else "pass"))
        except BaseException as exc:  # surfaced below with the thread's traceback
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=session, args=(r,)) for r in reviewers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors[:3]
    assert overlaps == []

    # No lost verdict: every acknowledged verdict is stored, and nothing else is.
    stored = set(
        Verdict.objects.filter(item__batch=batch).values_list("item_id", "reviewer_id", "decision")
    )
    assert stored == set(given)
    assert len(given) == needed
    # No double assignment: each item got exactly the reviews it needed, by distinct people.
    per_item: dict[int, list[int]] = defaultdict(list)
    for item_id, reviewer_id, _ in given:
        per_item[item_id].append(reviewer_id)
    needs = dict(batch.items.values_list("pk", "needs_reviews"))
    assert {k: len(v) for k, v in per_item.items()} == needs
    assert all(len(set(v)) == len(v) for v in per_item.values())
    # Correct counts.
    assert ReviewItem.objects.filter(batch=batch, status="done").count() == ITEMS
    assert ReviewItem.objects.filter(batch=batch, lease_user_id__isnull=False).count() == 0
    failing_items = {i for i, _, d in given if d == "fail"}
    assert Finding.objects.filter(batch=batch).count() == len(failing_items)
    gate = services.gate(batch)
    assert (gate.reviewed, gate.failed) == (ITEMS, len(failing_items))
    assert gate.kappa_pairs == 30
    assert sum(r["verdicts"] for r in services.reviewer_stats(batch)) == needed
    assert Counter(d for _, _, d in given)["fail"] == services.failures_by_category(batch)["name"]
