"""Parsing shared by the Slurm CLI and slurmrestd adapters.

Slurm's JSON changed shape between versions: in 22.05 (openapi v0.0.38) numbers are plain
ints, `job_state` a string and `exit_code` the raw wait status; from 23.02 numbers may be
{"set", "infinite", "number"} objects, from 23.11 `job_state` is a list of flags and
`exit_code` an object with `return_code` and `signal`. Every reader below accepts both.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from .base import (
    COMPLETING,
    PENDING,
    REQUEUED,
    TERMINAL_STATES,
    ClusterInfo,
    JobSpec,
    JobState,
    NodeInfo,
    PartitionInfo,
    SchedulerError,
    expand_output,
    normalize_state,
)

# Messages that mean "the controller is unreachable or busy": retry later. Everything else
# Slurm says about a request (bad partition, gres, account, QOS, limits, unknown job) is a
# property of the request and will not change by retrying.
_TRANSIENT = re.compile(
    r"unable to contact slurm controller|connection refused|connect failure|socket timed out"
    r"|timed out|temporarily unable|try again|resource temporarily unavailable"
    r"|zero bytes were transmitted|communication connection failure|slurmctld.*not responding"
    r"|unable to establish|insane message length|protocol authentication error"
    r"|slurm_persist_conn|backup controller|in standby mode|communications",
    re.IGNORECASE,
)
_PERMANENT = re.compile(
    r"invalid|not available|not permitted|more processors requested|can not be satisfied"
    r"|violates|unknown|not found|disabled|denied|access|not allowed|no such|bad|illegal"
    r"|exceeds|required|cannot|can't",
    re.IGNORECASE,
)


def classify(message: str) -> bool:
    """True when a Slurm error message describes a permanent problem with the request."""
    if _TRANSIENT.search(message):
        return False
    return bool(_PERMANENT.search(message))


def scheduler_error(action: str, message: str) -> SchedulerError:
    """A SchedulerError for a failed Slurm call, with its own message kept readable."""
    clean = " ".join(message.split()) or "no error message"
    return SchedulerError(f"slurm {action} failed: {clean}", permanent=classify(clean))


def number(value: Any) -> int | None:
    """An int from 22.05's plain numbers or 23.02+'s {"set","infinite","number"} objects."""
    if isinstance(value, Mapping):
        if not value.get("set", True) or value.get("infinite"):
            return None
        value = value.get("number")
    if isinstance(value, bool) or value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def epoch(value: Any) -> datetime | None:
    """A UTC datetime from a Unix time; 0 and unset mean 'not known'."""
    seconds = number(value)
    if not seconds:
        return None
    return datetime.fromtimestamp(seconds, tz=UTC)


def exit_status(value: Any) -> tuple[int | None, int | None]:
    """(exit code, signal) from a raw wait status (22.05) or an exit_code object (23.x+)."""
    if isinstance(value, Mapping):
        code = number(value.get("return_code"))
        sig = value.get("signal")
        signo = number(sig.get("id")) if isinstance(sig, Mapping) else number(sig)
        return code, signo or 0
    raw = number(value)
    if raw is None:
        return None, None
    # A wait status: low 7 bits the killing signal, next byte the exit code.
    return (raw >> 8) & 0xFF, raw & 0x7F


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def job_from_json(job: Mapping[str, Any]) -> JobState:
    """A JobState from one element of `squeue --json`'s or slurmrestd's `jobs` list."""
    job_id = str(number(job.get("job_id")))
    task = number(job.get("array_task_id"))
    array_job = number(job.get("array_job_id"))
    if array_job and task is not None:
        job_id = f"{array_job}_{task}"
    raw = job.get("job_state")
    state = normalize_state(raw)
    reason = _text(job.get("state_reason"))
    if reason == "None":
        reason = ""
    description = _text(job.get("state_description"))
    if description and description not in reason:
        reason = f"{reason}: {description}" if reason else description
    code, signo = exit_status(job.get("exit_code"))
    if state not in TERMINAL_STATES:
        code, signo = None, None
    # Slurm fills start/end with estimates: a pending job's expected start, a running job's
    # time-limit end (a year ahead when unlimited). Report only times that have happened.
    start = epoch(job.get("start_time")) if state not in (PENDING, REQUEUED) else None
    end = epoch(job.get("end_time")) if state in TERMINAL_STATES or state == COMPLETING else None
    name = _text(job.get("name"))
    workdir = _text(job.get("current_working_directory"))
    output = _text(job.get("standard_output")) or (
        f"{workdir.rstrip('/')}/slurm-%j.out" if workdir else ""
    )
    if output:
        output = expand_output(
            output, job_id, name, _text(job.get("user_name")), _text(job.get("batch_host"))
        )
    return JobState(
        job_id=job_id,
        state=state,
        name=name,
        reason=reason,
        exit_code=code,
        exit_signal=signo,
        submit_time=epoch(job.get("submit_time")),
        start_time=start,
        end_time=end,
        nodes=_text(job.get("nodes")),
        partition=_text(job.get("partition")),
        restarts=number(job.get("restart_cnt")) or 0,
        comment=_text(job.get("comment")),
        output=output,
        raw_state=_text(raw),
    )


_KEY_RE = re.compile(r"(?:^|\s+)([A-Za-z][A-Za-z0-9_:/]*)=")


def parse_key_values(line: str) -> dict[str, str]:
    """Split one `scontrol -o show ...` line into {key: value}. Values may hold spaces;
    a value containing ' word=' (e.g. a free-text comment) is cut there, the only ambiguity
    scontrol's format has."""
    matches = list(_KEY_RE.finditer(line))
    out: dict[str, str] = {}
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(line)
        out.setdefault(m.group(1), line[m.end() : end].strip())
    return out


def _scontrol_time(value: str) -> datetime | None:
    if not value or value in ("Unknown", "None", "N/A"):
        return None
    try:
        # Local time of the scontrol process, which SlurmCLI runs with TZ=UTC.
        return datetime.fromisoformat(value).replace(tzinfo=UTC)
    except ValueError:
        return None


def job_from_scontrol(fields: Mapping[str, str]) -> JobState:
    """A JobState from a parsed `scontrol -o show job` line (the path without --json)."""
    state = normalize_state(fields.get("JobState"))
    code_text, _, sig_text = fields.get("ExitCode", "").partition(":")
    code = int(code_text) if code_text.isdigit() else None
    signo = int(sig_text) if sig_text.isdigit() else None
    if state not in TERMINAL_STATES:
        code, signo = None, None
    reason = fields.get("Reason", "")
    nodes = fields.get("NodeList", "")
    return JobState(
        job_id=fields.get("JobId", ""),
        state=state,
        name=fields.get("JobName", ""),
        reason="" if reason == "None" else reason,
        exit_code=code,
        exit_signal=signo,
        submit_time=_scontrol_time(fields.get("SubmitTime", "")),
        start_time=None
        if state in (PENDING, REQUEUED)
        else _scontrol_time(fields.get("StartTime", "")),
        end_time=_scontrol_time(fields.get("EndTime", ""))
        if state in TERMINAL_STATES or state == COMPLETING
        else None,
        nodes="" if nodes == "(null)" else nodes,
        partition=fields.get("Partition", ""),
        restarts=int(fields.get("Restarts", "0") or 0),
        comment=fields.get("Comment", ""),
        output=fields.get("StdOut", ""),
        raw_state=fields.get("JobState", ""),
    )


_GRES_RE = re.compile(r"(?:^|,)gpu(?::[A-Za-z0-9_.-]+)?:(\d+)")


def gpu_count(gres: str | None) -> int:
    """GPUs in a gres string such as 'gpu:2', 'gpu:a100:4(S:0-1)' or 'gpu:a100:1(IDX:0),..'."""
    if not gres or gres in ("(null)", "N/A"):
        return 0
    return sum(int(n) for n in _GRES_RE.findall(gres))


def _tres_gpus(tres: str | None) -> int:
    """GPUs in a TRES string such as 'cpu=2,mem=4G,gres/gpu=2' (AllocTRES)."""
    m = re.search(r"gres/gpu=(\d+)", tres or "")
    return int(m.group(1)) if m else 0


def node_from_json(node: Mapping[str, Any]) -> NodeInfo:
    """A NodeInfo from an element of `sinfo --json`'s or slurmrestd's `nodes` list."""
    state = node.get("state")
    flags = node.get("state_flags") or []
    if isinstance(state, list):  # 23.11+: ["IDLE", "DRAIN"]
        words = [str(s).lower() for s in state]
    else:
        words = [str(state or "unknown").lower()] + [str(f).lower() for f in flags]
    alloc_gpus = gpu_count(_text(node.get("gres_used")))
    return NodeInfo(
        name=_text(node.get("name")),
        state="+".join(words),
        cpus=number(node.get("cpus")) or 0,
        alloc_cpus=number(node.get("alloc_cpus")) or 0,
        memory_mb=number(node.get("real_memory")) or 0,
        alloc_memory_mb=number(node.get("alloc_memory")) or 0,
        gpus=gpu_count(_text(node.get("gres"))),
        alloc_gpus=alloc_gpus,
        partitions=tuple(node.get("partitions") or ()),
        reason=_text(node.get("reason")),
    )


def node_from_scontrol(fields: Mapping[str, str]) -> NodeInfo:
    """A NodeInfo from a parsed `scontrol -o show node` line."""
    alloc_gpus = gpu_count(fields.get("GresUsed")) or _tres_gpus(fields.get("AllocTRES"))
    return NodeInfo(
        name=fields.get("NodeName", ""),
        state=fields.get("State", "unknown").lower(),
        cpus=_int(fields.get("CPUTot")),
        alloc_cpus=_int(fields.get("CPUAlloc")),
        memory_mb=_int(fields.get("RealMemory")),
        alloc_memory_mb=_int(fields.get("AllocMem")),
        gpus=gpu_count(fields.get("Gres")),
        alloc_gpus=alloc_gpus,
        partitions=tuple(p for p in fields.get("Partitions", "").split(",") if p),
        reason=fields.get("Reason", ""),
    )


def partition_from_scontrol(fields: Mapping[str, str], nodes: Iterable[NodeInfo]) -> PartitionInfo:
    """A PartitionInfo from a parsed `scontrol -o show partition` line."""
    name = fields.get("PartitionName", "")
    max_time = fields.get("MaxTime", "UNLIMITED")
    return PartitionInfo(
        name=name,
        state=fields.get("State", "UNKNOWN").lower(),
        nodes=tuple(n.name for n in nodes if name in n.partitions),
        default=fields.get("Default") == "YES",
        max_time=None if max_time in ("UNLIMITED", "INFINITE") else _minutes(max_time),
    )


def partition_from_json(part: Mapping[str, Any], nodes: Iterable[NodeInfo]) -> PartitionInfo:
    """A PartitionInfo from slurmrestd's `partitions` list (v0.0.38 flat, newer nested)."""
    name = _text(part.get("name"))
    flags = part.get("flags") or []
    state = part.get("state")
    if state is None and isinstance(part.get("partition"), Mapping):  # v0.0.40+
        state = part["partition"].get("state")
    if isinstance(state, list):
        state = "+".join(str(s) for s in state)
    max_time = part.get("max_time_limit")  # v0.0.38: minutes, -1 when unlimited
    if max_time is None and isinstance(part.get("maximums"), Mapping):
        max_time = part["maximums"].get("time")
    default = "default" in [str(f).lower() for f in flags] or "DEFAULT" in str(
        part.get("partition", {})
    )
    limit = number(max_time)
    return PartitionInfo(
        name=name,
        state=str(state or "up").lower(),
        nodes=tuple(n.name for n in nodes if name in n.partitions),
        default=default,
        max_time=None if limit is None or limit < 0 or limit >= 0xFFFFFFFE else limit,
    )


def cluster(
    name: str, partitions: Iterable[PartitionInfo], nodes: Iterable[NodeInfo]
) -> ClusterInfo:
    return ClusterInfo(cluster=name, partitions=tuple(partitions), nodes=tuple(nodes))


def sbatch_args(spec: JobSpec) -> list[str]:
    """sbatch options for a validated spec, one argv element each (never a shell string).
    The script itself goes to sbatch's standard input; the environment goes in the process
    environment with --export=ALL, so values with commas or quotes stay data."""
    args = [
        "--parsable",
        f"--job-name={spec.name}",
        f"--chdir={spec.workdir}",
        f"--nodes={spec.nodes}",
        f"--ntasks-per-node={spec.ntasks_per_node}",
        "--export=ALL",
        "--requeue" if spec.requeue else "--no-requeue",
    ]
    if spec.partition:
        args.append(f"--partition={spec.partition}")
    if spec.account:
        args.append(f"--account={spec.account}")
    if spec.qos:
        args.append(f"--qos={spec.qos}")
    if spec.gpus_per_node:
        args.append(f"--gpus-per-node={spec.gpus_per_node}")
    if spec.cpus_per_task:
        args.append(f"--cpus-per-task={spec.cpus_per_task}")
    if spec.time_limit:
        args.append(f"--time={spec.time_limit}")
    if spec.comment:
        args.append(f"--comment={spec.comment}")
    if spec.output:
        args.append(f"--output={spec.output}")
    if spec.signal:
        args.append(f"--signal={spec.signal}")
    return args


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


def _minutes(text: str) -> int | None:
    """Slurm's [days-]hours:minutes:seconds (or minutes) as whole minutes."""
    days = 0
    if "-" in text:
        d, _, text = text.partition("-")
        days = int(d) if d.isdigit() else 0
    parts = [int(p) for p in text.split(":") if p.isdigit()]
    if len(parts) == 3:
        h, m, _s = parts
    elif len(parts) == 2 or len(parts) == 1:
        h, m = 0, parts[0]
    else:
        return None
    return days * 1440 + h * 60 + m
