"""Configuration: presets load, unknown keys fail, parallel degrees are checked, sizes are right."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from trainer.config import (
    ConfigError,
    ParallelConfig,
    ParallelDims,
    count_params,
    load_config,
)
from trainer.model import build_model, num_params

PRESETS = ["tiny", "1b", "7b", "70b"]


@pytest.mark.parametrize("name", PRESETS)
def test_it_builds_each_preset_on_meta_within_5_percent_of_its_nominal_size(name: str) -> None:
    cfg = load_config(name)
    model = build_model(cfg.model, device="meta")
    counted = num_params(model)
    assert all(p.device.type == "meta" for p in model.parameters())  # nothing allocated
    assert counted == count_params(cfg.model)["total"]
    assert abs(counted / cfg.model.nominal_params - 1) <= 0.05, (name, counted)


def test_it_rejects_an_unknown_key_naming_it(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  d_modle: 64\n")
    with pytest.raises(ConfigError, match=r"d_modle.*in model"):
        load_config(str(path))


def test_it_rejects_a_wrongly_typed_value() -> None:
    with pytest.raises(ConfigError, match=r"optim\.max_steps must be int"):
        load_config("tiny", ["optim.max_steps=many"])


def test_it_applies_dotted_overrides() -> None:
    cfg = load_config("tiny", ["optim.lr=1e-3", "parallel.engine=ddp", "model.image.slices=4"])
    assert cfg.optim.lr == 1e-3
    assert cfg.parallel.engine == "ddp"
    assert cfg.model.image.slices == 4


def test_it_refuses_a_sequence_too_short_for_the_modalities() -> None:
    with pytest.raises(ConfigError, match="leaves no room for text"):
        load_config("tiny", ["data.seq_len=16", "model.max_seq_len=16"])


def test_parallel_dims_resolve_data_parallel_from_the_world_size() -> None:
    dims = ParallelDims.from_config(ParallelConfig(engine="deepspeed", tensor_parallel=4), 64)
    assert (dims.data, dims.tensor, dims.pipeline) == (16, 4, 1)


def test_parallel_dims_name_every_factor_when_they_do_not_multiply() -> None:
    cfg = ParallelConfig(
        engine="deepspeed", data_parallel=8, tensor_parallel=4, pipeline_parallel=2
    )
    with pytest.raises(ConfigError) as err:
        ParallelDims.from_config(cfg, 32)
    text = str(err.value)
    for part in ("data_parallel (8)", "tensor_parallel (4)", "pipeline_parallel (2)", "32"):
        assert part in text


def test_single_engine_refuses_more_than_one_process() -> None:
    with pytest.raises(ConfigError, match="engine 'single' needs world size 1"):
        ParallelDims.from_config(ParallelConfig(engine="single"), 2)


def test_config_module_imports_without_torch() -> None:
    code = "import sys, trainer.config, trainer.data.shards, trainer.data.sampler; "
    code += "sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_meta_construction_allocates_no_parameter_memory() -> None:
    model = build_model(load_config("70b").model, device="meta")
    assert sum(p.untyped_storage().nbytes() for p in model.parameters() if not p.is_meta) == 0
    assert torch.device("meta") == next(model.parameters()).device


def test_resume_without_a_save_dir_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"needs checkpoint\.save_dir"):
        load_config("tiny", ["checkpoint.resume=latest"])
