"""Fixtures for the jobs app's tests (tests/jobs/test_*.py).

Django is imported inside the fixtures only: tests/jobs/schedulers runs with ``-p no:django``
and sees this file too.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

TINY_SCRIPT_DIR = Path(__file__).parent / "templates"


class FakeScheduler:
    """An in-memory scheduler with the adapter interface, for exact state-mapping tests.

    ``set(job_id, state, **fields)`` plays the cluster; ``down = True`` plays an outage.
    """

    name = "fake"

    def __init__(self) -> None:
        self.jobs: dict[str, Any] = {}
        self.specs: dict[str, Any] = {}
        self.submits = 0
        self.cancelled: list[str] = []
        self.requeued: list[str] = []
        self.down = False
        self._ids = itertools.count(100)
        self._lock = threading.Lock()

    def _check(self) -> None:
        from apps.jobs.schedulers import SchedulerError

        if self.down:
            raise SchedulerError("Unable to contact slurm controller", permanent=False)

    def submit(self, spec: Any) -> str:
        from apps.jobs.schedulers import JobState

        self._check()
        spec.validate()
        with self._lock:
            job_id = str(next(self._ids))
            self.submits += 1
        self.specs[job_id] = spec
        self.jobs[job_id] = JobState(
            job_id=job_id,
            state="PENDING",
            name=spec.name,
            comment=spec.comment,
            submit_time=datetime.now(UTC),
        )
        return job_id

    def set(self, job_id: str, state: str, **fields: Any) -> None:
        self.jobs[job_id] = replace(self.jobs[job_id], state=state, **fields)

    def forget(self, job_id: str) -> None:
        del self.jobs[job_id]

    def status(self, job_ids: Sequence[str]) -> dict[str, Any]:
        self._check()
        return {j: self.jobs[j] for j in job_ids if j in self.jobs}

    def cancel(self, job_id: str) -> None:
        self._check()
        self.cancelled.append(job_id)
        if job_id in self.jobs:
            self.set(job_id, "CANCELLED", exit_signal=15)

    def requeue(self, job_id: str) -> None:
        self._check()
        self.requeued.append(job_id)
        job = self.jobs[job_id]
        self.set(job_id, "PENDING", restarts=job.restarts + 1, reason="BeginTime")

    def logs(self, job_id: str, tail_bytes: int = 65536) -> str:
        return f"log of {job_id}\n"

    def cluster_info(self) -> Any:
        from apps.jobs.schedulers import ClusterInfo, NodeInfo, PartitionInfo

        return ClusterInfo(
            cluster="fake",
            partitions=(PartitionInfo("gpu", "up", ("n1",), True, 1440),),
            nodes=(
                NodeInfo(
                    "n1", "mixed", cpus=64, alloc_cpus=8, gpus=8, alloc_gpus=2, partitions=("gpu",)
                ),
            ),
        )

    def find_by_comment(self, token: str) -> list[Any]:
        self._check()
        return [j for j in self.jobs.values() if token in j.comment]


@pytest.fixture
def jobs_settings(settings: Any, tmp_path: Path) -> Any:
    """Runs under tmp_path, the local scheduler with its own state folder."""
    settings.JOBS_RUNS_ROOT = str(tmp_path / "runs")
    settings.JOBS_SCHEDULER = "local"
    settings.JOBS_SCHEDULER_OPTIONS = {
        "local": {"state_dir": str(tmp_path / "sched"), "kill_wait": 1}
    }
    settings.JOBS_GPU_MEMORY_GIB = 80
    settings.JOBS_METRICS_PORT = 0  # no /metrics endpoint: parallel suites share this host
    return settings


@pytest.fixture
def tiny_template(settings: Any) -> Path:
    """Swap the training template for tests/jobs/templates/train_job.sh: it prints its
    rank variables and exits with $MEDCTL_TEST_EXIT after $MEDCTL_TEST_SLEEP seconds."""
    settings.JOBS_SCRIPT_TEMPLATE_DIR = str(TINY_SCRIPT_DIR)
    return TINY_SCRIPT_DIR


@pytest.fixture
def make_version(db: Any, tmp_path: Path) -> Callable[..., Any]:
    """A DatasetVersion (ready unless told otherwise) with a root folder under tmp_path."""
    from apps.datasets.models import DatasetVersion

    counter = itertools.count(1)

    def make(status: str = "ready", shards: int = 64, root: str | None = None, **extra: Any) -> Any:
        n = next(counter)
        folder = tmp_path / f"dataset-v{n}"
        folder.mkdir(exist_ok=True)
        return DatasetVersion.objects.create(
            name="ct-notes",
            number=n,
            status=status,
            root=root if root is not None else str(folder),
            target_shard_mb=64,
            shard_count=shards,
            **extra,
        )

    return make


@pytest.fixture
def make_spec(make_version: Callable[..., Any]) -> Callable[..., Any]:
    """A valid small RunSpec (tiny preset, one node, one CPU process) with overrides."""
    from apps.jobs.validation import cpu_trial

    def make(**overrides: Any) -> Any:
        name = overrides.pop("name", "tiny-run")
        version = overrides.pop("dataset_version_id", None) or make_version().pk
        return cpu_trial(name, version, **{"global_batch_size": 4, **overrides})

    return make


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, jobs_settings: Any) -> FakeScheduler:
    """Every scheduler the jobs services ask for is this one FakeScheduler."""
    from apps.jobs import services

    scheduler = FakeScheduler()
    monkeypatch.setattr(services, "service_scheduler", lambda name: scheduler)
    monkeypatch.setattr(
        services,
        "submitting_scheduler",
        lambda run, user: (scheduler, "svc-medctl", "service-account"),
    )
    return scheduler


@pytest.fixture
def no_task_queue(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple[Any, ...]]]:
    """Record task messages instead of sending them to a broker; tests run them by hand."""
    from django.db import transaction

    from apps.jobs import tasks

    # Tests run inside one transaction that never commits: run on-commit work at once.
    monkeypatch.setattr(transaction, "on_commit", lambda fn, using=None, robust=False: fn())
    sent: list[tuple[str, tuple[Any, ...]]] = []
    for name in ("submit_attempt", "cancel_attempt", "requeue_attempt"):
        task = getattr(tasks, name)
        monkeypatch.setattr(task, "delay", lambda *a, _n=name: sent.append((_n, a)))
    return sent


@pytest.fixture
def run_tasks(no_task_queue: list[tuple[str, tuple[Any, ...]]]) -> Callable[[], int]:
    """Run the queued task messages (and any they queue) through the services; returns how
    many ran. Transient submit failures stay queued, as a Celery retry would."""
    from apps.jobs import services

    def run() -> int:
        count = 0
        while no_task_queue:
            name, args = no_task_queue.pop(0)
            count += 1
            if name == "submit_attempt":
                services.submit_attempt(*args)
            elif name == "cancel_attempt":
                services.cancel_job(*args)
            elif name == "requeue_attempt":
                services.requeue_job(*args)
        return count

    return run


@pytest.fixture
def cast(db: Any, settings: Any) -> dict[str, Any]:
    """The shared cast of users (tests/conftest.py), created with a fast password hasher:
    seven PBKDF2 hashes per test cost seconds on a loaded CI machine."""
    from apps.core.roles import ALL_ROLES
    from apps.core.testing import make_user, mfa_required, totp_device

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    users = {}
    for role in sorted(ALL_ROLES):
        user = make_user(f"u_{role}", role)
        if mfa_required(role):
            totp_device(user)
        users[role] = user
    return users


@pytest.fixture
def operator(cast: dict[str, Any]) -> Any:
    return cast["operator"]
