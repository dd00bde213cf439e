"""Label sets are versioned and append-only: a new upload never rewrites an old one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.db import DatabaseError, transaction

from apps.audit.models import AuditEvent
from apps.datasets import services
from apps.datasets.models import AnnotationSet

pytestmark = pytest.mark.django_db


def _keys(version):
    index = sorted((Path(version.root) / "index").glob("*.json"))
    return sorted(k for f in index for k in json.loads(f.read_text())["samples"])


def _labels(version, label):
    return "".join(json.dumps({"key": k, "label": label}) + "\n" for k in _keys(version)).encode()


def _add(version, data, user=None, name="nodules", filename="labels.jsonl", score=0.9):
    return services.add_annotation_set(
        version, name=name, data=data, filename=filename, quality_score=score, acting_user=user
    )


def test_it_stores_a_label_set_with_author_time_score_and_hash(built, steward):
    first = _add(built, _labels(built, "benign"), steward)
    assert (first.number, first.author, first.quality_score) == (1, steward, 0.9)
    assert first.label_count == first.sample_count == 3
    assert Path(first.path).read_bytes() == _labels(built, "benign")
    assert first.created is not None


def test_a_new_upload_is_a_new_version_and_the_old_one_is_untouched(built):
    first = _add(built, _labels(built, "benign"))
    before = Path(first.path).read_bytes()
    second = _add(built, _labels(built, "malignant"), score=0.95)
    assert second.number == 2 and second.path != first.path
    first.refresh_from_db()
    assert Path(first.path).read_bytes() == before
    assert first.sha256 != second.sha256
    assert Path(first.path).stat().st_mode & 0o222 == 0  # read-only on disk


def test_the_database_refuses_to_rewrite_a_label_set(built):
    first = _add(built, _labels(built, "benign"))
    with pytest.raises(DatabaseError), transaction.atomic():
        AnnotationSet.objects.filter(pk=first.pk).update(sha256="0" * 64)
    first.quality_score = 0.1
    with pytest.raises(DatabaseError), transaction.atomic():
        first.save()


def test_labels_for_samples_not_in_the_version_are_refused_with_line_numbers(built):
    data = _labels(built, "x") + b'{"key": "s-not-here", "label": "x"}\n' + b"not json\n"
    with pytest.raises(services.AnnotationError) as caught:
        _add(built, data)
    assert caught.value.errors == [
        "line 5: not JSON (Expecting value)",
        "line 4: sample 's-not-here' is not in this dataset version",
    ]
    assert not AnnotationSet.objects.exists()


def test_csv_label_sets_need_a_key_column(built):
    rows = "key,label\n" + "".join(f"{k},benign\n" for k in _keys(built))
    created = _add(built, rows.encode(), filename="labels.csv")
    assert created.format == "csv" and created.label_count == 3
    with pytest.raises(services.AnnotationError, match="key"):
        _add(built, b"sample,label\nx,y\n", filename="labels.csv")


def test_a_quality_score_outside_zero_to_one_is_refused(built):
    with pytest.raises(services.DatasetError, match="quality score"):
        _add(built, _labels(built, "x"), score=1.5)


def test_each_label_set_is_audited(built, steward):
    created = _add(built, _labels(built, "benign"), steward)
    event = AuditEvent.objects.get(action="datasets.annotation_set_added")
    assert event.resource == f"datasets.annotationset:{created.pk}"
    assert event.user_id == steward.pk
