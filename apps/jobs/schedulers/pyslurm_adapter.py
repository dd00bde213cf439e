"""The pyslurm adapter: libslurm in-process, for sites whose pyslurm matches their Slurm.

pyslurm is never required. PyPI's pyslurm (25.11.x) builds only against Slurm 25.11 and
refuses older headers ("Slurm version mismatch: requires Slurm 25.11, found 22.5" on Debian
12), so on most sites this adapter explains why it cannot run and the `slurm` or
`slurmrestd` adapter is the answer. Where it can run, it uses pyslurm's 23.x+ object API
(Jobs.load, JobSubmitDescription, Job.cancel/requeue); that path has not been exercised in
this repository's CI, which runs Slurm 22.05.
"""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from . import _slurm_common as common
from .base import (
    ClusterInfo,
    JobSpec,
    JobState,
    PartitionInfo,
    SchedulerError,
    check_job_id,
    check_token,
    read_tail,
)


def installed_slurm_version() -> str | None:
    """'22.05' from `sinfo -V` ('slurm 22.05.8'), or None when no Slurm client is here."""
    sinfo = shutil.which("sinfo")
    if not sinfo:
        return None
    try:
        out = subprocess.run(
            [sinfo, "-V"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"(\d+)\.(\d+)", out)
    return f"{int(m.group(1))}.{int(m.group(2)):02d}" if m else None


def load_pyslurm() -> ModuleType:
    """Import pyslurm and check it matches the installed Slurm, or raise a permanent
    SchedulerError that says why and what to use instead."""
    site = installed_slurm_version()
    try:
        pyslurm = importlib.import_module("pyslurm")
    except Exception as exc:  # ImportError, or the RuntimeError pyslurm raises on mismatch
        raise SchedulerError(
            f"pyslurm is not usable here ({type(exc).__name__}: {exc}). PyPI's pyslurm targets "
            f"Slurm 25.11 and builds only against it; this site runs Slurm {site or 'unknown'}. "
            "Use the 'slurm' (CLI) or 'slurmrestd' scheduler instead.",
            permanent=True,
        ) from exc
    version = str(getattr(pyslurm, "__version__", "") or "")
    m = re.match(r"(\d+)\.(\d+)", version)
    built_for = f"{int(m.group(1))}.{int(m.group(2)):02d}" if m else None
    if site and built_for and site != built_for:
        raise SchedulerError(
            f"pyslurm {version} is built for Slurm {built_for} but this site runs Slurm {site}; "
            "libslurm's ABI changes every release. Use the 'slurm' or 'slurmrestd' scheduler.",
            permanent=True,
        )
    if not hasattr(pyslurm, "JobSubmitDescription"):
        raise SchedulerError(
            f"pyslurm {version or '(unknown version)'} lacks the 23.x+ object API used here",
            permanent=True,
        )
    return pyslurm


class PySlurmScheduler:
    """Scheduler over pyslurm; construction fails with a clear permanent error when
    pyslurm is missing or does not match libslurm."""

    name = "pyslurm"

    def __init__(self) -> None:
        self._pyslurm = load_pyslurm()

    def submit(self, spec: JobSpec) -> str:
        spec.validate()
        options: dict[str, Any] = {
            "name": spec.name,
            "working_directory": spec.workdir,
            "script": spec.script,
            "nodes": spec.nodes,
            "ntasks_per_node": spec.ntasks_per_node,
            "environment": {"PATH": "/usr/local/bin:/usr/bin:/bin", **spec.env},
            "is_requeueable": spec.requeue,
        }
        optional = {
            "partition": spec.partition,
            "account": spec.account,
            "qos": spec.qos,
            "gpus_per_node": spec.gpus_per_node or None,
            "cpus_per_task": spec.cpus_per_task,
            "time_limit": spec.time_limit,
            "comments": spec.comment or None,
            "standard_output": spec.output,
            "signal": spec.signal,
        }
        options.update({k: v for k, v in optional.items() if v is not None})
        try:
            return str(self._pyslurm.JobSubmitDescription(**options).submit())
        except Exception as exc:
            raise common.scheduler_error("submit", str(exc)) from exc

    def status(self, job_ids: Sequence[str]) -> dict[str, JobState]:
        wanted = {check_job_id(j) for j in job_ids}
        return {s.job_id: s for s in self._all_jobs() if s.job_id in wanted}

    def cancel(self, job_id: str) -> None:
        check_job_id(job_id)
        try:
            self._pyslurm.Job(int(job_id)).cancel()
        except Exception as exc:
            if "Invalid job id" in str(exc) or "already" in str(exc):
                return
            raise common.scheduler_error("cancel", str(exc)) from exc

    def requeue(self, job_id: str) -> None:
        check_job_id(job_id)
        try:
            self._pyslurm.Job(int(job_id)).requeue()
        except Exception as exc:
            if "pending" in str(exc):
                return
            raise common.scheduler_error("requeue", str(exc)) from exc

    def logs(self, job_id: str, tail_bytes: int = 65536) -> str:
        state = self.status([job_id]).get(job_id)
        if state is None:
            raise SchedulerError(f"unknown job {job_id}", permanent=True)
        return read_tail(state.output, tail_bytes) if state.output else ""

    def cluster_info(self) -> ClusterInfo:
        try:
            raw_nodes = list(self._pyslurm.Nodes.load().values())
            raw_parts = list(self._pyslurm.Partitions.load().values())
        except Exception as exc:
            raise common.scheduler_error("cluster info", str(exc)) from exc
        nodes = [
            common.node_from_json(
                {
                    "name": n.name,
                    "state": n.state,
                    "cpus": n.total_cpus,
                    "alloc_cpus": n.allocated_cpus,
                    "real_memory": n.real_memory,
                    "alloc_memory": n.allocated_memory,
                    "gres": ",".join(f"{k}:{v}" for k, v in (n.configured_gres or {}).items()),
                    "gres_used": ",".join(f"{k}:{v}" for k, v in (n.allocated_gres or {}).items()),
                    "partitions": list(n.partitions or []),
                    "reason": n.reason,
                }
            )
            for n in raw_nodes
        ]
        parts = [
            PartitionInfo(
                name=p.name,
                state=str(p.state).lower(),
                nodes=tuple(n.name for n in nodes if p.name in n.partitions),
                default=bool(getattr(p, "is_default", False)),
                max_time=common.number(getattr(p, "max_time", None)),
            )
            for p in raw_parts
        ]
        return common.cluster("slurm", parts, nodes)

    def find_by_comment(self, token: str) -> list[JobState]:
        check_token(token)
        return [s for s in self._all_jobs() if token in s.comment]

    def _all_jobs(self) -> list[JobState]:
        try:
            jobs = list(self._pyslurm.Jobs.load().values())
        except Exception as exc:
            raise common.scheduler_error("status", str(exc)) from exc
        out = []
        for job in jobs:
            out.append(
                common.job_from_json(
                    {
                        "job_id": job.id,
                        "job_state": job.state,
                        "name": job.name,
                        "state_reason": job.state_reason,
                        # pyslurm already split the wait status: rebuild it for one parser
                        "exit_code": ((job.exit_code or 0) << 8) | (job.exit_code_signal or 0),
                        "submit_time": job.submit_time,
                        "start_time": job.start_time,
                        "end_time": job.end_time,
                        "nodes": job.allocated_nodes,
                        "partition": job.partition,
                        "restart_cnt": job.requeue_count,
                        "comment": job.comments,
                        "standard_output": job.standard_output,
                        "current_working_directory": job.working_directory,
                        "user_name": job.user_name,
                    }
                )
            )
        return out
