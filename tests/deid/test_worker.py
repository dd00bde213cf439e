"""A real Celery worker process runs a de-identification run from the broker to the rows."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from apps.deid import services
from apps.deid.models import DeidRun
from tests.workers import celery_worker

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_a_worker_process_runs_a_batch(mixed, no_ocr_profile):
    from apps.deid.tasks import process_run

    queue = f"deid-test-{os.getpid()}"  # the filesystem broker is shared by every test run
    with celery_worker({}, queue=queue):
        run = services.start_run(
            mixed.batch, profile=no_ocr_profile, acting_user=None, enqueue=False
        )
        process_run.apply_async((run.pk,), queue=queue)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            run.refresh_from_db()
            if not run.is_active:
                break
            time.sleep(0.5)
        assert run.status == "done", run.status
        assert run.files_done == run.files_total == 7 and run.files_ok == 3
        assert all(
            (Path(run.output_root) / r.output_relpath).is_file()
            for r in run.results.filter(status="ok")
        )
    assert DeidRun.objects.count() == 1
