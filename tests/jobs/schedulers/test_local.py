"""The local adapter's lifecycle, run for real: processes, signals, files."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from apps.jobs.schedulers import JobSpec, SchedulerError, get_scheduler, submit_once
from apps.jobs.schedulers.local import LocalScheduler


def spec(workdir: str, body: str, **kw) -> JobSpec:
    return JobSpec(
        script="#!/bin/bash\n" + body + "\n", name=kw.pop("name", "t"), workdir=workdir, **kw
    )


def state_of(scheduler, job_id):
    return scheduler.status([job_id])[job_id]


def test_it_runs_a_job_to_completion_with_slurm_variables(local, workdir, wait):
    job = local.submit(
        spec(
            workdir,
            'echo "id=$SLURM_JOB_ID name=$SLURM_JOB_NAME nodes=$SLURM_JOB_NUM_NODES'
            ' ntasks=$SLURM_NTASKS gpus=$SLURM_GPUS_PER_NODE msg=$MSG"',
            name="hello",
            ntasks_per_node=2,
            gpus_per_node=1,
            env={"MSG": "plain"},
        )
    )
    wait(lambda: state_of(local, job).is_terminal)
    state = state_of(local, job)
    assert (state.state, state.exit_code, state.restarts) == ("COMPLETED", 0, 0)
    assert state.start_time and state.end_time and state.end_time >= state.start_time
    assert state.output == f"{workdir}/slurm-{job}.out"
    assert local.logs(job) == f"id={job} name=hello nodes=1 ntasks=2 gpus=1 msg=plain\n"


def test_it_reports_failures_with_the_exit_code(local, workdir, wait):
    job = local.submit(spec(workdir, "exit 3"))
    wait(lambda: state_of(local, job).is_terminal)
    state = state_of(local, job)
    assert (state.state, state.exit_code, state.reason) == ("FAILED", 3, "NonZeroExitCode")


def test_it_does_not_pass_the_control_planes_secrets(local, workdir, wait, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgres://secret")
    job = local.submit(spec(workdir, 'echo "db=${DATABASE_URL:-none}"'))
    wait(lambda: state_of(local, job).is_terminal)
    assert local.logs(job) == "db=none\n"


def test_it_keeps_hostile_values_inert(local, workdir, wait, tmp_path):
    marker = tmp_path / "pwned"
    hostile = f"$(touch {marker}); `touch {marker}`; rm -rf ~ 'q' \"q\""
    job = local.submit(
        spec(
            workdir,
            'printf "%s|%s" "$MSG" "$SLURM_JOB_NAME"',
            env={"MSG": hostile},
            comment="a; $(id)",
        )
    )
    wait(lambda: state_of(local, job).is_terminal)
    assert local.logs(job) == f"{hostile}|t"
    assert state_of(local, job).comment == "a; $(id)"
    assert not marker.exists()


@pytest.mark.parametrize(
    "changes",
    [
        {"name": "; rm -rf ~"},
        {"name": "$(id)"},
        {"workdir": "/tmp/../etc"},
        {"output": "/tmp/../x"},
    ],
)
def test_it_rejects_hostile_specs_before_running_anything(local, workdir, changes):
    base = {"script": "#!/bin/bash\ntrue\n", "name": "t", "workdir": workdir} | changes
    with pytest.raises(SchedulerError) as err:
        local.submit(JobSpec(**base))
    assert err.value.permanent
    assert not any(local.state_dir.joinpath("jobs").iterdir())


def test_it_cancels_with_sigterm_then_sigkill(local, workdir, wait):
    # The script ignores SIGTERM, as a stuck trainer might; SIGKILL must follow.
    job = local.submit(
        spec(workdir, "trap 'echo got TERM' TERM\necho started\nwhile true; do sleep 0.1; done")
    )
    wait(lambda: "started" in local.logs(job))
    t0 = time.monotonic()
    local.cancel(job)
    wait(lambda: state_of(local, job).is_terminal, timeout=15)
    state = state_of(local, job)
    assert state.state == "CANCELLED"
    assert time.monotonic() - t0 < 10
    assert "got TERM" in local.logs(job)
    local.cancel(job)  # cancelling twice is not an error
    assert state_of(local, job).state == "CANCELLED"


def test_it_requeues_a_running_job(local, workdir, wait):
    job = local.submit(spec(workdir, 'echo "run ${SLURM_RESTART_COUNT:-0}"\nsleep 60'))
    wait(lambda: "run 0" in local.logs(job))
    local.requeue(job)
    wait(lambda: "run 1" in local.logs(job), timeout=15)
    state = state_of(local, job)
    assert (state.state, state.restarts) == ("RUNNING", 1)
    local.cancel(job)
    wait(lambda: state_of(local, job).state == "CANCELLED", timeout=15)
    assert local.logs(job) == "run 0\nrun 1\n"  # appended after the requeue, as Slurm does


def test_it_requeues_a_finished_job(local, workdir, wait):
    job = local.submit(spec(workdir, 'echo "run ${SLURM_RESTART_COUNT:-0}"'))
    wait(lambda: state_of(local, job).state == "COMPLETED")
    local.requeue(job)
    wait(lambda: "run 1" in local.logs(job) and state_of(local, job).state == "COMPLETED")
    assert state_of(local, job).restarts == 1


def test_it_refuses_to_requeue_a_no_requeue_job(local, workdir, wait):
    job = local.submit(spec(workdir, "true", requeue=False))
    with pytest.raises(SchedulerError, match="requeue") as err:
        local.requeue(job)
    assert err.value.permanent


def test_it_finds_jobs_again_after_a_control_plane_restart(local, workdir, wait):
    job = local.submit(spec(workdir, "sleep 60", comment="medctl:restart-1 op=alice"))
    wait(lambda: state_of(local, job).state == "RUNNING")
    again = get_scheduler("local", {"state_dir": str(local.state_dir), "kill_wait": 1})
    assert state_of(again, job).state == "RUNNING"
    assert [s.job_id for s in again.find_by_comment("medctl:restart-1")] == [job]
    again.cancel(job)
    wait(lambda: state_of(local, job).state == "CANCELLED", timeout=15)


def test_it_marks_a_job_whose_supervisor_died_as_node_fail(local, workdir, wait):
    job = local.submit(spec(workdir, "sleep 60"))
    wait(lambda: state_of(local, job).state == "RUNNING")
    record = json.loads((local.state_dir / "jobs" / job / "state.json").read_text())
    os.kill(record["supervisor_pid"], signal.SIGKILL)
    wait(lambda: state_of(local, job).state == "NODE_FAIL", timeout=10)
    assert "supervisor" in state_of(local, job).reason
    local.cancel(job)  # also stops the orphaned script
    assert state_of(local, job).state == "CANCELLED"


def test_status_answers_many_jobs_at_once_and_omits_unknown_ids(local, workdir, wait):
    jobs = [local.submit(spec(workdir, f"exit {i}")) for i in range(3)]
    wait(lambda: all(s.is_terminal for s in local.status(jobs).values()))
    states = local.status([*jobs, "999"])
    assert sorted(states) == sorted(jobs)
    assert [states[j].exit_code for j in jobs] == [0, 1, 2]


def test_submit_once_with_the_local_scheduler(local, workdir):
    s = spec(workdir, "true", comment="medctl:once-1234")
    assert submit_once(local, s, "medctl:once-1234") == submit_once(local, s, "medctl:once-1234")
    assert len(list((local.state_dir / "jobs").iterdir())) == 1


def test_logs_returns_only_the_tail(local, workdir, wait):
    job = local.submit(spec(workdir, "seq 1 1000"))
    wait(lambda: state_of(local, job).is_terminal)
    assert local.logs(job, tail_bytes=9) == "999\n1000\n"


def test_cluster_info_describes_this_machine(local):
    info = local.cluster_info()
    assert [p.name for p in info.partitions] == ["local"]
    (node,) = info.nodes
    assert node.cpus == os.cpu_count()
    assert node.state == "idle"


def test_the_local_scheduler_runs_one_node_only(local, workdir):
    with pytest.raises(SchedulerError, match="one node") as err:
        local.submit(spec(workdir, "true", nodes=2))
    assert err.value.permanent


def test_the_default_state_dir_is_shared_per_user():
    a, b = LocalScheduler(), LocalScheduler()
    assert a.state_dir == b.state_dir
    assert Path(a.state_dir).is_dir()


def test_it_warns_with_the_signal_then_times_out(tmp_path, workdir, wait):
    # minute_s=3: a one-minute limit lasts 3 s; USR1@2 arrives about 1 s in.
    fast = get_scheduler(
        "local", {"state_dir": str(tmp_path / "fast"), "kill_wait": 1, "minute_s": 3}
    )
    job = fast.submit(
        spec(
            workdir,
            "trap 'echo got USR1' USR1\nwhile true; do sleep 0.1; done",
            time_limit=1,
            signal="USR1@2",
        )
    )
    state = wait(lambda: (s := state_of(fast, job)) and s.is_terminal and s, timeout=15)
    assert (state.state, state.reason) == ("TIMEOUT", "TimeLimit")
    assert "got USR1" in fast.logs(job)


def test_a_job_that_cannot_start_fails_with_a_reason(local, workdir, wait):
    job = local.submit(JobSpec(script="#!/no/such/interpreter\n", name="t", workdir=workdir))
    state = wait(lambda: (s := state_of(local, job)) and s.is_terminal and s, timeout=15)
    assert state.state == "FAILED"
    assert "cannot start" in state.reason
