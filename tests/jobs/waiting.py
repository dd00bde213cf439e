"""Poll the reconciler until a run or attempt reaches a state (local and Slurm run tests)."""

from __future__ import annotations

import time
from collections.abc import Callable

from apps.jobs import services
from apps.jobs.models import Attempt, TrainingRun


def wait_for_run(run: TrainingRun, *states: str, timeout: float = 90) -> TrainingRun:
    deadline = time.monotonic() + timeout
    while True:
        services.reconcile()
        run.refresh_from_db()
        if run.state in states or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert run.state in states, (run.state, list(run.attempts.values("state", "reason", "error")))
    return run


def wait_for_attempt(
    attempt: Attempt, predicate: Callable[[Attempt], bool], timeout: float = 90
) -> Attempt:
    deadline = time.monotonic() + timeout
    while True:
        services.reconcile()
        attempt.refresh_from_db()
        if predicate(attempt) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert predicate(attempt), (attempt.state, attempt.restarts, attempt.reason)
    return attempt
