"""A real Celery worker process consumes from the configured broker and calls services.

Embedded default: kombu's filesystem transport (no server). CI: Redis. The worker reads the
same test database (SQLite file or PostgreSQL) through DATABASE_URL.
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from tests.workers import celery_worker

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_a_worker_process_seals_the_audit_day(tmp_path, settings, cast):
    from apps.audit.tasks import write_daily_digest

    env = {"AUDIT_DIGEST_DIR": str(tmp_path / "digests"), "AUDIT_DIGEST_STORE": "local"}
    with celery_worker(env):
        day = (timezone.localdate() - timedelta(days=1)).isoformat()
        write_daily_digest.delay(day)
        deadline = time.monotonic() + 90
        files: list[Path] = []
        while time.monotonic() < deadline and not files:
            files = list((tmp_path / "digests").glob(f"*{day}*"))
            time.sleep(0.5)
        assert files, "the worker did not write the digest"
        assert '"head_seq"' in files[0].read_text()
