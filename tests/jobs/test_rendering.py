"""The batch script: what it holds, and that hostile input is refused or inert."""

from __future__ import annotations

import subprocess
from dataclasses import replace

import pytest

from apps.jobs.rendering import RenderError, job_spec, render
from apps.jobs.schedulers import SchedulerError
from apps.jobs.validation import RunSpec, plan_run

HOSTILE = ["; rm -rf ~", "$(id)", "`id`", "a\nb", "x'y", 'x"y', "../../etc", "a b", "x|y", "-rf"]


def cluster_spec(**kw):
    base = dict(
        name="ct70b",
        preset="70b",
        dataset_version_id=1,
        nodes=8,
        gpus_per_node=8,
        data_parallel=64,
        engine="deepspeed",
        zero_stage=3,
        offload_optimizer=True,
        micro_batch_size=2,
        global_batch_size=2048,
        seq_len=8192,
        time_limit_minutes=7 * 24 * 60,
        partition="gpu-prod",
        account="ai-lab",
        qos="normal",
        scheduler="slurm",
    )
    base.update(kw)
    return RunSpec(**base)


@pytest.fixture
def paths(settings, tmp_path):
    settings.JOBS_RUNS_ROOT = str(tmp_path / "runs")
    settings.JOBS_PYTHON = "/opt/medllm/bin/python"
    return tmp_path


def rendered(spec, **kw):
    return render(
        spec,
        run_id=kw.get("run_id", 42),
        attempt=kw.get("attempt", 1),
        dataset_root=kw.get("root", "/lustre/datasets/ct-notes-v3"),
        grad_accum_steps=16,
        scheduler=spec.scheduler,
    )


def test_the_cluster_script_carries_the_directives_of_the_seed(paths):
    script = rendered(cluster_spec()).script
    for line in (
        "#SBATCH --job-name=medctl-ct70b-42",
        "#SBATCH --nodes=8",
        "#SBATCH --ntasks-per-node=8",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --time=7-00:00:00",
        "#SBATCH --partition=gpu-prod",
        "#SBATCH --account=ai-lab",
        "#SBATCH --qos=normal",
        "#SBATCH --signal=USR1@120",
        "#SBATCH --requeue",
        f"#SBATCH --output={paths}/runs/ct70b-42/logs/%x-%j.out",
        "export NCCL_DEBUG=WARN",
        "export NCCL_IB_TIMEOUT=23",
        "export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))",
    ):
        assert line in script, line
    assert script.startswith("#!/bin/bash\n")
    assert "NCCL_IB_GID_INDEX=" not in script.replace("NCCL_IB_GID_INDEX=3 (a RoCE", "")


def test_the_launch_line_runs_the_trainer_with_resume_latest(paths):
    script = rendered(cluster_spec()).script
    assert "srun --kill-on-bad-exit=1 /opt/medllm/bin/python" in script
    assert "-m trainer train --config 70b --engine deepspeed --zero-stage 3" in script
    assert "--data /lustre/datasets/ct-notes-v3" in script
    assert f"--save-dir {paths}/runs/ct70b-42/checkpoints" in script
    assert "--resume latest" in script
    assert "--set data.grad_accum_steps=16" in script
    assert "--set parallel.offload_optimizer=true" in script
    assert "--metrics-port 8085" in script
    assert "data.tokenizer" not in script  # none named: the trainer takes the dataset's own
    named = rendered(cluster_spec(tokenizer="/lustre/tokenizers/zh-en-32k.json")).script
    assert "--set data.tokenizer=/lustre/tokenizers/zh-en-32k.json" in named


def test_torchrun_launches_one_agent_per_node_with_a_rendezvous_on_the_first(paths):
    script = rendered(cluster_spec(launcher="torchrun")).script
    assert "#SBATCH --ntasks-per-node=1" in script
    assert (
        "srun --kill-on-bad-exit=1 --ntasks-per-node=1 /opt/medllm/bin/python -m "
        "torch.distributed.run --nnodes=8 --nproc-per-node=8 --rdzv-backend=c10d "
        '--rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv-id="$SLURM_JOB_ID"' in script
    )


def test_fresh_runs_do_not_resume_and_the_local_scheduler_needs_no_cluster_tools(paths):
    spec = cluster_spec(
        resume_policy="fresh",
        scheduler="local",
        nodes=1,
        gpus_per_node=0,
        data_parallel=1,
        engine="single",
    )
    script = rendered(spec).script
    assert "--resume" not in script
    assert "srun" not in script
    assert "exec /opt/medllm/bin/python" in script


@pytest.mark.parametrize("launcher", ["direct", "torchrun"])
def test_every_rendered_script_is_valid_bash(paths, launcher):
    script = rendered(cluster_spec(launcher=launcher)).script
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)


@pytest.mark.parametrize("bad", HOSTILE)
def test_hostile_names_and_identifiers_are_refused_by_the_planner(bad):
    for field in ("name", "partition", "account", "qos"):
        plan = plan_run(cluster_spec(**{field: bad}), shard_count=4096)
        assert field in plan.errors, (field, bad)
    assert "preset" in plan_run(cluster_spec(preset=bad)).errors
    assert "tokenizer" in plan_run(cluster_spec(tokenizer=bad), shard_count=4096).errors
    if bad != "-rf":  # "/d/-rf" is a plain absolute path: legal and inert
        assert "dataset_version" in plan_run(cluster_spec(), dataset_root="/d/" + bad).errors


@pytest.mark.parametrize("bad", HOSTILE)
def test_the_renderer_refuses_hostile_values_even_past_the_planner(paths, bad):
    for field in ("name", "partition", "account", "qos"):
        with pytest.raises(RenderError):
            rendered(cluster_spec(**{field: bad}))
    if bad != "-rf":
        with pytest.raises(RenderError):
            rendered(cluster_spec(), root="/d/" + bad)
    with pytest.raises(RenderError):
        rendered(cluster_spec(tokenizer=bad))


def test_a_hostile_preset_that_reaches_the_renderer_is_quoted_and_inert(paths, settings, tmp_path):
    """Belt and braces: a value the planner would refuse, forced through, stays one word."""
    settings.JOBS_PYTHON = "/bin/echo"
    marker = tmp_path / "pwned"
    spec = cluster_spec(
        preset=f"x; touch {marker}",
        scheduler="local",
        nodes=1,
        gpus_per_node=0,
        data_parallel=1,
        engine="single",
    )
    script = rendered(spec).script
    out = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "SLURM_JOB_ID": "7"},
        check=True,
    )
    assert f"--config x; touch {marker} --engine single" in out.stdout
    assert not marker.exists()


def test_the_job_spec_refuses_hostile_names_too(paths):
    spec = cluster_spec()
    ok = rendered(spec)
    job = job_spec(spec, ok, run_id=42, comment="medctl:tok-12345678 operator:alice")
    job.validate()
    for bad in HOSTILE:
        with pytest.raises(SchedulerError):
            replace(job, name=bad).validate()
        with pytest.raises(SchedulerError):
            replace(job, partition=bad).validate()
