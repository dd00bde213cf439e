"""The one module that builds DeepSpeed configs, from the seed's ZeRO-3 template."""

from __future__ import annotations

import json
import subprocess
import sys

from trainer.config import ParallelDims, load_config
from trainer.ds_config import build_ds_config, load_template


def test_the_default_template_is_the_seeds_zero3_config() -> None:
    t = load_template()
    assert t["zero_optimization"]["stage"] == 3
    assert t["zero_optimization"]["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert t["bf16"] == {"enabled": True}
    assert t["train_batch_size"] == "auto"


def test_70b_on_64_ranks_resolves_every_auto_value() -> None:
    cfg = load_config("70b")
    dims = ParallelDims.from_config(cfg.parallel, 64)
    ds = build_ds_config(cfg, dims, hidden_size=8192)
    assert "auto" not in json.dumps(ds)
    assert ds["train_micro_batch_size_per_gpu"] == 2
    assert ds["gradient_accumulation_steps"] == 16
    assert ds["train_batch_size"] == 2 * 16 * 64  # the seed's global batch of 2048
    assert ds["bf16"]["enabled"] is True
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["optimizer"]["type"] == "AdamW"  # DeepSpeed's CPU Adam for offload
    assert ds["zero_optimization"]["reduce_bucket_size"] == 8192 * 8192


def test_fp32_stage2_without_offload_drops_stage3_and_bf16_settings() -> None:
    cfg = load_config("tiny", ["parallel.engine=deepspeed", "parallel.zero_stage=2"])
    ds = build_ds_config(cfg, ParallelDims.from_config(cfg.parallel, 2))
    zero = ds["zero_optimization"]
    assert zero["stage"] == 2
    assert not any(k.startswith("stage3_") for k in zero)
    assert "offload_optimizer" not in zero and "optimizer" not in ds
    assert ds["bf16"]["enabled"] is False and "communication_data_type" not in ds


def test_it_removes_the_seed_keys_that_deepspeed_019_refuses() -> None:
    cfg = load_config("tiny", ["parallel.engine=deepspeed"])
    ds = build_ds_config(cfg, ParallelDims.from_config(cfg.parallel, 2))
    assert "elasticity" not in ds  # "Elastic training has been removed"
    assert ds["prescale_gradients"] is False  # asserted off with ZeRO reduce-scatter


def test_cli_prints_the_config_a_run_would_use() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "trainer", "ds-config", "--config", "70b", "--world-size", "64"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(out)["train_batch_size"] == 2048
