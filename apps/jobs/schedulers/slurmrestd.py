"""The slurmrestd adapter: Slurm's REST API with JWT, for sites that expose it.

Each request carries X-SLURM-USER-NAME and X-SLURM-USER-TOKEN, so jobs run as the token's
user: give each operator a short-lived token of their own and their jobs are theirs. The
OpenAPI version is configured or discovered (v0.0.38 on Slurm 22.05, the version tested;
v0.0.39+ field shapes are handled from the published specs). slurmrestd has no requeue
endpoint, so `requeue` runs `scontrol requeue` with the same token (auth/jwt) when the
Slurm client is installed on this host.

Only the standard library is used (http.client), which also speaks to a unix socket
(`url="unix:/run/slurmrestd/rest.sock"`, rest_auth/local, no token).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

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

# Newest first: discovery takes the first one the server answers.
API_VERSIONS = ("v0.0.44", "v0.0.43", "v0.0.42", "v0.0.41", "v0.0.40", "v0.0.39", "v0.0.38")
_DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class SlurmRestd:
    """Scheduler over slurmrestd.

    Options: `url` (http(s)://host:port or unix:/path), `user_name` and `token` (JWT), or
    `token_file` (a file with SLURM_JWT=... and optionally SLURMRESTD_USER=..., as written
    by deploy/slurm/up.sh; re-read when it changes, so tokens can rotate), `api_version`
    (e.g. "v0.0.38"; default: discovered), `timeout` (seconds), `scontrol_requeue`
    (default True: requeue through scontrol with the same token), `cluster_name` (shown in
    cluster_info; v0.0.38 does not report it)."""

    name = "slurmrestd"

    def __init__(
        self,
        *,
        url: str = "http://127.0.0.1:6820",
        user_name: str | None = None,
        token: str | None = None,
        token_file: str | None = None,
        api_version: str | None = None,
        timeout: float = 30.0,
        scontrol_requeue: bool = True,
        cluster_name: str | None = None,
    ) -> None:
        self.cluster_name = cluster_name
        self.url = url
        self.user_name = user_name
        self._token = token
        self.token_file = token_file
        self.api_version = api_version
        self.timeout = float(timeout)
        self.scontrol_requeue = scontrol_requeue
        self._file_stamp: tuple[float, int] | None = None
        parts = urlsplit(url)
        if parts.scheme == "unix":
            self._socket: str | None = parts.path
        elif parts.scheme in ("http", "https") and parts.hostname:
            self._socket = None
        else:
            raise SchedulerError(
                f"slurmrestd url {url!r} is not http(s)://host:port or unix:/path", permanent=True
            )
        self._parts = parts
        if api_version is not None and api_version not in API_VERSIONS:
            raise SchedulerError(
                f"api_version {api_version!r} is not one of {', '.join(API_VERSIONS)}",
                permanent=True,
            )

    # --- the Scheduler interface ---------------------------------------------------------

    def submit(self, spec: JobSpec) -> str:
        spec.validate()
        body = {"script": spec.script, "job": self._job_properties(spec)}
        data = self._call("POST", "job/submit", body)
        job_id = common.number(data.get("job_id"))
        if job_id is None:
            # Accepted but no id: the job may exist, so not permanent (submit_once finds it).
            raise SchedulerError(
                f"slurmrestd returned no job id: {str(data)[:200]}", permanent=False
            )
        return str(job_id)

    def status(self, job_ids: Sequence[str]) -> dict[str, JobState]:
        wanted = {check_job_id(j) for j in job_ids}
        if not wanted:
            return {}
        return {s.job_id: s for s in self._all_jobs() if s.job_id in wanted}

    def cancel(self, job_id: str) -> None:
        check_job_id(job_id)
        try:
            # Slurm turns this into SIGTERM, KillWait, SIGKILL, like scancel.
            self._call("DELETE", f"job/{job_id}")
        except SchedulerError as exc:
            if "already completing or completed" in exc.message or "Invalid job id" in exc.message:
                return
            raise

    def requeue(self, job_id: str) -> None:
        check_job_id(job_id)
        if not self.scontrol_requeue:
            raise SchedulerError(
                "slurmrestd has no requeue endpoint and scontrol_requeue is off", permanent=True
            )
        from .slurm import SlurmCLI  # the CLI adapter owns running Slurm commands

        SlurmCLI(jwt=self._current_token(), timeout=self.timeout).requeue(job_id)

    def logs(self, job_id: str, tail_bytes: int = 65536) -> str:
        state = self.status([job_id]).get(job_id)
        if state is None:
            raise SchedulerError(f"unknown job {job_id}", permanent=True)
        return read_tail(state.output, tail_bytes) if state.output else ""

    def cluster_info(self) -> ClusterInfo:
        nodes = [common.node_from_json(n) for n in self._call("GET", "nodes").get("nodes", [])]
        parts = [
            common.partition_from_json(p, nodes)
            for p in self._call("GET", "partitions").get("partitions", [])
        ]
        return common.cluster(self._cluster_name(), parts, nodes)

    def find_by_comment(self, token: str) -> list[JobState]:
        check_token(token)
        return [s for s in self._all_jobs() if token in s.comment]

    # --- helpers -------------------------------------------------------------------------

    def version(self) -> str:
        """The OpenAPI version in use (discovered on first use unless configured)."""
        if self.api_version is None:
            for candidate in API_VERSIONS:
                status, _ = self._request("GET", f"/slurm/{candidate}/ping")
                if status in (401, 403):
                    raise _auth_error(self.user_name, status)
                if status != 404:
                    # Served (a 500 here is the controller or the token, reported by the
                    # real call that follows, not a missing version).
                    self.api_version = candidate
                    break
            else:
                raise SchedulerError(
                    f"slurmrestd at {self.url} serves none of {', '.join(API_VERSIONS)}",
                    permanent=True,
                )
        return self.api_version

    def _job_properties(self, spec: JobSpec) -> dict[str, Any]:
        """The `job` object of a submission, in the shape of the API version in use."""
        legacy = self.version() == "v0.0.38"
        env = {"PATH": _DEFAULT_PATH, **spec.env}
        job: dict[str, Any] = {
            "name": spec.name,
            "current_working_directory": spec.workdir,
            "tasks_per_node": spec.ntasks_per_node,
            "tasks": spec.ntasks_per_node * spec.nodes,
            "requeue": spec.requeue,
        }
        if legacy:
            job["environment"] = env  # a JSON object in v0.0.38
            job["nodes"] = [spec.nodes, spec.nodes]
        else:
            job["environment"] = [f"{k}={v}" for k, v in env.items()]  # a list from v0.0.39
            job["nodes"] = str(spec.nodes)
        for key in ("partition", "account", "qos", "comment", "signal"):
            value = getattr(spec, key)
            if value:
                job[key] = value
        if spec.output:
            job["standard_output"] = spec.output
        if spec.cpus_per_task:
            job["cpus_per_task"] = spec.cpus_per_task
        if spec.time_limit:
            job["time_limit"] = (
                spec.time_limit
                if legacy
                else {"set": True, "infinite": False, "number": spec.time_limit}
            )
        if spec.gpus_per_node:
            if legacy:
                job["gpus_per_node"] = str(spec.gpus_per_node)
            else:
                job["tres_per_node"] = f"gres/gpu:{spec.gpus_per_node}"
        return job

    def _all_jobs(self) -> list[JobState]:
        return [common.job_from_json(j) for j in self._call("GET", "jobs").get("jobs", [])]

    def _cluster_name(self) -> str:
        if self.cluster_name:
            return self.cluster_name
        # v0.0.38's meta has no cluster name; newer versions carry it in meta.slurm.cluster.
        meta = self._call("GET", "ping").get("meta", {})
        slurm = meta.get("slurm") or meta.get("Slurm") or {}
        return str(slurm.get("cluster") or "slurm")

    def _current_token(self) -> str | None:
        if self.token_file:
            self._load_token_file()
        return self._token

    def _load_token_file(self) -> None:
        try:
            st = os.stat(self.token_file or "")
        except OSError as exc:
            raise SchedulerError(
                f"cannot read token file {self.token_file}: {exc.strerror}", permanent=True
            ) from exc
        stamp = (st.st_mtime, st.st_size)
        if stamp == self._file_stamp:
            return
        with open(self.token_file or "", encoding="utf-8") as fh:
            text = fh.read()
        values = dict(
            line.split("=", 1)
            for line in text.splitlines()
            if "=" in line and not line.startswith("#")
        )
        token = values.get("SLURM_JWT") or (text.strip() if "=" not in text else "")
        if not token:
            raise SchedulerError(f"no SLURM_JWT in token file {self.token_file}", permanent=True)
        self._token = token.strip()
        if values.get("SLURMRESTD_USER") and not self.user_name:
            self.user_name = values["SLURMRESTD_USER"].strip()
        self._file_stamp = stamp

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        token = self._current_token()
        if token:
            if not self.user_name:
                raise SchedulerError("slurmrestd: a token needs user_name", permanent=True)
            headers["X-SLURM-USER-NAME"] = self.user_name
            headers["X-SLURM-USER-TOKEN"] = token
        return headers

    def _call(
        self, method: str, endpoint: str, body: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """One API call; returns the decoded body or raises SchedulerError."""
        path = f"/slurm/{self.version()}/{endpoint}"
        status, data = self._request(method, path, body)
        errors = [e for e in (data.get("errors") or []) if isinstance(e, Mapping)]
        described = "; ".join(str(e.get("description") or e.get("error") or e) for e in errors)
        if status in (401, 403):
            raise _auth_error(self.user_name, status)
        if status == 404 and not errors:
            raise SchedulerError(f"slurmrestd has no {method} {path} (HTTP 404)", permanent=True)
        if errors:
            err = common.scheduler_error(f"{method} {endpoint}", described)
            if 400 <= status < 500:
                err.permanent = True  # the server rejected the request itself (e.g. bad gres)
            raise err
        if status >= 400:
            raise SchedulerError(
                f"slurmrestd {method} {endpoint} failed with HTTP {status}",
                permanent=status < 500,
            )
        return data

    def _request(
        self, method: str, path: str, body: Mapping[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        headers = self._headers()
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn: http.client.HTTPConnection
        if self._socket:
            conn = _UnixHTTPConnection(self._socket, self.timeout)
        elif self._parts.scheme == "https":
            conn = http.client.HTTPSConnection(
                self._parts.hostname or "", self._parts.port, timeout=self.timeout
            )
        else:
            conn = http.client.HTTPConnection(
                self._parts.hostname or "", self._parts.port, timeout=self.timeout
            )
        try:
            conn.request(method, path, body=payload, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            status = resp.status
        except (OSError, http.client.HTTPException) as exc:
            raise SchedulerError(
                f"slurmrestd unreachable at {self.url}: {exc}", permanent=False
            ) from exc
        finally:
            conn.close()
        try:
            data = json.loads(raw) if raw.strip() else {}
        except ValueError:
            data = (
                {"errors": [{"description": raw[:300].decode("utf-8", "replace")}]}
                if status >= 400
                else {}
            )
        return status, data if isinstance(data, dict) else {}


def _auth_error(user: str | None, status: int) -> SchedulerError:
    # Retrying with the same token cannot help; a new token (or user) is needed.
    return SchedulerError(
        f"slurmrestd refused the credentials for user {user!r} (HTTP {status});"
        " is the token valid and unexpired?",
        permanent=True,
    )
