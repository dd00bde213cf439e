"""Training configuration as documented dataclasses, loaded from YAML presets.

This module is torch-free on purpose: the control plane imports it to validate a run (unknown
keys, parallel degrees, parameter counts) before it renders an sbatch script.

A preset is a YAML file in ``trainer/presets/`` whose top-level keys are the sections of
:class:`TrainConfig`. Overrides use dotted keys (``optim.lr=1e-4``). Every key must be known:
a typo is an error naming the key and the section, never a silently ignored setting.
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

PRESET_DIR = Path(__file__).parent / "presets"
ENGINES = ("single", "ddp", "fsdp2", "deepspeed")
PRECISIONS = ("fp32", "bf16")
LOADERS = ("process", "thread")


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the offending key and value."""


@dataclass
class ImageEncoderConfig:
    """ViT patch encoder for 2D slices; a multi-slice stack becomes a sequence of slices.

    Each of ``slices`` slices (resampled to ``image_size`` x ``image_size``) is cut into
    ``(image_size // patch_size) ** 2`` patches; every patch becomes one token in the stream.
    """

    enabled: bool = True
    image_size: int = 32  # pixels per side after resampling
    patch_size: int = 16  # pixels per patch side
    slices: int = 2  # slices kept per stack (evenly spaced; fewer are repeated)
    d_model: int = 64
    n_layers: int = 1
    n_heads: int = 4
    ffn_hidden: int = 128

    @property
    def tokens(self) -> int:
        """Number of tokens one image stack contributes to the text stream."""
        return self.slices * (self.image_size // self.patch_size) ** 2


@dataclass
class WaveformEncoderConfig:
    """1D patch encoder for multi-channel ECG/EEG: one token per time patch across channels."""

    enabled: bool = True
    channels: int = 12  # channels kept (missing ones are zero, extra ones dropped)
    samples: int = 256  # samples kept per channel (cropped or zero-padded)
    patch_size: int = 32  # samples per patch
    d_model: int = 64
    n_layers: int = 1
    n_heads: int = 4
    ffn_hidden: int = 128

    @property
    def tokens(self) -> int:
        """Number of tokens one waveform contributes to the text stream."""
        return self.samples // self.patch_size


@dataclass
class ModelConfig:
    """Decoder-only transformer (RoPE, RMSNorm, SwiGLU, grouped-query attention) plus encoders."""

    vocab_size: int = 512
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2  # grouped-query attention: n_heads must be a multiple of n_kv_heads
    ffn_hidden: int = 344  # SwiGLU hidden width
    max_seq_len: int = 64
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    activation_checkpointing: bool = False  # recompute each block in backward to save memory
    init_std: float = 0.02
    nominal_params: float = 0.0  # the size the preset is named for (e.g. 7e9); 0 = unchecked
    image: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    waveform: WaveformEncoderConfig = field(default_factory=WaveformEncoderConfig)


@dataclass
class DataConfig:
    """Where samples come from and how they are batched."""

    path: str = ""  # dataset version folder (shards + index/ + manifest.json)
    tokenizer: str = ""  # tokenizer JSON; empty = <path>/tokenizer.json, else byte-level
    seq_len: int = 64  # tokens per sequence, image/waveform tokens and markers included
    micro_batch_size: int = 4  # sequences per rank per forward pass
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    seed: int = 1234  # sampler shuffle seed (same on every rank)
    eval_samples: int = 0  # samples held out (the first N of the dataset order) for evaluation
    cache_dir: str = ""  # node-local cache (NVMe); empty = read shards in place
    prefetch_shards: int = 2  # shards copied ahead into cache_dir by the background prefetcher
    loader: str = "process"  # process | thread: where batches are read and collated


@dataclass
class OptimConfig:
    """AdamW with linear warmup then cosine decay to ``min_lr``."""

    lr: float = 3e-3
    min_lr: float = 3e-4
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    warmup_steps: int = 5
    max_steps: int = 100
    grad_clip: float = 1.0  # max global gradient L2 norm; 0 disables clipping


@dataclass
class ParallelConfig:
    """Which engine runs the step and how ranks are split. Validated by :class:`ParallelDims`."""

    engine: str = "single"  # single | ddp | fsdp2 | deepspeed
    data_parallel: int = -1  # -1 = whatever the world size leaves after tp and pp
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    zero_stage: int = 3  # DeepSpeed ZeRO stage 0-3 (engine deepspeed only)
    precision: str = "fp32"  # fp32 | bf16
    offload_optimizer: bool = False  # DeepSpeed ZeRO CPU offload of optimizer state
    offload_params: bool = False  # DeepSpeed ZeRO-3 CPU offload of parameters
    ds_config_template: str = ""  # JSON template; empty = trainer/presets/ds_config_zero3.json


@dataclass
class CheckpointConfig:
    """When and where checkpoints are written; see trainer/checkpoint.py for the format."""

    save_dir: str = ""
    interval: int = 50  # optimizer steps between checkpoints; 0 = only at the end / on signal
    keep_last: int = 3  # newest verified checkpoints kept; 0 = keep all
    resume: str = ""  # "" = fresh start, "latest", or a path to a step-<n> folder


@dataclass
class TrainConfig:
    """Everything one training run needs; stored whole in every checkpoint manifest."""

    name: str = "run"
    seed: int = 0  # model init seed
    log_interval: int = 1
    eval_interval: int = 0  # steps between evaluations; 0 = never
    eval_batches: int = 2
    metrics_port: int = 0  # Prometheus /metrics port on rank 0; 0 = no HTTP endpoint
    metrics_jsonl: str = ""  # JSONL metrics log; empty = <save_dir>/metrics.jsonl
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field (JSON-serialisable), for manifests and metrics."""
        return asdict(self)

    def to_json(self) -> str:
        """Canonical JSON (sorted keys) of the whole configuration."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def validate(self) -> None:
        """Check values that dataclass types cannot; raises ConfigError naming the value."""
        m, d, o, p = self.model, self.data, self.optim, self.parallel
        if m.n_heads % m.n_kv_heads:
            raise ConfigError(
                f"model.n_heads ({m.n_heads}) must be a multiple of "
                f"model.n_kv_heads ({m.n_kv_heads})"
            )
        if m.d_model % m.n_heads:
            raise ConfigError(
                f"model.d_model ({m.d_model}) must be divisible by model.n_heads ({m.n_heads})"
            )
        if (m.d_model // m.n_heads) % 2:
            raise ConfigError(f"head dim {m.d_model // m.n_heads} must be even for RoPE")
        for name, enc in (("image", m.image), ("waveform", m.waveform)):
            if enc.d_model % enc.n_heads:
                raise ConfigError(
                    f"model.{name}.d_model ({enc.d_model}) must be divisible by "
                    f"model.{name}.n_heads ({enc.n_heads})"
                )
        if m.image.image_size % m.image.patch_size:
            raise ConfigError(
                f"model.image.image_size ({m.image.image_size}) must be a multiple of "
                f"model.image.patch_size ({m.image.patch_size})"
            )
        if m.waveform.samples % m.waveform.patch_size:
            raise ConfigError(
                f"model.waveform.samples ({m.waveform.samples}) must be a multiple of "
                f"model.waveform.patch_size ({m.waveform.patch_size})"
            )
        if d.seq_len > m.max_seq_len:
            raise ConfigError(
                f"data.seq_len ({d.seq_len}) exceeds model.max_seq_len ({m.max_seq_len})"
            )
        # bos + markers + encoder tokens + at least one text token and eos must fit.
        fixed = (
            3
            + (m.image.tokens + 2) * m.image.enabled
            + (m.waveform.tokens + 2) * (m.waveform.enabled)
        )
        if d.seq_len < fixed:
            raise ConfigError(
                f"data.seq_len ({d.seq_len}) leaves no room for text after {fixed} "
                "image/waveform/marker tokens"
            )
        for key, value in (
            ("data.micro_batch_size", d.micro_batch_size),
            ("data.grad_accum_steps", d.grad_accum_steps),
            ("optim.max_steps", o.max_steps),
        ):
            if value < 1:
                raise ConfigError(f"{key} must be >= 1, got {value}")
        if o.warmup_steps < 0 or o.min_lr > o.lr:
            raise ConfigError(
                f"optim.warmup_steps ({o.warmup_steps}) must be >= 0 and optim.min_lr "
                f"({o.min_lr}) <= optim.lr ({o.lr})"
            )
        if self.data.loader not in LOADERS:
            raise ConfigError(f"data.loader {self.data.loader!r} is not one of {LOADERS}")
        if p.engine not in ENGINES:
            raise ConfigError(f"parallel.engine {p.engine!r} is not one of {ENGINES}")
        if p.precision not in PRECISIONS:
            raise ConfigError(f"parallel.precision {p.precision!r} is not one of {PRECISIONS}")
        if p.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"parallel.zero_stage must be 0-3, got {p.zero_stage}")
        if (p.offload_optimizer or p.offload_params) and p.engine != "deepspeed":
            raise ConfigError(f"parallel.offload_* needs engine deepspeed, got engine {p.engine!r}")
        if p.offload_params and p.zero_stage != 3:
            raise ConfigError(
                f"parallel.offload_params needs zero_stage 3, got zero_stage {p.zero_stage}"
            )
        if self.checkpoint.resume and not self.checkpoint.save_dir:
            raise ConfigError(
                f"checkpoint.resume ({self.checkpoint.resume!r}) needs checkpoint.save_dir"
            )
        if self.checkpoint.keep_last < 0:
            raise ConfigError(f"checkpoint.keep_last must be >= 0, got {self.checkpoint.keep_last}")


@dataclass(frozen=True)
class ParallelDims:
    """Validated parallel degrees: ``data * tensor * pipeline == world_size``.

    The engines apply parallelism in a fixed order: (1) activation checkpointing on each block,
    (2) tensor parallel, (3) pipeline parallel, (4) data parallel / sharding (DDP, FSDP2 or
    ZeRO). Only ``tensor = pipeline = 1`` is implemented today; larger degrees validate here
    (so a plan can be checked) but are refused by the engines with a clear error.
    """

    world_size: int
    data: int
    tensor: int
    pipeline: int
    engine: str

    @classmethod
    def from_config(cls, parallel: ParallelConfig, world_size: int) -> ParallelDims:
        """Resolve ``data_parallel = -1`` and check that the degrees multiply to the world size."""
        if world_size < 1:
            raise ConfigError(f"world size must be >= 1, got {world_size}")
        tp, pp, dp = parallel.tensor_parallel, parallel.pipeline_parallel, parallel.data_parallel
        for key, value in (("tensor_parallel", tp), ("pipeline_parallel", pp)):
            if value < 1:
                raise ConfigError(f"parallel.{key} must be >= 1, got {value}")
        if dp == -1:
            if world_size % (tp * pp):
                raise ConfigError(
                    f"world size {world_size} is not divisible by tensor_parallel ({tp}) x "
                    f"pipeline_parallel ({pp}) = {tp * pp}"
                )
            dp = world_size // (tp * pp)
        if dp < 1 or dp * tp * pp != world_size:
            raise ConfigError(
                f"data_parallel ({dp}) x tensor_parallel ({tp}) x pipeline_parallel ({pp}) = "
                f"{dp * tp * pp}, but the world size is {world_size}"
            )
        if parallel.engine == "single" and world_size != 1:
            raise ConfigError(f"engine 'single' needs world size 1, got {world_size}")
        return cls(world_size=world_size, data=dp, tensor=tp, pipeline=pp, engine=parallel.engine)

    def global_batch_size(self, data: DataConfig) -> int:
        """Sequences per optimizer step across all data-parallel ranks."""
        return data.micro_batch_size * data.grad_accum_steps * self.data


# ----------------------------------------------------------------------------- loading


def _build(cls: type, raw: Any, where: str) -> Any:
    """Build dataclass ``cls`` from a mapping, recursing into nested dataclasses; strict keys."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in {where or 'config'}; known keys: {sorted(known)}"
        )
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        hint = hints[key]
        path = f"{where}.{key}" if where else key
        if is_dataclass(hint):
            kwargs[key] = _build(hint, value, path)  # type: ignore[arg-type]
        else:
            kwargs[key] = _coerce(hint, value, path)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    """Check a scalar against its annotation; ints are accepted where floats are expected."""
    if isinstance(hint, types.UnionType):
        hint = next(h for h in typing.get_args(hint) if h is not type(None))
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        # YAML reads "3e-4" without a dot as a string; accept it as a float.
        try:
            return float(value)
        except ValueError:
            pass
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if hint in (int, str, bool) and (
        not isinstance(value, hint) or (hint is int and isinstance(value, bool))
    ):
        raise ConfigError(f"{where} must be {hint.__name__}, got {value!r}")
    if hint is float and not isinstance(value, float):
        raise ConfigError(f"{where} must be a number, got {value!r}")
    return value


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _parse_override(text: str) -> dict[str, Any]:
    """``a.b.c=value`` -> ``{"a": {"b": {"c": value}}}``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    dotted, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw else ""
    out: dict[str, Any] = {}
    node = out
    parts = dotted.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def preset_path(name: str) -> Path:
    """Path of a named preset (``tiny``) or a YAML file path passed through."""
    candidate = Path(name)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        return candidate
    path = PRESET_DIR / f"{name}.yaml"
    if not path.exists():
        names = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
        raise ConfigError(f"no preset {name!r}; presets: {names}")
    return path


def config_from_dict(raw: dict[str, Any]) -> TrainConfig:
    """Build and validate a TrainConfig from a nested dict (e.g. a checkpoint's manifest)."""
    cfg = _build(TrainConfig, raw, "")
    cfg.validate()
    return cfg


def load_config(name: str, overrides: list[str] | None = None) -> TrainConfig:
    """Load a preset by name or path, apply ``section.key=value`` overrides, and validate."""
    path = preset_path(name)
    raw = yaml.safe_load(path.read_text()) or {}
    for text in overrides or []:
        raw = _merge(raw, _parse_override(text))
    try:
        return config_from_dict(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def replace(cfg: TrainConfig, **changes: Any) -> TrainConfig:
    """Validated copy of ``cfg``: ``replace(cfg, optim={"lr": 1e-4}, metrics_port=0)``."""
    raw = _merge(cfg.to_dict(), changes)
    return config_from_dict(raw)


# ----------------------------------------------------------------------------- sizes


def _block_params(d: int, n_heads: int, n_kv_heads: int, ffn: int) -> int:
    head_dim = d // n_heads
    attn = d * d * 2 + 2 * d * n_kv_heads * head_dim  # wq, wo + wk, wv
    mlp = 3 * d * ffn  # SwiGLU: w1, w3 (gate, up) and w2 (down)
    return attn + mlp + 2 * d  # two RMSNorm weights


def count_params(model: ModelConfig) -> dict[str, int]:
    """Analytic parameter count per component (``total`` included), matching trainer.model."""
    d, v = model.d_model, model.vocab_size
    text = v * d  # token embedding
    text += model.n_layers * _block_params(d, model.n_heads, model.n_kv_heads, model.ffn_hidden)
    text += d  # final norm
    text += 0 if model.tie_embeddings else v * d  # output head
    out = {"text": text, "image": 0, "waveform": 0}
    img = model.image
    if img.enabled:
        de = img.d_model
        per_slice = (img.image_size // img.patch_size) ** 2
        n = img.patch_size**2 * de  # patch embedding (linear, no bias)
        n += per_slice * de + img.slices * de  # patch and slice position embeddings
        n += img.n_layers * _block_params(de, img.n_heads, img.n_heads, img.ffn_hidden)
        n += de + de * d  # final norm + projection into the text width
        out["image"] = n
    wav = model.waveform
    if wav.enabled:
        de = wav.d_model
        n = wav.channels * wav.patch_size * de + wav.tokens * de
        n += wav.n_layers * _block_params(de, wav.n_heads, wav.n_heads, wav.ffn_hidden)
        n += de + de * d
        out["waveform"] = n
    out["total"] = out["text"] + out["image"] + out["waveform"]
    return out


def flops_per_token(model: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per text token (6N plus attention), the usual MFU numerator."""
    n = count_params(model)["text"] - model.vocab_size * model.d_model  # embedding is a lookup
    attn = 12 * model.n_layers * model.d_model * seq_len
    return 6.0 * n + attn


def human(n: float) -> str:
    """12_345_678 -> '12.35M'."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


__all__ = [
    "ENGINES",
    "CheckpointConfig",
    "ConfigError",
    "DataConfig",
    "ImageEncoderConfig",
    "ModelConfig",
    "OptimConfig",
    "ParallelConfig",
    "ParallelDims",
    "TrainConfig",
    "WaveformEncoderConfig",
    "config_from_dict",
    "count_params",
    "load_config",
]
