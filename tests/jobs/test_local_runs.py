"""The whole lifecycle through the embedded ``local`` scheduler (real processes, no Slurm),
and, marked slow, the real trainer on the tiny preset for a few steps on CPU."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from apps.jobs import services
from apps.jobs.models import AttemptState, RunState
from tests.jobs.waiting import wait_for_attempt, wait_for_run

pytestmark = pytest.mark.django_db


@pytest.fixture
def local_runs(jobs_settings, tiny_template):
    return jobs_settings


def test_a_local_run_completes_and_its_log_is_readable(local_runs, make_spec, operator, run_tasks):
    run = services.launch_run(make_spec(name="local-ok", max_steps=1), acting_user=operator)
    run_tasks()
    wait_for_run(run, RunState.COMPLETED)
    attempt = run.attempts.get()
    assert attempt.exit_code == 0 and attempt.submitted_via == "local"
    assert f"medctl test job {attempt.job_id}" in services.log_tail(attempt)


def test_a_local_run_that_exits_75_is_resumed_automatically(
    local_runs, make_spec, operator, run_tasks
):
    run = services.launch_run(
        make_spec(name="local-requeue", max_steps=1, max_auto_requeues=1), acting_user=operator
    )
    run_tasks()
    deadline = time.monotonic() + 60
    while run.attempts.count() < 2 and time.monotonic() < deadline:
        services.reconcile()
        run_tasks()
        time.sleep(0.3)
    wait_for_run(run, RunState.FAILED)
    assert [a.trigger for a in run.attempts.order_by("number")] == ["launch", "auto"]
    assert run.auto_requeues == 1


def test_cancel_and_requeue_of_local_jobs(local_runs, make_spec, operator, run_tasks):
    run = services.launch_run(make_spec(name="local-long", max_steps=60), acting_user=operator)
    run_tasks()
    wait_for_run(run, RunState.RUNNING)
    attempt = run.attempts.get()
    services.requeue_run(run, acting_user=operator)
    run_tasks()
    wait_for_attempt(attempt, lambda a: a.restarts == 1 and a.state == AttemptState.RUNNING)
    services.cancel_run(run, acting_user=operator)
    run_tasks()
    wait_for_run(run, RunState.CANCELLED, timeout=30)


@pytest.mark.slow
def test_the_real_trainer_runs_the_tiny_preset_and_resumes_from_its_checkpoint(
    jobs_settings, make_version, operator, run_tasks, tmp_path
):
    """The real template, the real trainer (CPU, tiny preset, 3 steps), then a resume that
    starts from the checkpoint the first attempt wrote."""
    data = tmp_path / "synth"
    subprocess.run(
        [sys.executable, "-m", "trainer", "synth", "--out", str(data), "--samples", "32"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    shards = len(json.loads((data / "manifest.json").read_text())["shards"])
    version = make_version(root=str(data), shards=shards)
    from apps.jobs.validation import cpu_trial

    spec = cpu_trial("tiny-real", version.pk)
    run = services.launch_run(spec, acting_user=operator)
    run_tasks()
    wait_for_run(run, RunState.COMPLETED, RunState.FAILED, timeout=240)
    first = run.attempts.get()
    assert run.state == RunState.COMPLETED, services.log_tail(first)
    checkpoints = services.run_checkpoints(run)
    assert checkpoints and checkpoints[0].ok and checkpoints[0].step == 3
    assert services.run_metrics(run) is not None
    second = services.resume_run(run, acting_user=operator)
    run_tasks()
    second.refresh_from_db()
    assert second.resumed_from_step == 3
    wait_for_run(run, RunState.COMPLETED, RunState.FAILED, timeout=240)
    assert run.state == RunState.COMPLETED
    assert "resum" in services.log_tail(second).lower()
    assert Path(checkpoints[0].path).is_dir()
