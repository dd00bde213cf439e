"""The per-job supervisor of the local adapter, run as `python -I _local_supervisor.py JOBDIR`.

It plays slurmstepd for one job: runs the script in its own session with a Slurm-like
environment, honours cancel/requeue requests left as files in JOBDIR, sends the --signal
warning before the time limit, kills the job at the limit, and writes the final state. It
runs detached from the control plane, so jobs outlive a control-plane restart, and it uses
only the standard library (it is started with -I and never imports the package).

State lives in JOBDIR/state.json, changed only under an flock on JOBDIR/lock and replaced
atomically, because the control plane reads and updates it concurrently.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

POLL_S = 0.2


@contextlib.contextmanager
def locked(jobdir: str) -> Iterator[None]:
    with open(os.path.join(jobdir, "lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_json(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def write_json(path: str, data: dict[str, Any]) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def update_state(jobdir: str, **changes: Any) -> dict[str, Any]:
    path = os.path.join(jobdir, "state.json")
    state = read_json(path)
    state.update(changes)
    write_json(path, state)
    return state


def proc_start_time(pid: int) -> str:
    """The kernel's start time of a process, to tell it from a later one with the same pid."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def requested(jobdir: str, what: str) -> bool:
    return os.path.exists(os.path.join(jobdir, what))


def clear(jobdir: str, *what: str) -> None:
    for name in what:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(jobdir, name))


def killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop(child: subprocess.Popen[bytes], kill_wait: float) -> None:
    """SIGTERM to the job's process group, SIGKILL after kill_wait seconds (Slurm's KillWait)."""
    killpg(child.pid, signal.SIGTERM)
    deadline = time.monotonic() + kill_wait
    while child.poll() is None and time.monotonic() < deadline:
        time.sleep(POLL_S)
    killpg(child.pid, signal.SIGKILL)
    child.wait()


def job_env(spec: dict[str, Any], job_id: str, restarts: int) -> dict[str, str]:
    """The control plane's chosen base variables, the spec's, then Slurm's own."""
    host = spec["host"]
    ntasks = spec["ntasks_per_node"] * spec["nodes"]
    env = {**spec["base_env"], **spec["env"]}
    slurm = {
        "SLURM_JOB_ID": job_id,
        "SLURM_JOBID": job_id,
        "SLURM_JOB_NAME": spec["name"],
        "SLURM_JOB_NUM_NODES": str(spec["nodes"]),
        "SLURM_NNODES": str(spec["nodes"]),
        "SLURM_NTASKS": str(ntasks),
        "SLURM_NPROCS": str(ntasks),
        "SLURM_NTASKS_PER_NODE": str(spec["ntasks_per_node"]),
        "SLURM_JOB_NODELIST": host,
        "SLURM_NODELIST": host,
        "SLURMD_NODENAME": host,
        "SLURM_NODEID": "0",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_SUBMIT_DIR": spec["workdir"],
        "SLURM_SUBMIT_HOST": host,
        "SLURM_CLUSTER_NAME": spec["cluster"],
        "SLURM_JOB_PARTITION": spec["partition"] or "local",
    }
    if spec.get("account"):
        slurm["SLURM_JOB_ACCOUNT"] = spec["account"]
    if spec.get("qos"):
        slurm["SLURM_JOB_QOS"] = spec["qos"]
    if spec.get("cpus_per_task"):
        slurm["SLURM_CPUS_PER_TASK"] = str(spec["cpus_per_task"])
    if spec.get("gpus_per_node"):
        slurm["SLURM_GPUS_PER_NODE"] = str(spec["gpus_per_node"])
    if restarts:
        slurm["SLURM_RESTART_COUNT"] = str(restarts)  # Slurm sets it only after a restart
    env.update(slurm)
    return env


def run_once(jobdir: str, spec: dict[str, Any], job_id: str, restarts: int) -> tuple[str, int]:
    """Run the script once; return (why it ended, its returncode)."""
    # Truncate on the first run, append after a requeue, as Slurm does.
    mode = "ab" if restarts else "wb"
    with open(spec["output_path"], mode) as out:
        child = subprocess.Popen(
            [os.path.join(jobdir, "script")],
            cwd=spec["workdir"],
            env=job_env(spec, job_id, restarts),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    with locked(jobdir):
        update_state(jobdir, child_pgid=child.pid)
    started = time.monotonic()
    minute = float(spec.get("minute_s", 60))
    limit = spec["time_limit"] * minute if spec.get("time_limit") else None
    warn = spec.get("signal")  # [name, seconds before the limit, batch shell only]
    warned = False
    kill_wait = float(spec.get("kill_wait", 5))
    why = "exit"
    while child.poll() is None:
        time.sleep(POLL_S)
        elapsed = time.monotonic() - started
        if requested(jobdir, "cancel"):
            why = "cancel"
        elif requested(jobdir, "requeue"):
            why = "requeue"
        elif limit is not None and elapsed >= limit:
            why = "timeout"
        elif warn and limit is not None and not warned and elapsed >= limit - warn[1]:
            signo = getattr(signal, "SIG" + warn[0], None) or int(warn[0])
            if warn[2]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signo)
            else:
                killpg(child.pid, signo)
            warned = True
            continue
        else:
            continue
        stop(child, kill_wait)
        break
    rc = child.wait()
    # Leftovers in the job's session die with the job, as under slurmd.
    killpg(child.pid, signal.SIGKILL)
    return why, rc


def main(jobdir: str) -> int:
    spec = read_json(os.path.join(jobdir, "spec.json"))
    job_id = os.path.basename(jobdir.rstrip("/"))
    while True:
        with locked(jobdir):
            state = read_json(os.path.join(jobdir, "state.json"))
            if requested(jobdir, "cancel"):
                clear(jobdir, "cancel", "requeue")
                update_state(jobdir, state="CANCELLED", end_time=time.time(), supervisor_pid=None)
                return 0
            restarts = int(state.get("restarts", 0))
            update_state(
                jobdir,
                state="RUNNING",
                reason="",
                start_time=time.time(),
                end_time=None,
                exit_code=None,
                exit_signal=None,
                supervisor_pid=os.getpid(),
                supervisor_start=proc_start_time(os.getpid()),
            )
        try:
            why, rc = run_once(jobdir, spec, job_id, restarts)
        except OSError as exc:
            # The output folder vanished, the interpreter line names a missing program...:
            # the job fails (as under Slurm) instead of the supervisor dying with it RUNNING.
            with locked(jobdir):
                clear(jobdir, "cancel", "requeue")
                update_state(
                    jobdir,
                    state="FAILED",
                    reason=f"cannot start the job: {exc.strerror or exc}",
                    exit_code=1,
                    exit_signal=0,
                    end_time=time.time(),
                    supervisor_pid=None,
                )
            return 1
        with locked(jobdir):
            if why == "requeue" or (why == "exit" and requested(jobdir, "requeue")):
                clear(jobdir, "requeue")
                update_state(jobdir, state="PENDING", reason="BeginTime", restarts=restarts + 1)
                requeued = True
            else:
                clear(jobdir, "cancel", "requeue")
                code, signo = (0, -rc) if rc < 0 else (rc, 0)
                final = {"cancel": "CANCELLED", "timeout": "TIMEOUT"}.get(why)
                if final is None:
                    final = "COMPLETED" if rc == 0 else "FAILED"
                reason = {"TIMEOUT": "TimeLimit", "FAILED": "NonZeroExitCode"}.get(final, "")
                update_state(
                    jobdir,
                    state=final,
                    reason=reason,
                    exit_code=code,
                    exit_signal=signo,
                    end_time=time.time(),
                    supervisor_pid=None,
                    child_pgid=None,
                )
                requeued = False
        if not requeued:
            return 0
        time.sleep(1.0)  # like Slurm, a requeued job is briefly PENDING before it runs again


if __name__ == "__main__":
    target = sys.argv[1]
    # Detach fully: the control plane waits only for this first process, so the supervisor
    # that keeps running is reparented to init and never lingers as the caller's zombie.
    if os.fork() > 0:
        os._exit(0)
    sys.exit(main(target))
