"""The local adapter: jobs run as detached processes on this machine, with Slurm's states and
SLURM_* environment, so the demo and the unit tests need no cluster.

Each job is a folder under `state_dir/jobs/<id>/` (spec, script, state.json, request files),
driven by its own supervisor process (`_local_supervisor.py`). Nothing lives only in memory:
a restarted control plane, or another process with the same `state_dir`, finds every job.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .base import (
    CANCELLED,
    NODE_FAIL,
    PENDING,
    TERMINAL_STATES,
    ClusterInfo,
    JobSpec,
    JobState,
    NodeInfo,
    PartitionInfo,
    SchedulerError,
    check_job_id,
    check_token,
    expand_output,
    read_tail,
)

_SUPERVISOR = str(Path(__file__).with_name("_local_supervisor.py"))
# Variables a job inherits from the control plane: enough to find programs and decode text,
# never its secrets (database URL, keys), which live in other variables.
_INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER", "LOGNAME")
# A job whose supervisor has not written its pid within this many seconds is lost.
_START_GRACE_S = 30.0


class LocalScheduler:
    """Scheduler that runs jobs on this host.

    Options: `state_dir` (where jobs are kept; default a per-user folder in the temp dir —
    give an explicit path in deployments so web and worker processes share it),
    `kill_wait` (seconds between SIGTERM and SIGKILL, default 5), `cluster_name`,
    `minute_s` (seconds in a time-limit minute: 60, or less so tests can reach a limit)."""

    name = "local"

    def __init__(
        self,
        *,
        state_dir: str | None = None,
        kill_wait: float = 5.0,
        cluster_name: str = "local",
        minute_s: float = 60.0,
    ) -> None:
        self.minute_s = float(minute_s)
        default = Path(tempfile.gettempdir()) / f"medctl-local-scheduler-{os.getuid()}"
        self.state_dir = Path(state_dir or default).resolve()
        self.kill_wait = float(kill_wait)
        self.cluster_name = cluster_name
        self._jobs = self.state_dir / "jobs"
        self._jobs.mkdir(parents=True, exist_ok=True, mode=0o700)

    # --- the Scheduler interface ---------------------------------------------------------

    def submit(self, spec: JobSpec) -> str:
        spec.validate()
        if spec.nodes != 1:
            raise SchedulerError(
                f"invalid job spec: nodes: the local scheduler runs one node, not {spec.nodes}",
                permanent=True,
            )
        warn = spec.signal_parts()
        if warn and not (warn[0].isdigit() or hasattr(signal, "SIG" + warn[0])):
            raise SchedulerError(
                f"invalid job spec: signal: unknown signal {warn[0]}", permanent=True
            )
        if not os.path.isdir(spec.workdir):
            raise SchedulerError(
                f"invalid job spec: workdir: {spec.workdir} is not a directory", permanent=True
            )
        job_id = self._next_id()
        jobdir = self._jobs / job_id
        jobdir.mkdir(mode=0o700)
        host = socket.gethostname().split(".")[0]
        output = expand_output(
            spec.output or f"{spec.workdir.rstrip('/')}/slurm-%j.out",
            job_id,
            spec.name,
            os.environ.get("USER", ""),
            host,
        )
        record: dict[str, Any] = {
            "name": spec.name,
            "workdir": spec.workdir,
            "partition": spec.partition,
            "account": spec.account,
            "qos": spec.qos,
            "nodes": spec.nodes,
            "ntasks_per_node": spec.ntasks_per_node,
            "gpus_per_node": spec.gpus_per_node,
            "cpus_per_task": spec.cpus_per_task,
            "time_limit": spec.time_limit,
            "env": dict(spec.env),
            "base_env": {k: v for k in _INHERITED if (v := os.environ.get(k)) is not None},
            "comment": spec.comment,
            "output_path": output,
            "signal": list(warn) if warn else None,
            "requeue": spec.requeue,
            "host": host,
            "cluster": self.cluster_name,
            "kill_wait": self.kill_wait,
            "minute_s": self.minute_s,
        }
        _write_json(jobdir / "spec.json", record)
        script = jobdir / "script"
        script.write_text(spec.script, encoding="utf-8")
        script.chmod(0o700)
        _write_json(
            jobdir / "state.json", {"state": PENDING, "submit_time": time.time(), "restarts": 0}
        )
        self._spawn(jobdir)
        return job_id

    def status(self, job_ids: Sequence[str]) -> dict[str, JobState]:
        out: dict[str, JobState] = {}
        for job_id in job_ids:
            check_job_id(job_id)
            state = self._read(job_id)
            if state is not None:
                out[job_id] = state
        return out

    def cancel(self, job_id: str) -> None:
        jobdir = self._dir(job_id)
        if jobdir is None:
            return  # unknown: nothing runs under that id
        with _locked(jobdir):
            state = _read_json(jobdir / "state.json")
            if state["state"] in TERMINAL_STATES:
                return
            if self._supervisor_alive(state):
                (jobdir / "cancel").touch()
                return
            # The supervisor is gone (crash, reboot): finish the job ourselves.
            if state.get("child_pgid"):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(int(state["child_pgid"]), signal.SIGKILL)
            state.update(state=CANCELLED, end_time=time.time(), supervisor_pid=None)
            _write_json(jobdir / "state.json", state)

    def requeue(self, job_id: str) -> None:
        jobdir = self._dir(job_id)
        if jobdir is None:
            raise SchedulerError(f"unknown job {job_id}", permanent=True)
        spec = _read_json(jobdir / "spec.json")
        if not spec.get("requeue", True):
            raise SchedulerError(
                f"job {job_id} was submitted with requeue=False; it cannot be requeued",
                permanent=True,
            )
        with _locked(jobdir):
            state = _read_json(jobdir / "state.json")
            alive = self._supervisor_alive(state)
            if state["state"] in TERMINAL_STATES or not alive:
                # Finished, or its supervisor died: start a fresh run under the same id.
                state.update(
                    state=PENDING,
                    reason="BeginTime",
                    restarts=int(state.get("restarts", 0)) + 1,
                    submit_time=state.get("submit_time"),
                    supervisor_pid=None,
                    end_time=None,
                    exit_code=None,
                    exit_signal=None,
                )
                state["requeued_at"] = time.time()
                _write_json(jobdir / "state.json", state)
                for name in ("cancel", "requeue"):
                    with contextlib.suppress(FileNotFoundError):
                        (jobdir / name).unlink()
                self._spawn(jobdir)
            elif state["state"] != PENDING:  # a pending job is queued already
                (jobdir / "requeue").touch()

    def logs(self, job_id: str, tail_bytes: int = 65536) -> str:
        jobdir = self._dir(job_id)
        if jobdir is None:
            raise SchedulerError(f"unknown job {job_id}", permanent=True)
        return read_tail(_read_json(jobdir / "spec.json")["output_path"], tail_bytes)

    def cluster_info(self) -> ClusterInfo:
        host = socket.gethostname().split(".")[0]
        running = [
            s for s in (self._read(p.name) for p in self._job_dirs()) if s and s.state == "RUNNING"
        ]
        alloc_cpus = alloc_gpus = 0
        for s in running:
            spec = _read_json(self._jobs / s.job_id / "spec.json")
            alloc_cpus += spec["ntasks_per_node"] * (spec.get("cpus_per_task") or 1)
            alloc_gpus += spec.get("gpus_per_node") or 0
        cpus = os.cpu_count() or 1
        gpus = len([p for p in Path("/dev").glob("nvidia[0-9]*")])
        node = NodeInfo(
            name=host,
            state="mixed" if running else "idle",
            cpus=cpus,
            alloc_cpus=alloc_cpus,
            memory_mb=_memory_mb(),
            gpus=gpus,
            alloc_gpus=alloc_gpus,
            partitions=("local",),
        )
        part = PartitionInfo(name="local", state="up", nodes=(host,), default=True)
        return ClusterInfo(cluster=self.cluster_name, partitions=(part,), nodes=(node,))

    def find_by_comment(self, token: str) -> list[JobState]:
        check_token(token)
        found = []
        for jobdir in self._job_dirs():
            with contextlib.suppress(FileNotFoundError, ValueError):
                if token in _read_json(jobdir / "spec.json").get("comment", ""):
                    state = self._read(jobdir.name)
                    if state is not None:
                        found.append(state)
        return found

    # --- helpers -------------------------------------------------------------------------

    def _job_dirs(self) -> Iterator[Path]:
        return (p for p in self._jobs.iterdir() if p.name.isdigit())

    def _dir(self, job_id: str) -> Path | None:
        check_job_id(job_id)
        jobdir = self._jobs / job_id
        return jobdir if (jobdir / "state.json").exists() else None

    def _next_id(self) -> str:
        counter = self.state_dir / "next_id"
        with open(self.state_dir / "lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                current = int(counter.read_text() or "1") if counter.exists() else 1
                counter.write_text(str(current + 1))
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        return str(current)

    def _spawn(self, jobdir: Path) -> None:
        log = open(jobdir / "supervisor.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = subprocess.Popen(
                # -I: ignore PYTHON* variables and user site-packages; the supervisor needs
                # only the standard library.
                [sys.executable, "-I", _SUPERVISOR, str(jobdir)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                close_fds=True,
                env={k: v for k in ("PATH", "LANG", "TZ") if (v := os.environ.get(k))},
            )
        finally:
            log.close()
        proc.wait()  # the supervisor forks and this first process exits at once

    def _supervisor_alive(self, state: dict[str, Any]) -> bool:
        pid = state.get("supervisor_pid")
        if not pid:
            # Not started yet (just submitted or requeued): alive while within the grace.
            since = float(state.get("requeued_at") or state.get("submit_time") or 0)
            return time.time() - since < _START_GRACE_S
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        recorded = state.get("supervisor_start")
        if recorded:
            try:
                with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
                    return fh.read().rsplit(")", 1)[1].split()[19] == recorded
            except (OSError, IndexError):
                return True
        return True

    def _read(self, job_id: str) -> JobState | None:
        jobdir = self._jobs / job_id
        try:
            state = _read_json(jobdir / "state.json")
            spec = _read_json(jobdir / "spec.json")
        except FileNotFoundError:
            return None
        name, reason = state["state"], state.get("reason", "")
        if name not in TERMINAL_STATES and not self._supervisor_alive(state):
            name, reason = NODE_FAIL, "local supervisor process is gone (host restarted?)"
        return JobState(
            job_id=job_id,
            state=name,
            name=spec["name"],
            reason=reason,
            exit_code=state.get("exit_code") if name in TERMINAL_STATES else None,
            exit_signal=state.get("exit_signal") if name in TERMINAL_STATES else None,
            submit_time=_dt(state.get("submit_time")),
            start_time=_dt(state.get("start_time")) if name != PENDING else None,
            end_time=_dt(state.get("end_time")) if name in TERMINAL_STATES else None,
            nodes=spec["host"] if name != PENDING else "",
            partition=spec.get("partition") or "local",
            restarts=int(state.get("restarts", 0)),
            comment=spec.get("comment", ""),
            output=spec["output_path"],
            raw_state=state["state"],
        )


@contextlib.contextmanager
def _locked(jobdir: Path) -> Iterator[None]:
    with open(jobdir / "lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _dt(value: Any) -> datetime | None:
    return datetime.fromtimestamp(float(value), tz=UTC) if value else None


def _memory_mb() -> int:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 0
