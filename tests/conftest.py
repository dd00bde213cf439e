"""Shared fixtures: the cast of users (one per role), logged-in clients, service guards."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("MEDCTL_DEV_SECRETS", "1")
# Playwright's sync API runs an event loop in the test thread; Django's ORM guard would
# otherwise refuse the test body's queries (see shared/notes/browser-and-ocr.md).
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

# Property tests: random exploration on a developer's machine (a failure found there is kept
# in .hypothesis/ and fixed or pinned with @example); the same examples on every CI run
# (.ci/run sets HYPOTHESIS_PROFILE=ci), so CI fails on a regression, never on the luck of a
# draw.
try:
    from hypothesis import settings as _hypothesis_settings

    _hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
    _hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
except ImportError:  # hypothesis is a dev dependency
    pass


def pytest_configure(config):
    """Fast password hashing in tests: PBKDF2's cost is for attackers, not for the suite."""
    import contextlib

    from django.core.exceptions import ImproperlyConfigured

    # Django is not configured when the pure packages run with -p no:django.
    with contextlib.suppress(ImproperlyConfigured):
        from django.conf import settings

        settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def require_service(name: str, available: bool, why: str) -> None:
    """Skip when a real service is absent, but fail in CI (MEDCTL_REQUIRE_SERVICES=1)."""
    if available:
        return
    if os.environ.get("MEDCTL_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{name} is required here but not available: {why}")
    pytest.skip(f"{name} not available: {why}")


@pytest.fixture
def cast(db):
    """One user per role, keyed by role slug; MFA-role users have a confirmed TOTP device."""
    from apps.core.roles import ALL_ROLES
    from apps.core.testing import make_user, mfa_required, totp_device

    users = {}
    for role in sorted(ALL_ROLES):
        user = make_user(f"u_{role}", role)
        if mfa_required(role):
            totp_device(user)
        users[role] = user
    return users


@pytest.fixture
def client_as(cast):
    """``client_as("auditor")`` → a Client logged in (and TOTP-verified) as that role."""
    from apps.core.testing import client_for

    def make(role: str, *, verified: bool = True):
        return client_for(cast[role], verified=verified)

    return make


@pytest.fixture
def on_postgres(db):
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL (set DATABASE_URL)")
    return connection


@pytest.fixture(autouse=True)
def _audit_events_chained_in_rolled_back_tests(request):
    """A ``db`` test runs in one transaction that is rolled back, never committed.

    On PostgreSQL audit events are chained at COMMIT (apps/audit/migrations/0003), so in such a
    test they would never appear; there they are chained as they are recorded instead, which
    is what SQLite always does. Transactional tests (``transaction=True``, live server,
    threads) commit for real and take the production path.
    """
    uses_db = request.node.get_closest_marker("django_db") is not None or any(
        name in request.fixturenames for name in ("db", "transactional_db", "live_server")
    )
    if not uses_db:
        return
    request.getfixturevalue("_django_db_helper")
    from django.db import connection

    if connection.in_atomic_block:
        from apps.audit.testing import seal_immediately

        seal_immediately(connection)


@pytest.fixture(scope="session", autouse=True)
def _audit_table_can_be_flushed():
    """Let transactional tests' flush empty the append-only audit table (test runs only).

    Skipped when Django is not loaded (the pure packages' suites run with ``-p no:django``).
    """
    try:
        from django.conf import settings

        settings.INSTALLED_APPS  # noqa: B018 - raises when Django is not configured
        from django.db import connection

        from apps.audit.testing import allow_flush
    except Exception:
        yield
        return
    undo = allow_flush(connection)
    yield
    undo()
