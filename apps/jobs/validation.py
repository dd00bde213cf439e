"""Checks a run specification before anything is rendered or submitted (torch-free).

``plan_run(spec, shard_count=...)`` returns a :class:`RunPlan`: the errors that refuse the
launch (by field), the warnings shown next to the memory estimate, and the derived values the
batch script needs (gradient accumulation, world size, trainer overrides). It uses only
``trainer.config`` (dataclasses + YAML, no torch), so the web process can run it on every
keystroke of the launch form.

Memory per GPU is DeepSpeed's own estimate of *model states* (parameters, gradients and
optimizer states; activations are not included), from the formulas of
``deepspeed.runtime.zero`` 0.19 (notes/torch-deepspeed-cpu.md section 7), in GiB:

    P = total parameters, L = largest layer, G = total GPUs
    ZeRO-3:  4L + 18P/G     offload optimizer: 4L + 2P/G
    ZeRO-2:  2P + 18P/G     offload optimizer: 2P
    ZeRO-1:  4P + 12P/G     (fp16 weights and gradients whole, fp32 optimizer sharded)
    ZeRO-0:  18P            (plain data parallel: everything replicated)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from typing import Any

import yaml
from django.conf import settings
from django.utils.translation import gettext as _

from trainer.config import ENGINES, PRESET_DIR, ConfigError, count_params, load_config

GIB = 1024**3
# Preset names become a command-line argument; only plain names of files in trainer/presets.
PRESET_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
# Paths that may appear in the batch script: absolute, safe characters, no '..' component.
SAFE_PATH_RE = re.compile(r"/[A-Za-z0-9._/+-]{0,4095}")


def available_presets() -> list[str]:
    """The trainer's presets (``trainer/presets/*.yaml``) with safe names, sorted."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml") if PRESET_RE.fullmatch(p.stem))


def is_safe_path(value: str) -> bool:
    """True for an absolute path of plain characters without a '..' component."""
    return (
        isinstance(value, str)
        and SAFE_PATH_RE.fullmatch(value) is not None
        and ".." not in value.split("/")
    )


def gpu_memory_limit_gib() -> float:
    """Memory of one GPU on this site's cluster (seed: H200 class, but warn at 80 GB)."""
    return float(getattr(settings, "JOBS_GPU_MEMORY_GIB", 80))


@dataclass(frozen=True)
class RunSpec:
    """What the operator asks for, as plain data (form, API and tests build it)."""

    name: str
    preset: str
    dataset_version_id: int
    nodes: int = 1
    gpus_per_node: int = 8
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    data_parallel: int = 8
    zero_stage: int = 3
    offload_optimizer: bool = False
    engine: str = "deepspeed"
    micro_batch_size: int = 1
    global_batch_size: int = 8
    seq_len: int = 2048
    max_steps: int | None = None
    loader_workers: int = 1
    time_limit_minutes: int = 24 * 60
    partition: str = ""
    account: str = ""
    qos: str = ""
    launcher: str = "direct"
    resume_policy: str = "latest"
    max_auto_requeues: int = 3
    scheduler: str = ""
    tokenizer: str = ""  # a trained tokenizer JSON the nodes can read; "" = the dataset's own

    @property
    def world_size(self) -> int:
        return self.nodes * max(self.gpus_per_node, 1)


def cpu_trial(name: str, dataset_version_id: int, **changes: Any) -> RunSpec:
    """A trial run: the tiny preset as one CPU process on one node (engine single, micro
    batch 2, sequence 64, 3 steps), for the demo, CI and a site's first smoke test;
    ``changes`` override any field."""
    spec = RunSpec(
        name=name,
        preset="tiny",
        dataset_version_id=dataset_version_id,
        nodes=1,
        gpus_per_node=0,
        data_parallel=1,
        engine="single",
        micro_batch_size=2,
        global_batch_size=2,
        seq_len=64,
        max_steps=3,
        time_limit_minutes=10,
    )
    return replace(spec, **changes)


@dataclass
class RunPlan:
    """The verdict on a spec: errors by field (empty = may launch), warnings, estimates."""

    errors: dict[str, list[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    world_size: int = 0
    grad_accum_steps: int = 0
    params_total: int = 0
    largest_layer: int = 0
    gpu_gib: float | None = None
    cpu_gib_per_node: float | None = None
    n_heads: int = 0
    n_layers: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors

    def error(self, key: str, message: str) -> None:
        self.errors.setdefault(key, []).append(message)

    def as_dict(self) -> dict[str, object]:
        """JSON for the run row (what the operator saw when launching)."""
        return {
            "world_size": self.world_size,
            "grad_accum_steps": self.grad_accum_steps,
            "params_total": self.params_total,
            "largest_layer": self.largest_layer,
            "gpu_gib": self.gpu_gib,
            "cpu_gib_per_node": self.cpu_gib_per_node,
            "warnings": [str(w) for w in self.warnings],
        }


def model_states_bytes(
    params: int, largest_layer: int, *, zero_stage: int, gpus: int, nodes: int, offload: bool
) -> tuple[float, float]:
    """(bytes per GPU, bytes of host RAM per node) for model states, DeepSpeed's formulas."""
    p, lay, g = float(params), float(largest_layer), float(max(gpus, 1))
    per_node = max(gpus // max(nodes, 1), 1)
    buffer = 1.5  # DeepSpeed's additional_buffer_factor
    if zero_stage == 3:
        gpu = 4 * lay + (2 * p / g if offload else 18 * p / g)
        cpu = buffer * 16 * p / nodes if offload else buffer * 4 * lay * per_node
    elif zero_stage == 2:
        gpu = 2 * p if offload else 2 * p + 18 * p / g
        cpu = buffer * p * max(4 * g, 16) if offload else buffer * 4 * p * per_node
    elif zero_stage == 1:
        gpu = 4 * p + 12 * p / g
        cpu = buffer * 4 * p * per_node
    else:
        gpu = 18 * p
        cpu = buffer * 4 * p * per_node
    return gpu, cpu


def trainer_overrides(spec: RunSpec, grad_accum: int) -> list[str]:
    """``section.key=value`` overrides for the trainer's ``--set``; values are integers,
    booleans or validated names only, so they are inert on any command line."""
    out = [
        f"name={spec.name}",
        f"data.seq_len={spec.seq_len}",
        f"data.micro_batch_size={spec.micro_batch_size}",
        f"data.grad_accum_steps={grad_accum}",
        f"parallel.tensor_parallel={spec.tensor_parallel}",
        f"parallel.pipeline_parallel={spec.pipeline_parallel}",
        f"parallel.data_parallel={spec.data_parallel}",
    ]
    if spec.engine == "deepspeed":
        out.append(f"parallel.offload_optimizer={'true' if spec.offload_optimizer else 'false'}")
    if spec.tokenizer:
        out.append(f"data.tokenizer={spec.tokenizer}")  # a checked absolute path (plan_run)
    return out


def _check_tokenizer(plan: RunPlan, path: str, vocab_size: int) -> None:
    """The tokenizer file, where the control plane can see it: readable, and no more ids than
    the preset embeds. Where it cannot, a warning (the nodes may still see it)."""
    from trainer.data.tokenizer import Tokenizer

    if not os.path.isfile(path):
        plan.warnings.append(
            _(
                "The tokenizer %(path)s is not visible from the control plane; the job stops "
                "at its start if the nodes cannot read it either."
            )
            % {"path": path}
        )
        return
    try:
        tokenizer = Tokenizer.load(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        plan.error(
            "tokenizer",
            _("%(path)s is not a trainer tokenizer: %(why)s")
            % {"path": path, "why": type(exc).__name__},
        )
        return
    if tokenizer.vocab_size > vocab_size:
        plan.error(
            "tokenizer",
            _("the tokenizer has %(ids)d ids but the preset embeds only %(vocab)d")
            % {"ids": tokenizer.vocab_size, "vocab": vocab_size},
        )


def plan_run(
    spec: RunSpec,
    *,
    shard_count: int | None = None,
    dataset_ready: bool = True,
    dataset_root: str = "",
) -> RunPlan:
    """Every check at once, so the form shows all problems together (never just the first)."""
    from apps.jobs.models import RUN_NAME_RE, SLURM_IDENT_RE

    plan = RunPlan(world_size=spec.world_size)
    if not isinstance(spec.name, str) or not RUN_NAME_RE.fullmatch(spec.name):
        plan.error(
            "name",
            _("%(value)r is not a run name: use 1-48 of a-z, 0-9, '-' and '_'")
            % {"value": spec.name},
        )
    for key in ("partition", "account", "qos"):
        value = getattr(spec, key)
        if value and (not isinstance(value, str) or not SLURM_IDENT_RE.fullmatch(value)):
            plan.error(key, _("%(value)r is not a plain identifier") % {"value": value})
    if spec.tokenizer and not is_safe_path(spec.tokenizer):
        plan.error(
            "tokenizer",
            _("%(value)r is not an absolute path of plain characters") % {"value": spec.tokenizer},
        )
    if not dataset_ready:
        plan.error("dataset_version", _("only ready (built and verified) dataset versions"))
    if dataset_root and not is_safe_path(dataset_root):
        plan.error(
            "dataset_version",
            _("the dataset folder %(path)r has characters a batch script must not carry")
            % {"path": dataset_root},
        )
    if spec.engine not in ENGINES:
        plan.error(
            "engine",
            _("%(value)r is not one of %(choices)s")
            % {"value": spec.engine, "choices": ", ".join(ENGINES)},
        )
    if spec.launcher not in ("direct", "torchrun"):
        plan.error("launcher", _("unknown launcher %(value)r") % {"value": spec.launcher})

    # --- layout -----------------------------------------------------------------------------
    tp, pp, dp, world = (
        spec.tensor_parallel,
        spec.pipeline_parallel,
        spec.data_parallel,
        plan.world_size,
    )
    if tp * pp * dp != world:
        plan.error(
            "data_parallel",
            _(
                "TP (%(tp)d) x PP (%(pp)d) x DP (%(dp)d) = %(product)d, but %(nodes)d nodes x "
                "%(gpus)d GPUs = %(world)d ranks"
            )
            % {
                "tp": tp,
                "pp": pp,
                "dp": dp,
                "product": tp * pp * dp,
                "nodes": spec.nodes,
                "gpus": max(spec.gpus_per_node, 1),
                "world": world,
            },
        )
    if (tp > 1 or pp > 1) and spec.engine != "deepspeed":
        plan.error("tensor_parallel", _("tensor/pipeline parallel degrees need engine deepspeed"))
    if tp > 1 or pp > 1:
        # trainer/config.py validates TP/PP > 1 but its engines refuse them (docs/trainer.md).
        plan.error(
            "tensor_parallel",
            _("the trainer does not implement TP/PP > 1 yet; shard with ZeRO-3 over DP instead"),
        )
    if spec.engine == "single" and world != 1:
        plan.error("engine", _("engine 'single' runs one process; choose ddp, fsdp2 or deepspeed"))
    if spec.micro_batch_size < 1 or dp < 1:
        plan.error("micro_batch_size", _("micro batch and DP must be at least 1"))
    elif spec.global_batch_size % (spec.micro_batch_size * dp):
        plan.error(
            "global_batch_size",
            _(
                "global batch %(global)d is not micro batch %(micro)d x DP %(dp)d x a whole "
                "number of accumulation steps"
            )
            % {"global": spec.global_batch_size, "micro": spec.micro_batch_size, "dp": dp},
        )
    else:
        plan.grad_accum_steps = spec.global_batch_size // (spec.micro_batch_size * dp)

    # --- data loading: the known WebDataset hang ---------------------------------------------
    readers = dp * spec.loader_workers
    if shard_count is not None and readers > shard_count:
        plan.error(
            "loader_workers",
            _(
                "DP ranks x loader workers = %(readers)d readers but the dataset has only "
                "%(shards)d shards: readers without a shard wait forever (WebDataset hang)"
            )
            % {"readers": readers, "shards": shard_count},
        )

    # --- the model: preset, shape and memory --------------------------------------------------
    if not PRESET_RE.fullmatch(spec.preset or "") or spec.preset not in available_presets():
        plan.error(
            "preset",
            _("%(value)r is not a preset; choose one of %(choices)s")
            % {"value": spec.preset, "choices": ", ".join(available_presets())},
        )
        return plan
    # A refused name must not reach the YAML override parser; the error is already recorded.
    named = spec if "name" not in plan.errors else replace(spec, name="run")
    if "tokenizer" in plan.errors:
        named = replace(named, tokenizer="")
    overrides = trainer_overrides(named, max(plan.grad_accum_steps, 1))
    engine = spec.engine if spec.engine in ENGINES else "single"
    try:
        cfg = load_config(spec.preset, [*overrides, f"parallel.engine={engine}"])
    except (ConfigError, yaml.YAMLError) as exc:
        plan.error("preset", str(exc).split(": ", 1)[-1])
        return plan
    m = cfg.model
    if named.tokenizer:
        _check_tokenizer(plan, named.tokenizer, m.vocab_size)
    plan.n_heads, plan.n_layers = m.n_heads, m.n_layers
    if m.n_heads % tp:
        plan.error(
            "tensor_parallel",
            _("%(heads)d attention heads are not divisible by TP %(tp)d")
            % {"heads": m.n_heads, "tp": tp},
        )
    if m.n_layers % pp:
        plan.error(
            "pipeline_parallel",
            _("%(layers)d layers are not divisible by PP %(pp)d")
            % {"layers": m.n_layers, "pp": pp},
        )
    plan.params_total = count_params(m)["total"]
    plan.largest_layer = max(m.vocab_size * m.d_model, m.d_model * m.ffn_hidden)
    stage = spec.zero_stage if spec.engine == "deepspeed" else (3 if spec.engine == "fsdp2" else 0)
    gpu_b, cpu_b = model_states_bytes(
        plan.params_total,
        plan.largest_layer,
        zero_stage=stage,
        gpus=world,
        nodes=spec.nodes,
        offload=spec.offload_optimizer and spec.engine == "deepspeed",
    )
    plan.gpu_gib = round(gpu_b / GIB, 2)
    plan.cpu_gib_per_node = round(cpu_b / GIB, 2)
    limit = gpu_memory_limit_gib()
    if spec.gpus_per_node and plan.gpu_gib > limit:
        plan.warnings.append(
            _(
                "Model states alone need about %(need).1f GiB per GPU, more than the "
                "%(limit).0f GiB a GPU has: this run will run out of memory. Use ZeRO-3, "
                "offload the optimizer, or add GPUs."
            )
            % {"need": plan.gpu_gib, "limit": limit}
        )
    elif spec.gpus_per_node and plan.gpu_gib > 0.8 * limit:
        plan.warnings.append(
            _(
                "Model states need about %(need).1f GiB per GPU of %(limit).0f GiB; activations "
                "come on top and may not fit."
            )
            % {"need": plan.gpu_gib, "limit": limit}
        )
    return plan
