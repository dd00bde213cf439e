"""Audit test fixtures: an empty digest folder per test, and flushes that pass the triggers."""

from __future__ import annotations

from datetime import datetime

import pytest
from django.db import transaction
from django.utils import timezone


@pytest.fixture(autouse=True, scope="session")
def _audit_flush_allowed(django_db_setup, django_db_blocker):
    """Django's flush after transactional tests would hit the append-only triggers.

    Session-wide, because pytest-django's own autouse fixture tears the database down after
    any function-scoped fixture of ours could undo a patch.
    """
    from django.db import connection

    from apps.audit.testing import allow_flush

    undo = allow_flush(connection)
    yield
    undo()


@pytest.fixture(autouse=True)
def digest_dir(settings, tmp_path):
    settings.AUDIT_DIGEST_STORE = "local"
    settings.AUDIT_DIGEST_DIR = tmp_path / "digests"
    settings.AUDIT_DIGEST_KEY = "test-digest-key-0123456789abcdef"
    return settings.AUDIT_DIGEST_DIR


@pytest.fixture
def events(db):
    """``events(n, **overrides)`` appends n events (one transaction each) and returns them."""
    from apps.audit.services import record

    def make(n: int = 1, *, action: str = "tests.touched", resource: str = "tests.thing:1",
             actor=None, **kwargs):
        made = []
        for _ in range(n):
            with transaction.atomic():
                made.append(record(action, resource, actor=actor, **kwargs))
        return made

    return make


@pytest.fixture
def clock(monkeypatch):
    """``clock.set(datetime)`` fixes ``timezone.now()`` (site time zone when naive)."""

    class Clock:
        def set(self, when: datetime) -> datetime:
            if timezone.is_naive(when):
                when = timezone.make_aware(when, timezone.get_default_timezone())
            monkeypatch.setattr(timezone, "now", lambda: when)
            return when

    return Clock()
