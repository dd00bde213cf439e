"""A real Celery worker process re-hashes a version queued from the API."""

from __future__ import annotations

import os
import time

import pytest

from apps.datasets.models import VerifyCheck
from tests.workers import celery_worker

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_a_worker_process_runs_the_check_the_api_queued(built, as_role, monkeypatch):
    from apps.datasets import tasks

    queue = f"datasets-test-{os.getpid()}"  # the filesystem broker is shared by every test run
    monkeypatch.setattr(
        tasks.run_verify_check,
        "delay",
        lambda pk: tasks.run_verify_check.apply_async((pk,), queue=queue),
    )
    with celery_worker({}, queue=queue):
        response = as_role("privacy_officer").post(f"/api/datasets/versions/{built.pk}/verify/")
        assert response.status_code == 202
        check = VerifyCheck.objects.get(pk=response.json()["id"])
        deadline = time.monotonic() + 60
        while check.unfinished and time.monotonic() < deadline:
            time.sleep(0.3)
            check.refresh_from_db()
    assert check.status == "done" and check.ok, (check.status, check.error)
    assert check.files_checked == 1 + 2 * built.shard_count
    assert check.bytes_done == check.bytes_total > 0 and check.finished_at is not None
