"""The one interface every scheduler adapter implements, and the plain data it speaks.

Nothing here knows about Django or a particular scheduler. Adapters receive a validated
`JobSpec`, return job ids as strings and report `JobState`s whose `state` is always one of
`JOB_STATES` (Slurm's own vocabulary, so the reconciler maps one set of names). Every failure
is a `SchedulerError` whose `permanent` flag says whether retrying the same call can help.

Security rule for all adapters: no value from a spec ever reaches a shell. Names and paths are
checked against the strict patterns below; everything else travels as argv elements, process
environment or JSON data.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable

# Slurm's job states, the only values JobState.state takes.
PENDING = "PENDING"
RUNNING = "RUNNING"
COMPLETING = "COMPLETING"
COMPLETED = "COMPLETED"
FAILED = "FAILED"
CANCELLED = "CANCELLED"
TIMEOUT = "TIMEOUT"
NODE_FAIL = "NODE_FAIL"
PREEMPTED = "PREEMPTED"
OUT_OF_MEMORY = "OUT_OF_MEMORY"
REQUEUED = "REQUEUED"

JOB_STATES: tuple[str, ...] = (
    PENDING,
    RUNNING,
    COMPLETING,
    COMPLETED,
    FAILED,
    CANCELLED,
    TIMEOUT,
    NODE_FAIL,
    PREEMPTED,
    OUT_OF_MEMORY,
    REQUEUED,
)
# States after which the job will not run again unless someone requeues it.
TERMINAL_STATES = frozenset(
    {COMPLETED, FAILED, CANCELLED, TIMEOUT, NODE_FAIL, PREEMPTED, OUT_OF_MEMORY}
)

# Every state name and compact code Slurm 22.05-25.x prints, mapped onto JOB_STATES. Names
# that have no equivalent fall to the nearest state that keeps the reconciler polling
# (e.g. SUSPENDED is not running but may continue, so PENDING rather than a terminal state).
_RAW_STATES: dict[str, str] = {
    "PENDING": PENDING,
    "PD": PENDING,
    "RUNNING": RUNNING,
    "R": RUNNING,
    "COMPLETING": COMPLETING,
    "CG": COMPLETING,
    "COMPLETED": COMPLETED,
    "CD": COMPLETED,
    "FAILED": FAILED,
    "F": FAILED,
    "CANCELLED": CANCELLED,
    "CA": CANCELLED,
    "TIMEOUT": TIMEOUT,
    "TO": TIMEOUT,
    "NODE_FAIL": NODE_FAIL,
    "NF": NODE_FAIL,
    "PREEMPTED": PREEMPTED,
    "PR": PREEMPTED,
    "OUT_OF_MEMORY": OUT_OF_MEMORY,
    "OOM": OUT_OF_MEMORY,
    "REQUEUED": REQUEUED,
    "RQ": REQUEUED,
    "REQUEUE_HOLD": REQUEUED,
    "RH": REQUEUED,
    "REQUEUE_FED": REQUEUED,
    "RF": REQUEUED,
    "BOOT_FAIL": NODE_FAIL,  # the allocated node never booted: a node problem, not the job's
    "BF": NODE_FAIL,
    "DEADLINE": TIMEOUT,  # --deadline passed: the job ran out of allowed time
    "DL": TIMEOUT,
    "SPECIAL_EXIT": FAILED,  # an epilog asked for a special exit: the job failed
    "SE": FAILED,
    "REVOKED": CANCELLED,  # a federation sibling started instead; this copy was withdrawn
    "RV": CANCELLED,
    "CONFIGURING": RUNNING,  # resources allocated, nodes booting
    "CF": RUNNING,
    "RESIZING": RUNNING,
    "RS": RUNNING,
    "SIGNALING": COMPLETING,
    "SI": COMPLETING,
    "STAGE_OUT": COMPLETING,
    "SO": COMPLETING,
    "SUSPENDED": PENDING,
    "S": PENDING,
    "STOPPED": PENDING,
    "ST": PENDING,
    "RESV_DEL_HOLD": PENDING,
    "RD": PENDING,
}
# Flags that newer Slurm lists next to the base state (job_state: ["PENDING", "REQUEUED"]);
# when present they say more than the base state does.
_OVERRIDING_FLAGS = ("REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "COMPLETING", "CONFIGURING")

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SLURM_IDENT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Absolute paths of safe characters; '..' components are refused separately.
_PATH_RE = re.compile(r"/[A-Za-z0-9._/+-]{0,4095}")
# Output paths may also carry Slurm's filename patterns (%j job id, %x job name, ...).
_OUTPUT_RE = re.compile(r"/(?:[A-Za-z0-9._/+-]|%[jxAaNu%]){0,4095}")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# Variables that would change what sbatch itself does (SBATCH_*, SLURM_*), load code into the
# control plane's own processes (LD_*), or run code in the batch shell before the script
# (BASH_ENV, exported functions): never accepted from a spec.
_ENV_DENIED_RE = re.compile(
    r"(?:SBATCH_|SLURM_|SALLOC_|SRUN_|SPANK_|LD_|BASH_FUNC_).*"
    r"|BASH_ENV|ENV|IFS|SHELLOPTS|BASHOPTS|PS4|PROMPT_COMMAND"
)
_SIGNAL_RE = re.compile(r"(?:B:)?(?:SIG)?[A-Z0-9]{1,8}(?:@[0-9]{1,6})?")
_COMMENT_RE = re.compile(r"[\x20-\x7e]{0,512}")
_TOKEN_RE = re.compile(r"[A-Za-z0-9._:-]{8,128}")
_JOB_ID_RE = re.compile(r"[0-9]{1,12}(?:_[0-9]{1,9})?")
MAX_SCRIPT_BYTES = 1 << 20


class SchedulerError(Exception):
    """A scheduler call failed.

    `permanent=True`: the request itself is wrong (bad partition, impossible GPU count,
    unknown job) and retrying it unchanged will fail again. `permanent=False`: the
    scheduler could not be reached or was busy; retry later with the same idempotency token.
    """

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent

    def __repr__(self) -> str:
        return f"SchedulerError({self.message!r}, permanent={self.permanent})"


@dataclass(frozen=True)
class JobSpec:
    """What to run and with which resources; validated by `validate()` before any adapter
    uses it. `script` is the full batch script text (it must start with '#!'); `time_limit`
    is in minutes; `env` is added to a minimal environment (the control plane's own
    environment, with its secrets, is never passed on); `output` may use %j and %x."""

    script: str
    name: str
    workdir: str
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    nodes: int = 1
    ntasks_per_node: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int | None = None
    time_limit: int | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    comment: str = ""
    output: str | None = None
    signal: str | None = None
    requeue: bool = True

    def validate(self) -> None:
        """Raise a permanent SchedulerError naming the first bad field and its value."""
        if not isinstance(self.script, str) or not self.script.startswith("#!"):
            raise _bad("script", "must be text starting with '#!' (an interpreter line)")
        if "\x00" in self.script or len(self.script.encode()) > MAX_SCRIPT_BYTES:
            raise _bad("script", f"must hold no NUL byte and be under {MAX_SCRIPT_BYTES} bytes")
        check_name(self.name)
        check_path("workdir", self.workdir)
        for label in ("partition", "account", "qos"):
            value = getattr(self, label)
            if value is not None and not _full(_SLURM_IDENT_RE, value):
                raise _bad(label, f"{value!r} is not a plain identifier ([A-Za-z0-9._-], max 64)")
        for label, low in (("nodes", 1), ("ntasks_per_node", 1), ("gpus_per_node", 0)):
            value = getattr(self, label)
            if not _is_int(value) or not low <= value <= 100_000:
                raise _bad(label, f"{value!r} must be an integer >= {low}")
        if self.cpus_per_task is not None and (
            not _is_int(self.cpus_per_task) or not 1 <= self.cpus_per_task <= 100_000
        ):
            raise _bad("cpus_per_task", f"{self.cpus_per_task!r} must be a positive integer")
        if self.time_limit is not None and (
            not _is_int(self.time_limit) or not 1 <= self.time_limit <= 525_600 * 10
        ):
            raise _bad("time_limit", f"{self.time_limit!r} must be minutes >= 1")
        for key, value in self.env.items():
            if not isinstance(key, str) or not _full(_ENV_NAME_RE, key):
                raise _bad("env", f"variable name {key!r} is not [A-Za-z_][A-Za-z0-9_]*")
            if _ENV_DENIED_RE.fullmatch(key):
                raise _bad("env", f"variable {key} may not be set by a job spec")
            if not isinstance(value, str) or "\x00" in value:
                raise _bad("env", f"value of {key} must be text without NUL bytes")
        if not isinstance(self.comment, str) or not _full(_COMMENT_RE, self.comment):
            raise _bad("comment", "must be printable ASCII on one line, at most 512 characters")
        if self.output is not None:
            check_path("output", self.output, pattern=_OUTPUT_RE)
        if self.signal is not None and not _full(_SIGNAL_RE, self.signal):
            raise _bad("signal", f"{self.signal!r} is not like USR1@120 or B:TERM@60")
        if not isinstance(self.requeue, bool):
            raise _bad("requeue", "must be True or False")

    def signal_parts(self) -> tuple[str, int, bool] | None:
        """(signal name without SIG, seconds before the time limit, batch-shell only)."""
        if not self.signal:
            return None
        text = self.signal
        batch_only = text.startswith("B:")
        text = text.removeprefix("B:")
        name, _, secs = text.partition("@")
        return name.removeprefix("SIG"), int(secs or 60), batch_only


@dataclass(frozen=True)
class JobState:
    """One job as the scheduler sees it now. Times are timezone-aware UTC or None;
    `exit_code` is the script's exit status and `exit_signal` the signal that killed it
    (Slurm's ExitCode=code:signal); `raw_state` keeps the scheduler's own word."""

    job_id: str
    state: str
    name: str = ""
    reason: str = ""
    exit_code: int | None = None
    exit_signal: int | None = None
    submit_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    nodes: str = ""
    partition: str = ""
    restarts: int = 0
    comment: str = ""
    output: str = ""
    raw_state: str = ""

    @property
    def is_terminal(self) -> bool:
        """True when the job will not run again unless requeued."""
        return self.state in TERMINAL_STATES


@dataclass(frozen=True)
class NodeInfo:
    """One compute node; memory in MB; `state` is Slurm's lower-case word (idle, mixed,
    allocated, down, drained, ...) with flags after '+'."""

    name: str
    state: str
    cpus: int = 0
    alloc_cpus: int = 0
    memory_mb: int = 0
    alloc_memory_mb: int = 0
    gpus: int = 0
    alloc_gpus: int = 0
    partitions: tuple[str, ...] = ()
    reason: str = ""


@dataclass(frozen=True)
class PartitionInfo:
    """One partition; `max_time` in minutes, None when unlimited."""

    name: str
    state: str
    nodes: tuple[str, ...] = ()
    default: bool = False
    max_time: int | None = None


@dataclass(frozen=True)
class ClusterInfo:
    """What the cluster page shows: partitions, nodes and GPU availability."""

    cluster: str
    partitions: tuple[PartitionInfo, ...]
    nodes: tuple[NodeInfo, ...]

    @property
    def total_gpus(self) -> int:
        return sum(n.gpus for n in self.nodes)

    @property
    def free_gpus(self) -> int:
        usable = ("idle", "mixed", "allocated")
        return sum(
            max(n.gpus - n.alloc_gpus, 0) for n in self.nodes if n.state.split("+")[0] in usable
        )


@runtime_checkable
class Scheduler(Protocol):
    """Submit, watch, cancel and requeue batch jobs on one cluster."""

    name: str

    def submit(self, spec: JobSpec) -> str:
        """Queue the job; return its id. Raises SchedulerError."""
        ...

    def status(self, job_ids: Sequence[str]) -> dict[str, JobState]:
        """States of many jobs in one call. Ids the scheduler does not know (never existed,
        or purged after finishing) are absent from the result: the caller decides 'lost'."""
        ...

    def cancel(self, job_id: str) -> None:
        """Ask the job to stop (SIGTERM, then SIGKILL after the grace time). A job that has
        already finished or is unknown is left as it is: cancelling twice is not an error."""
        ...

    def requeue(self, job_id: str) -> None:
        """Stop the job if running and queue it again under the same id (restarts + 1)."""
        ...

    def logs(self, job_id: str, tail_bytes: int = 65536) -> str:
        """The last `tail_bytes` of the job's output file, decoded leniently."""
        ...

    def cluster_info(self) -> ClusterInfo:
        """Partitions, nodes, CPUs, memory and GPUs with their states."""
        ...

    def find_by_comment(self, token: str) -> list[JobState]:
        """Jobs still known to the scheduler whose comment contains `token`."""
        ...


def normalize_state(raw: str | Sequence[str] | None) -> str:
    """Map whatever the scheduler printed (name, compact code, 'CANCELLED by 0', or a list
    of state flags) onto JOB_STATES. Unknown words give PENDING: not terminal, so the job
    keeps being polled and the raw word stays visible instead of ending a run."""
    if raw is None:
        return PENDING
    # "CANCELLED by 0", "RUNNING+REQUEUED" or ["PENDING", "REQUEUED"]: base word first.
    parts = raw.replace("+", " ").split() if isinstance(raw, str) else [str(w) for w in raw]
    words = [w.upper() for w in parts]
    for flag in _OVERRIDING_FLAGS:
        if flag in words[1:]:
            return _RAW_STATES[flag]
    return _RAW_STATES.get(words[0], PENDING) if words else PENDING


def check_name(name: str) -> None:
    """A job name: letters, digits, '.', '_' and '-', starting with a letter or digit."""
    if not isinstance(name, str) or not _full(_NAME_RE, name):
        raise _bad("name", f"{name!r} is not [A-Za-z0-9][A-Za-z0-9._-]* (max 128)")


def check_path(label: str, path: str, *, pattern: re.Pattern[str] = _PATH_RE) -> None:
    """An absolute path of safe characters with no '..' component."""
    if not isinstance(path, str) or not _full(pattern, path):
        raise _bad(label, f"{path!r} is not an absolute path of [A-Za-z0-9._/+-]")
    if any(part == ".." for part in path.split("/")):
        raise _bad(label, f"{path!r} contains a '..' component")


def check_job_id(job_id: str) -> str:
    """A Slurm-style job id ('123' or '123_4'); returned unchanged."""
    if not isinstance(job_id, str) or not _full(_JOB_ID_RE, job_id):
        raise SchedulerError(f"invalid job id {job_id!r}", permanent=True)
    return job_id


def check_token(token: str) -> str:
    """An idempotency token to look for in job comments."""
    if not isinstance(token, str) or not _full(_TOKEN_RE, token):
        raise SchedulerError(
            f"invalid idempotency token {token!r} (8-128 of [A-Za-z0-9._:-])", permanent=True
        )
    return token


def submit_once(scheduler: Scheduler, spec: JobSpec, token: str) -> str:
    """Submit unless a job carrying `token` in its comment already exists; return its id.

    The token must be part of `spec.comment`. A retry after a crash between the scheduler
    accepting the job and the caller recording its id finds the first job instead of
    submitting a second. Jobs purged by the scheduler (MinJobAge after they end) are no
    longer found, so callers record the id as soon as this returns.
    """
    check_token(token)
    if token not in spec.comment:
        raise SchedulerError("the idempotency token must be part of spec.comment", permanent=True)
    existing = scheduler.find_by_comment(token)
    if existing:
        # Several can exist only if someone submitted by hand; the oldest is the original.
        return min(existing, key=lambda s: _id_key(s.job_id)).job_id
    return scheduler.submit(spec)


def expand_output(pattern: str, job_id: str, name: str, user: str = "", node: str = "") -> str:
    """Expand the filename patterns Slurm allows in --output (%j, %x, %u, %N, %A, %a, %%)."""
    array_job, _, task = job_id.partition("_")
    values = {"j": job_id, "x": name, "u": user, "N": node, "A": array_job, "a": task, "%": "%"}
    return re.sub(r"%([jxuNAa%])", lambda m: values[m.group(1)], pattern)


def read_tail(path: str, tail_bytes: int) -> str:
    """The last `tail_bytes` of a file, decoded as UTF-8 with replacement characters."""
    if not _is_int(tail_bytes) or tail_bytes < 0:
        raise SchedulerError(
            f"tail_bytes must be a non-negative integer: {tail_bytes!r}", permanent=True
        )
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(size - tail_bytes, 0))
            data = fh.read(tail_bytes)
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise SchedulerError(
            f"cannot read job output {path}: {exc.strerror}", permanent=False
        ) from exc
    return data.decode("utf-8", errors="replace")


def _id_key(job_id: str) -> tuple[int, int]:
    head, _, tail = job_id.partition("_")
    return int(head), int(tail or 0)


def _full(pattern: re.Pattern[str], value: object) -> bool:
    return isinstance(value, str) and pattern.fullmatch(value) is not None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _bad(label: str, why: str) -> SchedulerError:
    return SchedulerError(f"invalid job spec: {label}: {why}", permanent=True)
