"""A real Celery worker process for tests that prove work crosses the broker."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from django.db import connection

ROOT = Path(__file__).resolve().parents[1]


def database_url() -> str:
    """The test database as a DATABASE_URL, for a child process to open the same one."""
    s = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{s['NAME']}"
    auth = s["USER"] + (f":{s['PASSWORD']}" if s.get("PASSWORD") else "")
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


@contextlib.contextmanager
def celery_worker(env: dict[str, str], *, queue: str | None = None) -> Iterator[None]:
    """A solo-pool worker on the test database (``env`` adds to it) for the body's duration.

    ``queue`` keeps it to its own queue (the filesystem broker is shared by every test run).
    When the body passed, the worker's output must hold no traceback.
    """
    name = queue or f"test-{os.getpid()}"
    args = [sys.executable, "-m", "celery", "-A", "controlplane", "worker", "--pool=solo"]
    args += ["--concurrency=1", "--loglevel=WARNING", "-n", f"{name}@%h"]
    if queue:
        args += ["-Q", queue]
    worker = subprocess.Popen(
        args,
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database_url(), "MEDCTL_DEV_SECRETS": "1", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        yield
    finally:
        worker.terminate()
        try:
            out, _ = worker.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            out, _ = worker.communicate()
    assert b"Traceback" not in out, out.decode(errors="replace")[-2000:]
