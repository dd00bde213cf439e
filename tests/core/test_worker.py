"""A real Celery worker process consumes from the configured broker and calls services.

Embedded default: kombu's filesystem transport (no server). CI: Redis. The worker reads the
same test database (SQLite file or PostgreSQL) through DATABASE_URL.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def database_url() -> str:
    s = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{s['NAME']}"
    return f"postgres://{s['USER']}@{s['HOST']}:{s['PORT']}/{s['NAME']}"


def test_a_worker_process_seals_the_audit_day(tmp_path, settings, cast):
    from apps.audit.tasks import write_daily_digest

    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "MEDCTL_DEV_SECRETS": "1",
        "AUDIT_DIGEST_DIR": str(tmp_path / "digests"),
        "AUDIT_DIGEST_STORE": "local",
    }
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
            "-n",
            f"test-{os.getpid()}@%h",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        day = (timezone.localdate() - timedelta(days=1)).isoformat()
        write_daily_digest.delay(day)
        deadline = time.monotonic() + 90
        files: list[Path] = []
        while time.monotonic() < deadline and not files:
            files = list((tmp_path / "digests").glob(f"*{day}*"))
            time.sleep(0.5)
        assert files, "the worker did not write the digest"
        assert '"head_seq"' in files[0].read_text()
    finally:
        worker.terminate()
        try:
            out, _ = worker.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            out, _ = worker.communicate()
    assert b"Traceback" not in out, out.decode(errors="replace")[-2000:]
