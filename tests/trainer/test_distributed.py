"""Two CPU processes over gloo: DDP, FSDP2, DeepSpeed ZeRO-2/3 match the single process.

Every run sees the same 4 samples per optimizer step (1 process x 4, or 2 ranks x 2, or 2 ranks
x 1 x 2 accumulation steps) and normalises the loss by the global token count, so the losses
agree up to floating-point reduction order. DeepSpeed additionally resumes bit-exactly.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from trainer.__main__ import main
from trainer.checkpoint import verify
from trainer.train import build_run

pytestmark = pytest.mark.slow
STEPS = 6


def losses_of(save_dir: Path) -> list[float]:
    lines = (save_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x)["training_loss"] for x in lines if '"training_loss"' in x]


def launch(python, repo, env, port, dataset, save_dir, engine, *extra) -> None:
    cmd = [str(python), "-m", "torch.distributed.run", "--nproc_per_node=2"]
    cmd += [f"--master_port={port}", "-m", "trainer", "train", "--config", "tiny"]
    cmd += ["--engine", engine, "--data", str(dataset), "--save-dir", str(save_dir)]
    cmd += ["--max-steps", str(STEPS), "--set", "checkpoint.interval=3", *extra]
    proc = subprocess.run(cmd, env=env, cwd=repo, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


def perplexity(checkpoint: Path, out: Path) -> float:
    """``python -m trainer evaluate`` in this process (one process, any engine's checkpoint)."""
    assert (
        main(["evaluate", "--checkpoint", str(checkpoint), "--samples", "8", "--out", str(out)])
        == 0
    )
    return json.loads(out.read_text())["perplexity"]


@pytest.fixture(scope="module")
def single(dataset, tmp_path_factory) -> dict:
    """Losses and final held-out perplexity of the single-process reference run."""
    from trainer.config import load_config

    save = tmp_path_factory.mktemp("single")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = load_config(
        "tiny", [f"data.path={dataset}", f"optim.max_steps={STEPS}", f"checkpoint.save_dir={save}"]
    )
    run = build_run(cfg)
    try:
        run.trainer.train()
        losses = run.trainer.losses
    finally:
        run.close()
        torch.set_num_threads(threads)
    return {"losses": losses, "ppl": perplexity(save / "step-000006", save / "eval.json")}


@pytest.mark.parametrize(
    ("engine", "extra"),
    [
        ("ddp", ["--set", "data.micro_batch_size=2"]),
        (
            "fsdp2",
            [
                *("--set", "data.micro_batch_size=1", "--set", "data.grad_accum_steps=2"),
                *("--set", "model.activation_checkpointing=true"),
            ],
        ),
        ("deepspeed", ["--zero-stage", "2", "--set", "data.micro_batch_size=2"]),
    ],
)
def test_engines_on_two_ranks_match_the_single_process_loss(
    engine, extra, dataset, tmp_path, single, python, repo, sub_env, free_port
) -> None:
    launch(python, repo, sub_env, free_port, dataset, tmp_path, engine, *extra)
    assert losses_of(tmp_path) == pytest.approx(single["losses"], abs=2e-4)
    final = tmp_path / "step-000006"
    manifest = json.loads((final / "manifest.json").read_text())
    assert (manifest["engine"], manifest["world_size"]) == (engine, 2)
    assert verify(final)[0]
    # The sharded checkpoint evaluates in one process to the reference model's perplexity.
    assert perplexity(final, tmp_path / "eval.json") == pytest.approx(single["ppl"], rel=1e-3)


def test_deepspeed_zero3_matches_single_and_resumes_from_its_checkpoint_exactly(
    dataset, tmp_path, single, python, repo, sub_env, free_port
) -> None:
    # The first DeepSpeed launch on a machine JIT-builds its shm comm op (30-110 s).
    extra = ["--zero-stage", "3", "--set", "data.micro_batch_size=1"]
    extra += ["--set", "data.grad_accum_steps=2", "--set", "model.activation_checkpointing=true"]
    full = tmp_path / "full"
    launch(python, repo, sub_env, free_port, dataset, full, "deepspeed", *extra)
    full_losses = losses_of(full)
    assert full_losses == pytest.approx(single["losses"], abs=2e-4)
    ppl = perplexity(full / "step-000006", tmp_path / "eval.json")
    assert ppl == pytest.approx(single["ppl"], rel=1e-3)
    step3 = full / "step-000003"
    assert verify(step3)[0]
    assert (step3 / "deepspeed").is_dir()

    resumed = tmp_path / "resumed"
    launch(
        python, repo, sub_env, free_port, dataset, resumed, "deepspeed", *extra,
        "--resume", str(step3),
    )  # fmt: skip
    assert losses_of(resumed) == full_losses[3:]  # bit-exact, steps 4-6


def test_a_signal_to_one_rank_stops_every_rank_after_a_common_checkpoint(
    dataset, tmp_path, python, repo, sub_env, free_port
) -> None:
    import signal
    import time

    import psutil

    cmd = [str(python), "-m", "torch.distributed.run", "--nproc_per_node=2"]
    cmd += [f"--master_port={free_port}", "-m", "trainer", "train", "--config", "tiny"]
    cmd += ["--engine", "ddp", "--data", str(dataset), "--save-dir", str(tmp_path)]
    cmd += ["--max-steps", "100000", "--set", "checkpoint.interval=0"]
    cmd += ["--set", "data.micro_batch_size=2"]
    proc = subprocess.Popen(cmd, env=sub_env, cwd=repo, stderr=subprocess.PIPE, text=True)
    try:
        jsonl = tmp_path / "metrics.jsonl"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if jsonl.exists() and jsonl.read_text().count('"training_loss"') >= 3:
                break
            time.sleep(0.2)
        workers = psutil.Process(proc.pid).children()
        assert len(workers) == 2
        # Only one rank hears the signal (as when Slurm signals a single task).
        workers[-1].send_signal(signal.SIGUSR1)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    # torchrun reports the worker's requeue code but exits 1 itself (see docs: prefer srun).
    assert "exitcode  : 75" in stderr, stderr[-3000:]
    folders = sorted(tmp_path.glob("step-*"))
    assert len(folders) == 1, stderr[-3000:]
    assert verify(folders[0])[0]
    manifest = json.loads((folders[0] / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and manifest["step"] >= 3
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("event") == "stopped" for r in records)
    marker = json.loads((tmp_path / "requeue.json").read_text())
    assert marker["exit_code"] == 75 and marker["checkpoint"] == folders[0].name
