"""Audit test fixtures: an empty digest folder per test, events, a settable clock.

(The flush that passes the append-only triggers is installed by tests/conftest.py.)
"""

from __future__ import annotations

from datetime import datetime

import pytest
from django.db import transaction
from django.utils import timezone


@pytest.fixture(autouse=True)
def digest_dir(settings, tmp_path):
    settings.AUDIT_DIGEST_STORE = "local"
    settings.AUDIT_DIGEST_DIR = tmp_path / "digests"
    settings.AUDIT_DIGEST_KEY = "test-digest-key-0123456789abcdef"
    return settings.AUDIT_DIGEST_DIR


@pytest.fixture
def events(db):
    """``events(n, **overrides)`` appends n events (one transaction each) and returns them."""
    from apps.audit.models import AuditEvent
    from apps.audit.services import record

    def make(
        n: int = 1,
        *,
        action: str = "tests.touched",
        resource: str = "tests.thing:1",
        actor=None,
        **kwargs,
    ):
        made = []
        for _ in range(n):
            with transaction.atomic():
                record(action, resource, actor=actor, **kwargs)
            made.append(AuditEvent.objects.order_by("-seq").first())
        return made

    return make


@pytest.fixture
def clock(monkeypatch):
    """``clock.set(2026, 3, 1, 9, 0)`` fixes ``timezone.now()`` at that site-local time."""

    class Clock:
        def set(self, *parts: int) -> datetime:
            when = datetime(*parts, tzinfo=timezone.get_default_timezone())
            monkeypatch.setattr(timezone, "now", lambda: when)
            return when

    return Clock()


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    # The cast fixture hashes seven passwords per test; PBKDF2 costs seconds on this machine.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
