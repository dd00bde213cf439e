"""Fixtures for the scheduler adapter tests.

Tests marked `slurm` need the single-node cluster of deploy/slurm/up.sh. When it is not
reachable they skip, except under MEDCTL_REQUIRE_SERVICES=1 (CI), where they fail: a CI run
that silently skipped the real-Slurm tests would prove nothing.

Environment read here:
    MEDCTL_REQUIRE_SERVICES  "1": fail instead of skip when Slurm is absent
    MEDCTL_SLURMRESTD_ENV    the KEY=VALUE file up.sh writes (default /run/slurmrestd/token.env)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from apps.jobs.schedulers import get_scheduler
from apps.jobs.schedulers.local import LocalScheduler
from apps.jobs.schedulers.slurm import SlurmCLI
from apps.jobs.schedulers.slurmrestd import SlurmRestd

TOKEN_ENV = os.environ.get("MEDCTL_SLURMRESTD_ENV", "/run/slurmrestd/token.env")


def _require(name: str, available: bool, why: str) -> None:
    if available:
        return
    if os.environ.get("MEDCTL_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{name} is required here (MEDCTL_REQUIRE_SERVICES=1) but {why}")
    pytest.skip(f"{name} not available: {why}")


def _slurm_answers() -> tuple[bool, str]:
    sinfo = shutil.which("sinfo")
    if not sinfo:
        return False, "sinfo is not installed (run deploy/slurm/install.sh)"
    try:
        proc = subprocess.run(
            [sinfo, "-h", "-o", "%T"], capture_output=True, text=True, timeout=15, check=False
        )
    except subprocess.TimeoutExpired:
        return False, "sinfo timed out"
    if proc.returncode != 0:
        return False, f"slurmctld does not answer: {proc.stderr.strip()} (run deploy/slurm/up.sh)"
    states = proc.stdout.split()
    if not any(s.rstrip("*") in ("idle", "mixed", "allocated", "completing") for s in states):
        return False, f"no usable node (states: {states})"
    return True, ""


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    """Slurm answers and has a usable node, or skip/fail."""
    ok, why = _slurm_answers()
    _require("Slurm", ok, why)


@pytest.fixture
def slurm(slurm_cluster: None) -> SlurmCLI:
    scheduler = get_scheduler("slurm", {"timeout": 30})
    assert isinstance(scheduler, SlurmCLI)
    return scheduler


def _token_values() -> dict[str, str]:
    text = Path(TOKEN_ENV).read_text(encoding="utf-8")
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


@pytest.fixture
def restd(slurm_cluster: None) -> SlurmRestd:
    """The JWT slurmrestd of up.sh, configured from its token file."""
    _require("slurmrestd", os.path.exists(TOKEN_ENV), f"{TOKEN_ENV} does not exist")
    values = _token_values()
    scheduler = get_scheduler(
        "slurmrestd",
        {"url": values.get("SLURMRESTD_URL", "http://127.0.0.1:6820"), "token_file": TOKEN_ENV},
    )
    assert isinstance(scheduler, SlurmRestd)
    try:
        scheduler.version()
    except Exception as exc:
        _require("slurmrestd", False, f"it does not answer: {exc}")
    return scheduler


@pytest.fixture
def shared_dir() -> Iterator[str]:
    """A work folder every user can write, under /tmp: jobs submitted through slurmrestd
    run as the token's user (slurmapi), who cannot enter pytest's private tmp_path."""
    path = tempfile.mkdtemp(prefix="medctl-sched-", dir="/tmp")
    os.chmod(path, 0o1777)  # noqa: S103 - a scratch folder for jobs of another user
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def local(tmp_path: Path) -> LocalScheduler:
    scheduler = get_scheduler("local", {"state_dir": str(tmp_path / "state"), "kill_wait": 1})
    assert isinstance(scheduler, LocalScheduler)
    return scheduler


@pytest.fixture
def workdir(tmp_path: Path) -> str:
    path = tmp_path / "work"
    path.mkdir()
    return str(path)


def wait_for(predicate: Callable[[], object], timeout: float = 30.0, every: float = 0.3) -> object:
    """Poll until predicate() is truthy; return its value or fail with the last one."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(every)
        value = predicate()
    assert value, f"condition not met within {timeout}s"
    return value


@pytest.fixture
def wait() -> Callable[..., object]:
    return wait_for
