"""Runs against the REAL single-node Slurm of deploy/slurm (marked ``slurm``).

The batch script is tests/jobs/templates/train_job.sh (same context as the real template; it
sleeps and exits instead of training), so these tests prove the control plane's side:
submission, reconciliation, cancel, requeue, resume, idempotent retry and per-user identity.
Without Slurm they skip; with MEDCTL_REQUIRE_SERVICES=1 they fail instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from apps.jobs import services
from apps.jobs.models import Attempt, AttemptState, RunState, TrainingRun
from tests.conftest import require_service
from tests.jobs.waiting import wait_for_attempt, wait_for_run

pytestmark = [pytest.mark.slurm, pytest.mark.django_db]

TOKEN_ENV = os.environ.get("MEDCTL_SLURMRESTD_ENV", "/run/slurmrestd/token.env")


def _slurm_up() -> tuple[bool, str]:
    from apps.jobs.schedulers import SchedulerError, get_scheduler

    try:
        info = get_scheduler("slurm", {"timeout": 15}).cluster_info()
    except SchedulerError as exc:
        return False, exc.message
    usable = [n for n in info.nodes if n.state.split("+")[0] in ("idle", "mixed", "allocated")]
    return bool(usable), f"no usable node in {[n.state for n in info.nodes]}"


@pytest.fixture
def slurm_runs(settings, tiny_template):
    """Jobs go to real Slurm; run folders in a world-writable scratch folder (jobs submitted
    through slurmrestd run as the token's user, not as root)."""
    ok, why = _slurm_up()
    require_service("Slurm", ok, why)
    root = tempfile.mkdtemp(prefix="medctl-runs-", dir="/tmp")
    os.chmod(root, 0o1777)  # noqa: S103 - scratch for jobs of another user
    settings.JOBS_RUNS_ROOT = root
    settings.JOBS_RUN_DIR_MODE = 0o777
    settings.JOBS_SCHEDULER = "slurm"
    settings.JOBS_SCHEDULER_OPTIONS = {"slurm": {"timeout": 30}}
    settings.JOBS_METRICS_PORT = 0
    yield root
    shutil.rmtree(root, ignore_errors=True)


def launch(make_spec, operator, run_tasks, **kw) -> TrainingRun:
    run = services.launch_run(make_spec(scheduler="slurm", **kw), acting_user=operator)
    run_tasks()
    run.refresh_from_db()
    return run


def test_a_run_goes_pending_running_completed_and_resumes(
    slurm_runs, make_spec, operator, run_tasks
):
    run = launch(make_spec, operator, run_tasks, name="slurm-ok", max_steps=3)
    attempt = run.attempts.get()
    assert attempt.job_id.isdigit() and attempt.submitted_as
    wait_for_run(run, RunState.RUNNING, RunState.COMPLETED)
    wait_for_run(run, RunState.COMPLETED)
    attempt.refresh_from_db()
    assert attempt.state == AttemptState.COMPLETED and attempt.exit_code == 0
    assert attempt.started_at and attempt.ended_at
    log = (
        Path(slurm_runs)
        / f"slurm-ok-{run.pk}"
        / "logs"
        / f"medctl-slurm-ok-{run.pk}-{attempt.job_id}.out"
    )
    assert f"medctl test job {attempt.job_id}" in log.read_text()
    # Resume: a second attempt, a second job, completed too.
    second = services.resume_run(run, acting_user=operator)
    run_tasks()
    second.refresh_from_db()
    assert second.number == 2 and second.job_id and second.job_id != attempt.job_id
    wait_for_run(run, RunState.COMPLETED)


def test_a_failing_job_fails_the_run_with_its_exit_code(slurm_runs, make_spec, operator, run_tasks):
    run = launch(make_spec, operator, run_tasks, name="slurm-fail", max_steps=1)
    wait_for_run(run, RunState.FAILED)
    assert run.attempts.get().exit_code == 3


def test_cancel_stops_a_running_job(slurm_runs, make_spec, operator, run_tasks):
    run = launch(make_spec, operator, run_tasks, name="slurm-cancel", max_steps=120)
    wait_for_run(run, RunState.RUNNING)
    services.cancel_run(run, acting_user=operator)
    run_tasks()
    wait_for_run(run, RunState.CANCELLED, timeout=60)
    assert run.attempts.get().state == AttemptState.CANCELLED


def test_requeue_restarts_the_same_job_and_counts_it(slurm_runs, make_spec, operator, run_tasks):
    run = launch(make_spec, operator, run_tasks, name="slurm-requeue-me", max_steps=120)
    wait_for_run(run, RunState.RUNNING)
    attempt = run.attempts.get()
    services.requeue_run(run, acting_user=operator)
    run_tasks()
    attempt = wait_for_attempt(
        attempt, lambda a: a.restarts == 1 and a.state == AttemptState.RUNNING, timeout=120
    )
    assert run.attempts.count() == 1 and attempt.job_id
    services.cancel_run(run, acting_user=operator)
    run_tasks()
    wait_for_run(run, RunState.CANCELLED, timeout=60)


def test_a_retry_after_a_crash_submits_once(
    slurm_runs, make_spec, operator, no_task_queue, monkeypatch
):
    from apps.jobs.schedulers import get_scheduler
    from apps.jobs.schedulers import slurm as slurm_adapter

    run = services.launch_run(
        make_spec(scheduler="slurm", name="slurm-once", max_steps=30), acting_user=operator
    )
    attempt = run.attempts.get()
    real_submit = slurm_adapter.SlurmCLI.submit

    def submit_then_crash(self, spec):
        real_submit(self, spec)
        raise SystemExit("worker killed after the scheduler accepted the job")

    monkeypatch.setattr(slurm_adapter.SlurmCLI, "submit", submit_then_crash)
    with pytest.raises(SystemExit):
        services.submit_attempt(attempt.pk)
    monkeypatch.setattr(slurm_adapter.SlurmCLI, "submit", real_submit)
    Attempt.objects.filter(pk=attempt.pk).update(claimed_until=None)  # the lease ran out
    job_id = services.submit_attempt(attempt.pk).job_id
    found = get_scheduler("slurm", {}).find_by_comment(attempt.token)
    assert [j.job_id for j in found] == [job_id]
    services.cancel_run(run, acting_user=operator)
    for _name, args in list(no_task_queue):
        services.cancel_job(*args)


def test_with_slurmrestd_the_job_is_submitted_as_the_operators_cluster_user(
    slurm_runs, settings, make_spec, operator, run_tasks
):
    require_service("slurmrestd", os.path.exists(TOKEN_ENV), f"{TOKEN_ENV} does not exist")
    values = dict(
        line.split("=", 1) for line in Path(TOKEN_ENV).read_text().splitlines() if "=" in line
    )
    user = values.get("SLURMRESTD_USER", "slurmapi")
    settings.JOBS_SCHEDULER_OPTIONS = {
        "slurm": {"timeout": 30},
        "slurmrestd": {
            "url": values.get("SLURMRESTD_URL", "http://127.0.0.1:6820"),
            "token_file": TOKEN_ENV,
        },
    }
    settings.JOBS_CLUSTER_USERS = {operator.username: user}
    try:
        services.service_scheduler("slurmrestd").version()
    except Exception as exc:
        require_service("slurmrestd", False, f"it does not answer: {exc}")
    run = services.launch_run(
        make_spec(scheduler="slurmrestd", name="restd-run", max_steps=2), acting_user=operator
    )
    run_tasks()
    attempt = run.attempts.get()
    attempt.refresh_from_db()
    assert attempt.submitted_as == user and attempt.job_id, attempt.error
    owner = subprocess.run(
        ["squeue", "-h", "-t", "all", "-j", attempt.job_id, "-o", "%u"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    assert owner == user
    wait_for_run(run, RunState.COMPLETED)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["direct", "torchrun"])
def test_the_real_template_trains_the_tiny_preset_on_slurm(
    launcher, settings, make_version, operator, run_tasks
):
    """The real deploy/slurm/templates/train_job.sh under real Slurm (step launcher, MASTER_*
    rendezvous, --signal/--requeue directives), training tiny for 3 steps on CPU."""
    import json
    import sys

    from apps.jobs.validation import cpu_trial

    ok, why = _slurm_up()
    require_service("Slurm", ok, why)
    root = tempfile.mkdtemp(prefix="medctl-real-", dir="/tmp")
    try:
        settings.JOBS_RUNS_ROOT = f"{root}/runs"
        settings.JOBS_SCHEDULER = "slurm"
        settings.JOBS_SCHEDULER_OPTIONS = {"slurm": {"timeout": 30}}
        settings.JOBS_METRICS_PORT = 0  # no /metrics endpoint: parallel suites share this host
        data = Path(root) / "synth"
        subprocess.run(
            [sys.executable, "-m", "trainer", "synth", "--out", str(data), "--samples", "32"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        shards = len(json.loads((data / "manifest.json").read_text())["shards"])
        version = make_version(root=str(data), shards=shards)
        spec = cpu_trial(f"real-{launcher}", version.pk, launcher=launcher, scheduler="slurm")
        run = services.launch_run(spec, acting_user=operator)
        run_tasks()
        attempt = run.attempts.get()
        assert "srun --kill-on-bad-exit=1" in attempt.script
        wait_for_run(run, RunState.COMPLETED, RunState.FAILED, timeout=240)
        attempt.refresh_from_db()
        log = (
            Path(root)
            / "runs"
            / f"real-{launcher}-{run.pk}"
            / "logs"
            / f"medctl-real-{launcher}-{run.pk}-{attempt.job_id}.out"
        )
        assert run.state == RunState.COMPLETED, log.read_text()[-3000:]
        checkpoints = services.run_checkpoints(run)
        assert checkpoints and checkpoints[0].ok and checkpoints[0].step == 3
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _controller_pid() -> int | None:
    out = subprocess.run(["pgrep", "-x", "slurmctld"], capture_output=True, text=True)
    return int(out.stdout.split()[0]) if out.returncode == 0 and out.stdout.strip() else None


@pytest.fixture
def stoppable_controller(slurm_runs):
    """Stops the real slurmctld for the test body's first half; always restarts it."""
    require_service("root to restart slurmctld", os.geteuid() == 0, "tests run unprivileged")
    require_service("slurmctld", _controller_pid() is not None, "slurmctld is not running")

    def stop() -> None:
        pid = _controller_pid()
        if pid:
            os.kill(pid, 15)
        deadline = time.monotonic() + 30
        while _controller_pid() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _controller_pid() is None, "slurmctld did not stop"

    def start() -> None:
        if _controller_pid() is None:
            subprocess.run(["slurmctld"], check=True)  # daemonizes; state is kept on disk
        ok, why = False, ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not ok:
            ok, why = _slurm_up()
            time.sleep(0.5)
        assert ok, f"Slurm did not come back: {why}"

    yield stop, start
    start()


def test_a_submission_during_a_controller_outage_waits_and_is_submitted_once_after(
    stoppable_controller, make_spec, operator, no_task_queue
):
    from apps.jobs.schedulers import get_scheduler

    stop, start = stoppable_controller
    run = services.launch_run(
        make_spec(scheduler="slurm", name="slurm-outage", max_steps=30), acting_user=operator
    )
    attempt = run.attempts.get()
    stop()
    outcome = services.submit_attempt(attempt.pk)
    attempt.refresh_from_db()
    assert outcome.retry, outcome
    assert attempt.state == AttemptState.CREATED and not attempt.job_id
    start()
    Attempt.objects.filter(pk=attempt.pk).update(claimed_until=None)  # the retry comes due
    job_id = services.submit_attempt(attempt.pk).job_id
    assert job_id
    found = get_scheduler("slurm", {}).find_by_comment(attempt.token)
    assert [j.job_id for j in found] == [job_id]
    services.cancel_run(run, acting_user=operator)
    for _name, args in list(no_task_queue):
        services.cancel_job(*args)


def test_through_the_api_a_run_completes_resumes_requeues_and_cancels_on_slurm(
    slurm_runs, make_version, client_as, run_tasks
):
    """The operator's REST calls, end to end against the real cluster."""
    api = client_as("operator")
    version = make_version()

    def launch_via_api(name: str, max_steps: int) -> TrainingRun:
        body = {
            "name": name,
            "preset": "tiny",
            "dataset_version": version.pk,
            "nodes": 1,
            "gpus_per_node": 0,
            "data_parallel": 1,
            "engine": "single",
            "micro_batch_size": 2,
            "global_batch_size": 4,
            "seq_len": 64,
            "max_steps": max_steps,
            "time_limit_minutes": 10,
            "scheduler": "slurm",
        }
        response = api.post("/api/jobs/runs/", body, content_type="application/json")
        assert response.status_code == 201, response.content
        run_tasks()
        return TrainingRun.objects.get(pk=response.json()["id"])

    def act(run: TrainingRun, verb: str) -> None:
        response = api.post(f"/api/jobs/runs/{run.pk}/{verb}/")
        assert response.status_code == 202, response.content
        run_tasks()

    done = launch_via_api("api-done", 3)
    wait_for_run(done, RunState.COMPLETED)
    act(done, "resume")
    wait_for_run(done, RunState.COMPLETED)
    assert done.attempts.count() == 2

    long = launch_via_api("api-long", 120)
    wait_for_run(long, RunState.RUNNING)
    act(long, "requeue")
    wait_for_attempt(
        long.attempts.get(),
        lambda a: a.restarts == 1 and a.state == AttemptState.RUNNING,
        timeout=120,
    )
    act(long, "cancel")
    wait_for_run(long, RunState.CANCELLED, timeout=60)
    listed = api.get("/api/jobs/runs/").json()["results"]
    assert {r["name"]: r["state"] for r in listed} == {
        "api-done": "completed",
        "api-long": "cancelled",
    }
