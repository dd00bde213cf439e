"""The Slurm CLI and slurmrestd adapters against the real single-node cluster of
deploy/slurm/up.sh. Each behaviour runs through both adapters."""

from __future__ import annotations

import os
import re
import secrets
import socket
from pathlib import Path

import pytest

from apps.jobs.schedulers import JobSpec, SchedulerError, get_scheduler, submit_once
from apps.jobs.schedulers.slurmrestd import SlurmRestd

pytestmark = pytest.mark.slurm


@pytest.fixture(params=["slurm", "slurmrestd"])
def sched(request):
    """The same tests through the CLI adapter and through slurmrestd (JWT)."""
    return request.getfixturevalue("slurm" if request.param == "slurm" else "restd")


def token() -> str:
    return f"medctl:test-{secrets.token_hex(6)}"


def spec(workdir: str, body: str, **kw) -> JobSpec:
    return JobSpec(
        script="#!/bin/bash\n" + body + "\n",
        name=kw.pop("name", "sched-test"),
        workdir=workdir,
        **kw,
    )


def state_of(scheduler, job_id):
    return scheduler.status([job_id]).get(job_id)


def test_a_job_runs_to_completion(sched, shared_dir, wait, tmp_path):
    marker = f"/tmp/medctl-pwned-{secrets.token_hex(4)}"
    hostile = f"$(touch {marker}); `touch {marker}`; rm -rf ~ 'q' \"q\""
    tok = token()
    job = sched.submit(
        spec(
            shared_dir,
            'printf "%s|%s|%s\\n" "$MSG" "$SLURM_JOB_ID" "$SLURM_JOB_NAME"\nexit 3',
            name="hello-1",
            env={"MSG": hostile},
            comment=f"{tok} op=alice; rm -rf ~ $(id)",
            output=f"{shared_dir}/%x-%j.out",
            time_limit=5,
            signal="USR1@120",
        )
    )
    assert job.isdigit()
    state = wait(lambda: (s := state_of(sched, job)) and s.is_terminal and s, timeout=60)
    assert (state.state, state.exit_code, state.reason) == ("FAILED", 3, "NonZeroExitCode")
    assert state.name == "hello-1"
    assert state.comment == f"{tok} op=alice; rm -rf ~ $(id)"
    assert state.output == f"{shared_dir}/hello-1-{job}.out"
    assert state.nodes == socket.gethostname().split(".")[0]
    assert state.start_time and state.end_time and state.submit_time
    assert sched.logs(job) == f"{hostile}|{job}|hello-1\n"
    assert not os.path.exists(marker)


def test_a_running_job_can_be_cancelled(sched, shared_dir, wait):
    job = sched.submit(spec(shared_dir, "echo started\nsleep 120"))
    wait(lambda: state_of(sched, job).state == "RUNNING", timeout=60)
    sched.cancel(job)
    state = wait(lambda: (s := state_of(sched, job)) and s.is_terminal and s, timeout=30)
    assert state.state == "CANCELLED"
    sched.cancel(job)  # cancelling a finished job is not an error


def test_a_running_job_can_be_requeued(sched, shared_dir, wait):
    job = sched.submit(spec(shared_dir, 'echo "run ${SLURM_RESTART_COUNT:-0}"\nsleep 120'))
    wait(lambda: state_of(sched, job).state == "RUNNING", timeout=60)
    sched.requeue(job)
    # Back to PENDING with Restarts=1, then running again after cred_expire (~6 s here).
    state = wait(
        lambda: (s := state_of(sched, job)) and s.restarts == 1 and s.state == "RUNNING" and s,
        timeout=60,
    )
    assert state.restarts == 1
    wait(lambda: "run 1" in sched.logs(job), timeout=15)
    sched.cancel(job)
    wait(lambda: state_of(sched, job).is_terminal, timeout=30)


def test_a_bad_partition_is_a_permanent_error_and_submits_nothing(sched, shared_dir):
    tok = token()
    with pytest.raises(SchedulerError) as err:
        sched.submit(spec(shared_dir, "true", partition="no-such-partition", comment=tok))
    assert err.value.permanent
    assert "partition" in err.value.message.lower()
    assert sched.find_by_comment(tok) == []


def test_gpus_the_cluster_lacks_are_a_permanent_error(sched, shared_dir, wait):
    info = sched.cluster_info()
    if info.total_gpus:
        # up.sh with MEDCTL_SLURM_GPUS=N: a GPU job must be accepted and run.
        job = sched.submit(spec(shared_dir, "echo $CUDA_VISIBLE_DEVICES", gpus_per_node=1))
        state = wait(lambda: (s := state_of(sched, job)) and s.is_terminal and s, timeout=60)
        assert state.state == "COMPLETED"
    else:
        with pytest.raises(SchedulerError) as err:
            sched.submit(spec(shared_dir, "true", gpus_per_node=1))
        assert err.value.permanent


def test_status_answers_many_jobs_in_one_call(sched, shared_dir, wait, monkeypatch):
    jobs = [sched.submit(spec(shared_dir, f"exit {i}")) for i in range(3)]
    wait(lambda: all(s.is_terminal for s in sched.status(jobs).values()), timeout=60)
    calls = []
    method = "_request" if isinstance(sched, SlurmRestd) else "_run"
    real = getattr(sched, method)
    monkeypatch.setattr(sched, method, lambda *a, **k: calls.append(a) or real(*a, **k))
    states = sched.status([*jobs, "999999"])
    assert len(calls) == 1
    assert sorted(states) == sorted(jobs)  # the unknown id is absent, not an error
    assert [states[j].exit_code for j in jobs] == [0, 1, 2]
    assert [states[j].state for j in jobs] == ["COMPLETED", "FAILED", "FAILED"]


def test_cluster_info_shows_the_node(sched):
    info = sched.cluster_info()
    host = socket.gethostname().split(".")[0]
    (node,) = [n for n in info.nodes if n.name == host]
    assert node.cpus >= 1 and node.memory_mb > 0
    assert node.state.split("+")[0] in ("idle", "mixed", "allocated", "completing")
    debug = [p for p in info.partitions if p.name == "debug"]
    assert debug and debug[0].default and host in debug[0].nodes


def test_a_retried_submission_finds_the_first_job(sched, shared_dir):
    tok = token()
    s = spec(shared_dir, "true", comment=f"{tok} op=alice")
    first = submit_once(sched, s, tok)
    assert submit_once(sched, s, tok) == first
    assert [j.job_id for j in sched.find_by_comment(tok)] == [first]


# --- CLI only --------------------------------------------------------------------------


def test_the_cli_works_without_json_too(slurm, shared_dir, wait, monkeypatch):
    # A control plane in another zone (Django sets TZ from TIME_ZONE) must still read
    # scontrol's zone-less times right.
    monkeypatch.setenv("TZ", "Asia/Shanghai")
    plain = get_scheduler("slurm", {"use_json": False})
    job = slurm.submit(spec(shared_dir, "exit 4", comment=token()))
    wait(lambda: (s := state_of(slurm, job)) and s.is_terminal, timeout=60)
    with_json, without = state_of(slurm, job), state_of(plain, job)
    assert (without.state, without.exit_code, without.restarts) == ("FAILED", 4, 0)
    assert (without.name, without.nodes, without.output) == (
        with_json.name,
        with_json.nodes,
        with_json.output,
    )
    assert without.end_time == with_json.end_time
    assert [n.name for n in plain.cluster_info().nodes] == [
        n.name for n in slurm.cluster_info().nodes
    ]


@pytest.fixture
def unreachable_conf(tmp_path: Path) -> str:
    """A copy of the live slurm.conf whose controller port has nobody listening."""
    conf = Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf")).read_text()
    conf = re.sub(r"(?m)^SlurmctldPort=.*$", "", conf)
    path = tmp_path / "slurm.conf"
    # MessageTimeout=1: fail in milliseconds instead of ~9 s of connect retries.
    path.write_text(conf + "\nSlurmctldPort=6899\nMessageTimeout=1\n")
    return str(path)


def test_a_controller_outage_is_a_transient_error(slurm_cluster, shared_dir, unreachable_conf):
    down = get_scheduler("slurm", {"env": {"SLURM_CONF": unreachable_conf}})
    with pytest.raises(SchedulerError) as err:
        down.submit(spec(shared_dir, "true"))
    assert not err.value.permanent
    assert "controller" in err.value.message
    # And status must raise too, never answer {} (which would mark every job lost).
    with pytest.raises(SchedulerError) as err:
        down.status(["1"])
    assert not err.value.permanent


def test_missing_commands_are_a_permanent_error(tmp_path):
    broken = get_scheduler("slurm", {"bin_dir": str(tmp_path)})
    with pytest.raises(SchedulerError, match="sbatch not found") as err:
        broken.submit(spec(str(tmp_path), "true"))
    assert err.value.permanent


# --- slurmrestd only -------------------------------------------------------------------


def test_restd_jobs_run_as_the_tokens_user(restd, shared_dir, wait):
    job = restd.submit(spec(shared_dir, "id -un"))
    wait(lambda: (s := state_of(restd, job)) and s.is_terminal, timeout=60)
    assert restd.logs(job).strip() == restd.user_name


def test_restd_submits_as_the_operators_own_user(restd, slurm, shared_dir, wait):
    # A short-lived token per operator: the job belongs to that user, not to a service account.
    if os.geteuid() != 0:
        pytest.skip("only root or SlurmUser may mint tokens for another user")
    as_nobody = get_scheduler(
        "slurmrestd",
        {"url": restd.url, "user_name": "nobody", "token": slurm.mint_token("nobody", 300)},
    )
    job = as_nobody.submit(spec(shared_dir, "id -un"))
    wait(lambda: (s := state_of(as_nobody, job)) and s.is_terminal, timeout=60)
    assert as_nobody.logs(job).strip() == "nobody"


def test_tokens_are_minted_only_for_plain_user_names(slurm):
    for bad in ("root;id", "$(id)", "a b", "", "-x"):
        with pytest.raises(SchedulerError, match="user name"):
            slurm.mint_token(bad)


def test_restd_discovers_the_api_version(restd):
    fresh = get_scheduler("slurmrestd", {"url": restd.url, "token_file": restd.token_file})
    assert fresh.version() in ("v0.0.38", "v0.0.39", "v0.0.40", "v0.0.41", "v0.0.42")


def test_restd_unreachable_is_a_transient_error():
    down = get_scheduler(
        "slurmrestd", {"url": "http://127.0.0.1:9", "token": "x", "user_name": "slurmapi"}
    )
    with pytest.raises(SchedulerError) as err:
        down.status(["1"])
    assert not err.value.permanent


def test_restd_a_token_without_user_is_refused(restd):
    bad = get_scheduler(
        "slurmrestd", {"url": restd.url, "token": "x", "api_version": restd.version()}
    )
    with pytest.raises(SchedulerError, match="user_name") as err:
        bad.status(["1"])
    assert err.value.permanent


def test_restd_over_the_unix_socket(restd, slurm_cluster):
    sock = "/run/slurmrestd/rest.sock"
    if not os.path.exists(sock):
        pytest.skip("no rest_auth/local socket here")
    local_auth = get_scheduler("slurmrestd", {"url": f"unix:{sock}"})
    assert local_auth.cluster_info().nodes
