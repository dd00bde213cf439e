"""The only module that builds a DeepSpeed config dict.

The default template is the seed plan's ``ds_config_zero3.json`` (appendix B), shipped as
``trainer/presets/ds_config_zero3.json``. :func:`build_ds_config` fills its ``"auto"`` values
from the run's configuration and applies the run's choices (ZeRO stage, precision, offload,
clipping) so the template and the trainer never disagree. Torch-free: the control plane can
render and show the exact JSON a run will use.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from trainer.config import PRESET_DIR, ParallelDims, TrainConfig

DEFAULT_TEMPLATE = PRESET_DIR / "ds_config_zero3.json"
_STAGE3_ONLY = (
    "stage3_max_live_parameters",
    "stage3_max_reuse_distance",
    "stage3_prefetch_bucket_size",
    "stage3_param_persistence_threshold",
    "stage3_gather_16bit_weights_on_model_save",
    "offload_param",
)


def load_template(path: str | Path | None = None) -> dict[str, Any]:
    """The JSON template at ``path`` (default: the seed's ZeRO-3 config)."""
    return json.loads(Path(path or DEFAULT_TEMPLATE).read_text())


def build_ds_config(cfg: TrainConfig, dims: ParallelDims, hidden_size: int = 0) -> dict[str, Any]:
    """DeepSpeed config for ``cfg`` on ``dims``; every ``"auto"`` is resolved.

    The optimizer is not configured here: the trainer passes a client ``torch.optim.AdamW``
    (no JIT-built FusedAdam), except with optimizer offload, where DeepSpeed requires its
    own CPU Adam and this function adds an ``optimizer`` section.
    """
    p, d, o = cfg.parallel, cfg.data, cfg.optim
    ds = copy.deepcopy(load_template(p.ds_config_template or None))
    ds["train_micro_batch_size_per_gpu"] = d.micro_batch_size
    ds["gradient_accumulation_steps"] = d.grad_accum_steps
    ds["train_batch_size"] = dims.global_batch_size(d)
    ds["gradient_clipping"] = o.grad_clip
    bf16 = p.precision == "bf16"
    ds["bf16"] = {**ds.get("bf16", {}), "enabled": bf16}
    ds["fp16"] = {"enabled": False}
    if bf16:
        ds.setdefault("communication_data_type", "bf16")
    else:
        # Reducing fp32 gradients in bf16 would lose the precision fp32 was chosen for.
        ds.pop("communication_data_type", None)
    zero = ds.setdefault("zero_optimization", {})
    zero["stage"] = p.zero_stage
    for key, value in list(zero.items()):
        if value == "auto":
            # DeepSpeed's own rule for reduce_bucket_size is hidden_size**2.
            zero[key] = hidden_size * hidden_size if hidden_size else int(5e8)
    if p.zero_stage != 3:
        for key in _STAGE3_ONLY:
            zero.pop(key, None)
    if p.offload_optimizer:
        zero["offload_optimizer"] = zero.get("offload_optimizer") or {"device": "cpu"}
        zero["offload_optimizer"]["device"] = "cpu"
        ds["optimizer"] = {
            "type": "AdamW",
            "params": {
                "lr": o.lr,
                "betas": [o.beta1, o.beta2],
                "eps": o.eps,
                "weight_decay": o.weight_decay,
            },
        }
    else:
        zero.pop("offload_optimizer", None)
    if p.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    else:
        zero.pop("offload_param", None)
    # DeepSpeed 0.19 rejects any "elasticity" block (the feature was removed), even the
    # seed's {"enabled": false}; dropping a disabled block changes nothing.
    if not ds.get("elasticity", {}).get("enabled", False):
        ds.pop("elasticity", None)
    if p.zero_stage >= 1 and zero.get("reduce_scatter", True) and ds.get("prescale_gradients"):
        # DeepSpeed 0.19 asserts that ZeRO with reduce_scatter post-scales gradients; the
        # seed's "prescale_gradients": true cannot start. Averaging happens either way.
        ds["prescale_gradients"] = False
    if p.zero_stage == 0:
        ds.pop("zero_optimization")
    ds["steps_per_print"] = 1 << 30  # the trainer's logger reports progress, not DeepSpeed's
    return ds
