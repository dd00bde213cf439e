"""A real Celery worker process runs a de-identification run from the broker to the rows."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from apps.deid import services
from apps.deid.models import DeidRun
from tests.deid.test_cli import ROOT, _database_url

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_a_worker_process_runs_a_batch(mixed, no_ocr_profile):
    from apps.deid.tasks import process_run

    queue = f"deid-test-{os.getpid()}"  # the filesystem broker is shared by every test run
    env = {**os.environ, "DATABASE_URL": _database_url(), "MEDCTL_DEV_SECRETS": "1"}
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "controlplane",
            "worker",
            "--pool=solo",
            "--concurrency=1",
            "--loglevel=WARNING",
            "-Q",
            queue,
            "-n",
            f"{queue}@%h",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
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
    finally:
        worker.terminate()
        try:
            out, _ = worker.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            out, _ = worker.communicate()
    assert b"Traceback" not in out, out.decode(errors="replace")[-2000:]
    assert DeidRun.objects.count() == 1
