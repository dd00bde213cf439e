"""A scratch test database for the benches that need Django: SQLite by default, or the
PostgreSQL of ``DATABASE_URL``; made before the bench and destroyed after, like a test run's.

    from scratch_db import scratch_database   # bench/ is on sys.path when a bench runs
    with scratch_database(JOBS_RUNS_ROOT="/tmp/x"):
        run_bench(args)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
os.environ.setdefault("MEDCTL_DEV_SECRETS", "1")


@contextmanager
def scratch_database(**overrides: Any) -> Iterator[None]:
    """Set Django up with test settings (fast password hashing, any host, ``overrides``) and
    a fresh test database for the duration of the block."""
    import django

    django.setup()
    from django.conf import settings
    from django.db import connection
    from django.test.utils import setup_test_environment

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.ALLOWED_HOSTS = ["*"]
    for name, value in overrides.items():
        setattr(settings, name, value)
    setup_test_environment()
    old_name = connection.settings_dict["NAME"]
    connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        yield
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)
