"""The planner: layout, batch, memory and shard rules of a run spec (torch-free)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from apps.jobs.validation import RunSpec, model_states_bytes, plan_run

GIB = 1024**3


def spec(**kw):
    base = dict(
        name="r1",
        preset="tiny",
        dataset_version_id=1,
        nodes=1,
        gpus_per_node=8,
        data_parallel=8,
        engine="deepspeed",
        micro_batch_size=1,
        global_batch_size=16,
        seq_len=64,
    )
    base.update(kw)
    return RunSpec(**base)


def test_a_consistent_spec_has_no_errors_and_derives_accumulation():
    plan = plan_run(spec(), shard_count=64)
    assert plan.errors == {}
    assert plan.world_size == 8
    assert plan.grad_accum_steps == 2  # 16 = 1 x 8 x 2


def test_it_refuses_degrees_that_do_not_multiply_to_the_gpus():
    plan = plan_run(spec(nodes=2, data_parallel=8), shard_count=64)
    assert "data_parallel" in plan.errors
    assert "16 ranks" in plan.errors["data_parallel"][0]


def test_it_refuses_heads_not_divisible_by_tp_and_layers_by_pp():
    plan = plan_run(
        spec(
            tensor_parallel=3,
            pipeline_parallel=3,
            data_parallel=1,
            nodes=9,
            gpus_per_node=1,
            global_batch_size=1,
        ),
        shard_count=64,
    )
    assert any("heads are not divisible by TP 3" in m for m in plan.errors["tensor_parallel"])
    assert any("layers are not divisible by PP 3" in m for m in plan.errors["pipeline_parallel"])


def test_it_refuses_a_global_batch_that_is_not_micro_times_dp_times_accumulation():
    plan = plan_run(spec(global_batch_size=12, micro_batch_size=1), shard_count=64)
    assert "global_batch_size" in plan.errors


def test_it_refuses_more_readers_than_shards_the_webdataset_hang():
    plan = plan_run(spec(loader_workers=4), shard_count=16)  # 8 DP x 4 = 32 > 16
    assert "loader_workers" in plan.errors
    assert "32 readers" in plan.errors["loader_workers"][0]
    assert plan_run(spec(loader_workers=2), shard_count=16).errors == {}


def test_it_refuses_unknown_presets_and_trainer_config_errors():
    assert "preset" in plan_run(spec(preset="../etc/passwd")).errors
    assert "preset" in plan_run(spec(preset="nope")).errors
    # tiny's max_seq_len is 64: the trainer's own validation names the key.
    plan = plan_run(spec(seq_len=128), shard_count=64)
    assert "max_seq_len" in " ".join(plan.errors["preset"])


def test_it_refuses_an_unready_dataset_and_an_unsafe_dataset_path():
    assert "dataset_version" in plan_run(spec(), dataset_ready=False).errors
    plan = plan_run(spec(), dataset_root="/data/x; rm -rf ~")
    assert "dataset_version" in plan.errors


def test_the_memory_formulas_match_the_deepspeed_estimator_figures():
    # notes/torch-deepspeed-cpu.md section 7: 70e9 params, largest layer 32000x8192, 64 GPUs.
    p, lay = 70_000_000_000, 262_144_000
    gpu, _ = model_states_bytes(p, lay, zero_stage=3, gpus=64, nodes=8, offload=False)
    assert gpu / GIB == pytest.approx(19.31, abs=0.01)
    gpu, _ = model_states_bytes(p, lay, zero_stage=3, gpus=64, nodes=8, offload=True)
    assert gpu / GIB == pytest.approx(3.01, abs=0.01)
    gpu, _ = model_states_bytes(p, lay, zero_stage=2, gpus=64, nodes=8, offload=False)
    assert gpu / GIB == pytest.approx(148.72, abs=0.01)


def test_it_warns_before_an_obvious_out_of_memory():
    plan = plan_run(
        spec(
            preset="70b",
            nodes=8,
            data_parallel=64,
            zero_stage=2,
            global_batch_size=64,
            seq_len=8192,
        ),
        shard_count=1024,
    )
    assert plan.errors == {}
    assert plan.gpu_gib and plan.gpu_gib > 80
    assert any("out of memory" in str(w) for w in plan.warnings)
    ok = plan_run(
        spec(
            preset="70b",
            nodes=8,
            data_parallel=64,
            zero_stage=3,
            offload_optimizer=True,
            global_batch_size=64,
            seq_len=8192,
        ),
        shard_count=1024,
    )
    assert ok.warnings == [] and ok.gpu_gib < 10


def test_it_reports_every_problem_at_once():
    plan = plan_run(
        spec(name="Bad Name", partition="a b", data_parallel=3, loader_workers=99), shard_count=4
    )
    assert {"name", "partition", "data_parallel", "loader_workers"} <= set(plan.errors)


def test_planning_and_checkpoint_reading_do_not_import_torch():
    code = (
        "import os, sys, django; os.environ['DJANGO_SETTINGS_MODULE'] = 'controlplane.settings';"
        "django.setup(); from apps.jobs import checkpoints, services, validation;"
        "validation.plan_run(validation.RunSpec(name='r', preset='70b', dataset_version_id=1));"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_named_tokenizer_is_checked_where_the_control_plane_sees_it(tmp_path):
    from trainer.data.tokenizer import Tokenizer

    small, big, junk = tmp_path / "small.json", tmp_path / "big.json", tmp_path / "junk.json"
    Tokenizer.train(["胸部CT 未见异常 the lesion"] * 3, 300).save(small)
    Tokenizer([(9 + 97, 9 + 98)] * 300).save(big)  # 565 ids: more than tiny's 512
    junk.write_text("{}")
    assert plan_run(spec(tokenizer=str(small)), shard_count=64).errors == {}
    assert "512" in plan_run(spec(tokenizer=str(big)), shard_count=64).errors["tokenizer"][0]
    assert "not a trainer tokenizer" in plan_run(spec(tokenizer=str(junk))).errors["tokenizer"][0]
    unseen = plan_run(spec(tokenizer="/cluster/only/tok.json"), shard_count=64)
    assert unseen.errors == {} and "not visible from the control plane" in unseen.warnings[0]
    assert "tokenizer" in plan_run(spec(tokenizer="tok.json")).errors  # relative: refused
