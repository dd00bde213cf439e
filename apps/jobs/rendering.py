"""The batch script of an attempt, and the scheduler job spec that carries it.

The template (``deploy/slurm/templates/train_job.sh``, or the site's copy named by
``JOBS_SCRIPT_TEMPLATE_DIR``) is rendered with Django's template engine with autoescaping
off, because its output is shell, not HTML. Nothing reaches it raw: names, identifiers and
paths were checked against strict patterns by ``validation.plan_run`` and are passed through
``shlex.quote`` all the same; numbers are ints. The script stays dumb (STYLE.md 21):
directives, environment and one launch line.
"""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.template import Context, Engine

from apps.jobs.schedulers import JobSpec
from apps.jobs.validation import RunSpec, is_safe_path, trainer_overrides

_ENV_NAME_RE = re.compile(r"[A-Z_][A-Z0-9_]{0,63}")
CLUSTER_SCHEDULERS = frozenset({"slurm", "slurmrestd", "pyslurm"})
TEMPLATE_NAME = "train_job.sh"


class RenderError(ValueError):
    """A value that must not reach a batch script (names the value and the reason)."""


def _base_dir() -> Path:
    return Path(settings.BASE_DIR)


def runs_root() -> Path:
    """Where each run gets its folder (logs, checkpoints); shared with the cluster nodes."""
    return Path(getattr(settings, "JOBS_RUNS_ROOT", Path(settings.VAR_DIR) / "runs"))


def run_dir(run_name: str, run_id: int) -> str:
    return str(runs_root() / f"{run_name}-{run_id}")


def _engine() -> Engine:
    dirs = [
        str(p)
        for p in (
            getattr(settings, "JOBS_SCRIPT_TEMPLATE_DIR", None),
            _base_dir() / "deploy" / "slurm" / "templates",
        )
        if p
    ]
    return Engine(dirs=dirs, autoescape=False)


def _q(value: str, what: str) -> str:
    """Shell-quote a value that was validated already; refuse anything with control chars."""
    if not isinstance(value, str) or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise RenderError(f"{what}: {value!r} holds control characters")
    return shlex.quote(value)


def _path(value: str, what: str) -> str:
    if not is_safe_path(value):
        raise RenderError(f"{what}: {value!r} is not an absolute path of plain characters")
    return shlex.quote(value)


def _time_limit(minutes: int) -> str:
    days, rest = divmod(int(minutes), 24 * 60)
    hours, mins = divmod(rest, 60)
    return f"{days}-{hours:02d}:{mins:02d}:00" if days else f"{hours:02d}:{mins:02d}:00"


def nccl_env() -> list[str]:
    """``NAME=value`` lines for the NCCL section, from JOBS_NCCL_ENV (site setting)."""
    default = {"NCCL_DEBUG": "WARN", "NCCL_IB_TIMEOUT": "23", "NCCL_IB_HCA": "mlx5"}
    env = getattr(settings, "JOBS_NCCL_ENV", default)
    lines = []
    for name, value in sorted(env.items()):
        if not _ENV_NAME_RE.fullmatch(name) or not name.startswith(("NCCL_", "TORCH_NCCL_")):
            raise RenderError(f"JOBS_NCCL_ENV: {name!r} is not an NCCL variable name")
        lines.append(f"{name}={_q(str(value), name)}")
    return lines


def python_executable() -> str:
    """The interpreter of the training environment on the nodes (JOBS_PYTHON)."""
    return str(getattr(settings, "JOBS_PYTHON", sys.executable))


def metrics_port() -> int:
    return int(getattr(settings, "JOBS_METRICS_PORT", 8085))


@dataclass(frozen=True)
class Rendered:
    """An attempt's script and the paths it writes to."""

    script: str
    workdir: str
    save_dir: str
    output: str


def render(
    spec: RunSpec,
    *,
    run_id: int,
    attempt: int,
    dataset_root: str,
    grad_accum_steps: int,
    scheduler: str,
) -> Rendered:
    """The batch script for attempt ``attempt`` of run ``run_id`` (0 for a preview)."""
    from apps.jobs.models import RUN_NAME_RE

    if not isinstance(spec.name, str) or not RUN_NAME_RE.fullmatch(spec.name):
        raise RenderError(f"run name: {spec.name!r} is not a plain run name")
    workdir = run_dir(spec.name, run_id)
    if not is_safe_path(workdir):
        raise RenderError(f"run folder: {workdir!r} is not an absolute path of plain characters")
    if spec.tokenizer:
        _path(spec.tokenizer, "tokenizer")
    save_dir = f"{workdir}/checkpoints"
    output = f"{workdir}/logs/%x-%j.out"
    on_cluster = scheduler in CLUSTER_SCHEDULERS
    procs_per_node = max(spec.gpus_per_node, 1)
    ntasks = 1 if spec.launcher == "torchrun" or not on_cluster else procs_per_node
    cache_root = getattr(settings, "JOBS_CACHE_ROOT", "")
    cpus_per_gpu = int(getattr(settings, "JOBS_CPUS_PER_GPU", 0))
    overrides = trainer_overrides(spec, grad_accum_steps)
    context = {
        "run_name": spec.name,
        "run_id": int(run_id),
        "attempt": int(attempt),
        "job_name": job_name(spec.name, run_id),
        "nodes": int(spec.nodes),
        "ntasks_per_node": int(ntasks),
        "gpus_per_node": int(spec.gpus_per_node),
        "cpus_per_task": cpus_per_gpu * (procs_per_node // ntasks) if cpus_per_gpu else 0,
        "procs_per_node": int(procs_per_node),
        "time_limit": _time_limit(spec.time_limit_minutes),
        "partition": spec.partition,
        "account": spec.account,
        "qos": spec.qos,
        "output": output,  # a directive: read by the scheduler, never by the shell
        "nccl_env": nccl_env(),
        "pythonpath": _path(str(_base_dir()), "PYTHONPATH"),
        "python": _path(python_executable(), "JOBS_PYTHON"),
        "launcher": spec.launcher,
        "on_cluster": on_cluster,
        "preset": _q(spec.preset, "preset"),
        "engine": _q(spec.engine, "engine"),
        "zero_stage": int(spec.zero_stage),
        "data_path": _path(dataset_root, "dataset folder"),
        "save_dir": _path(save_dir, "checkpoint folder"),
        "resume": spec.resume_policy == "latest",
        "cache_root": _path(cache_root, "JOBS_CACHE_ROOT") if cache_root else "",
        "max_steps": int(spec.max_steps or 0),
        "overrides": [_q(item, "override") for item in overrides],
        "metrics_port": metrics_port(),
    }
    for key in ("partition", "account", "qos"):
        # #SBATCH lines are read by the scheduler, not the shell; still only plain words.
        if context[key] and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", context[key]):
            raise RenderError(f"{key}: {context[key]!r} is not a plain identifier")
    script = _engine().get_template(TEMPLATE_NAME).render(Context(context, autoescape=False))
    return Rendered(script=script, workdir=workdir, save_dir=save_dir, output=output)


def job_name(run_name: str, run_id: int) -> str:
    return f"medctl-{run_name}-{run_id}"


def job_spec(
    spec: RunSpec,
    rendered: Rendered,
    *,
    run_id: int,
    comment: str,
    env: dict[str, str] | None = None,
) -> JobSpec:
    """What the scheduler adapter receives: the stored script plus the same resources as
    data (argv or JSON, never shell), and the comment that carries the idempotency token."""
    on_cluster = spec.scheduler in CLUSTER_SCHEDULERS
    procs = max(spec.gpus_per_node, 1)
    return JobSpec(
        script=rendered.script,
        name=job_name(spec.name, run_id),
        workdir=rendered.workdir,
        partition=spec.partition or None,
        account=spec.account or None,
        qos=spec.qos or None,
        nodes=spec.nodes,
        ntasks_per_node=1 if spec.launcher == "torchrun" or not on_cluster else procs,
        gpus_per_node=spec.gpus_per_node,
        time_limit=spec.time_limit_minutes,
        env=dict(env or {}),
        comment=comment,
        output=rendered.output,
        signal="USR1@120",
        requeue=True,
    )
