"""The Slurm command-line adapter: sbatch, squeue, scontrol, scancel, sinfo.

Works with Slurm 22.05 (Debian 12) and newer. Where `squeue --json` / `sinfo --json` exist
(21.08+) they are used and filtered here, one call for any number of jobs; otherwise the
adapter falls back to `scontrol -o show job|node`, which every version has. Commands run
with a minimal environment so the control plane's secrets and any SBATCH_*/SLURM_* variables
of its own process never reach the cluster.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

from . import _slurm_common as common
from .base import (
    ClusterInfo,
    JobSpec,
    JobState,
    SchedulerError,
    check_job_id,
    check_token,
    read_tail,
)

# Passed through from the control plane's environment: needed to find and run the tools,
# and SLURM_CONF to find the cluster. Nothing else (least of all secrets) is inherited.
_INHERITED = ("PATH", "HOME", "LANG", "TZ", "SLURM_CONF")
_USER_RE = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")
_UNSUPPORTED_JSON = ("unrecognized option", "invalid option", "unknown option", "data_parser")


class SlurmCLI:
    """Scheduler over the Slurm client commands on this host (munge or JWT auth).

    Options: `bin_dir` (where the commands live; default: PATH), `timeout` (seconds per
    command, default 30), `use_json` (True/False, or None to detect), `jwt` (a token: commands
    then authenticate as its user through auth/jwt instead of munge), `env` (extra variables
    for the commands, e.g. SLURM_CONF)."""

    name = "slurm"

    def __init__(
        self,
        *,
        bin_dir: str | None = None,
        timeout: float = 30.0,
        use_json: bool | None = None,
        jwt: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.bin_dir = bin_dir
        self.timeout = float(timeout)
        self._json = use_json
        self._env = {k: v for k in _INHERITED if (v := os.environ.get(k)) is not None}
        self._env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        # Fixed C locale: scontrol's and sbatch's messages are parsed and classified here.
        self._env["LC_ALL"] = "C"
        self._env.update(env or {})
        if jwt:
            self._env["SLURM_JWT"] = jwt
        # scontrol prints times in its own local zone without saying which: run the queries
        # in UTC so they parse unambiguously (jobs keep the inherited TZ via sbatch).
        self._query_env = {**self._env, "TZ": "UTC"}

    # --- the Scheduler interface ---------------------------------------------------------

    def submit(self, spec: JobSpec) -> str:
        spec.validate()
        # The spec's variables win (a job may want its own PATH or locale); they cannot
        # touch SBATCH_*/SLURM_*/LD_* (JobSpec.validate), so sbatch itself is unaffected.
        env = {**self._env, **spec.env}
        out = self._run("sbatch", common.sbatch_args(spec), stdin=spec.script, env=env)
        # --parsable prints "id" or "id;cluster".
        job_id = out.strip().split(";")[0]
        if not job_id.isdigit():
            # sbatch said yes but printed no id: the job may exist, so not permanent (a
            # retry through submit_once finds it by its comment).
            raise SchedulerError(
                f"sbatch printed no job id: {out.strip()[:200]!r}", permanent=False
            )
        return job_id

    def status(self, job_ids: Sequence[str]) -> dict[str, JobState]:
        wanted = {check_job_id(j) for j in job_ids}
        if not wanted:
            return {}
        return {s.job_id: s for s in self._all_jobs() if s.job_id in wanted}

    def cancel(self, job_id: str) -> None:
        check_job_id(job_id)
        try:
            self._run("scancel", [job_id])
        except SchedulerError as exc:
            # Already finished or purged: the caller's intent (not running) holds.
            if "already completing or completed" in exc.message or "Invalid job id" in exc.message:
                return
            raise

    def requeue(self, job_id: str) -> None:
        check_job_id(job_id)
        try:
            self._run("scontrol", ["requeue", job_id])
        except SchedulerError as exc:
            if "pending execution" in exc.message:
                return  # still queued: requeueing it would change nothing
            raise

    def logs(self, job_id: str, tail_bytes: int = 65536) -> str:
        state = self.status([job_id]).get(job_id)
        if state is None:
            raise SchedulerError(f"unknown job {job_id}", permanent=True)
        return read_tail(state.output, tail_bytes) if state.output else ""

    def cluster_info(self) -> ClusterInfo:
        nodes = None
        if self._use_json():
            data = self._json_of("sinfo", ["--json"])
            if data is not None:
                nodes = [common.node_from_json(n) for n in data.get("nodes", [])]
        if nodes is None:
            nodes = [
                common.node_from_scontrol(common.parse_key_values(line))
                for line in self._run("scontrol", ["-o", "show", "node"]).splitlines()
                if line.startswith("NodeName=")
            ]
        partitions = [
            common.partition_from_scontrol(common.parse_key_values(line), nodes)
            for line in self._run("scontrol", ["-o", "show", "partition"]).splitlines()
            if line.startswith("PartitionName=")
        ]
        return common.cluster(self._cluster_name(), partitions, nodes)

    def find_by_comment(self, token: str) -> list[JobState]:
        check_token(token)
        return [s for s in self._all_jobs() if token in s.comment]

    # --- beyond the interface ----------------------------------------------------------

    def mint_token(self, user_name: str, lifespan_s: int = 900) -> str:
        """A JWT for `user_name` (`scontrol token`), for slurmrestd to submit as that user.
        Only root or SlurmUser may mint tokens for others; keep lifespans short."""
        if not isinstance(user_name, str) or not _USER_RE.fullmatch(user_name):
            raise SchedulerError(f"invalid cluster user name {user_name!r}", permanent=True)
        if not isinstance(lifespan_s, int) or not 1 <= lifespan_s <= 7 * 86400:
            raise SchedulerError(f"invalid token lifespan {lifespan_s!r}", permanent=True)
        out = self._run("scontrol", ["token", f"username={user_name}", f"lifespan={lifespan_s}"])
        token = out.strip().removeprefix("SLURM_JWT=")
        if not token or "=" in token or " " in token:
            raise SchedulerError("scontrol token printed no token", permanent=False)
        return token

    # --- helpers -------------------------------------------------------------------------

    def _all_jobs(self) -> list[JobState]:
        """Every job the controller still knows (running, queued, and finished within
        MinJobAge), in one command."""
        if self._use_json():
            data = self._json_of("squeue", ["--json"])
            if data is not None:
                return [common.job_from_json(j) for j in data.get("jobs", [])]
        out = self._run("scontrol", ["-o", "show", "job"])
        return [
            common.job_from_scontrol(common.parse_key_values(line))
            for line in out.splitlines()
            if line.startswith("JobId=")
        ]

    def _use_json(self) -> bool:
        return self._json is not False

    def _json_of(self, cmd: str, args: list[str]) -> dict[str, Any] | None:
        """Parsed JSON output, or None (and JSON switched off) when this Slurm has no --json."""
        try:
            out = self._run(cmd, args)
        except SchedulerError as exc:
            if self._json is None and any(s in exc.message for s in _UNSUPPORTED_JSON):
                self._json = False
                return None
            raise
        try:
            data = json.loads(out)
        except ValueError as exc:
            raise SchedulerError(
                f"{cmd} --json printed invalid JSON: {exc}", permanent=False
            ) from exc
        errors = data.get("errors") or []
        if errors:
            raise common.scheduler_error(cmd, "; ".join(_error_text(e) for e in errors))
        self._json = True
        return data

    def _cluster_name(self) -> str:
        for line in self._run("scontrol", ["show", "config"]).splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "ClusterName":
                return value.strip()
        return "slurm"

    def _command(self, cmd: str) -> str:
        path = (
            os.path.join(self.bin_dir, cmd)
            if self.bin_dir
            else shutil.which(cmd, path=self._env["PATH"])
        )
        if not path or not os.access(path, os.X_OK):
            raise SchedulerError(
                f"{cmd} not found (bin_dir={self.bin_dir!r}); is the Slurm client installed?",
                permanent=True,
            )
        return path

    def _run(
        self,
        cmd: str,
        args: list[str],
        *,
        stdin: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> str:
        argv = [self._command(cmd), *args]
        try:
            proc = subprocess.run(  # argv list, no shell: values are never interpreted
                argv,
                input=stdin,
                capture_output=True,
                text=True,
                env=dict(env if env is not None else self._query_env),
                timeout=self.timeout,
                check=False,
                stdin=None if stdin is not None else subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise SchedulerError(
                f"{cmd} timed out after {self.timeout:g}s", permanent=False
            ) from exc
        except OSError as exc:
            raise SchedulerError(f"cannot run {cmd}: {exc}", permanent=True) from exc
        if proc.returncode != 0:
            raise common.scheduler_error(cmd, proc.stderr or proc.stdout)
        return proc.stdout


def _error_text(error: Any) -> str:
    if isinstance(error, Mapping):
        return str(error.get("description") or error.get("error") or error)
    return str(error)
