"""Held-out evaluation, the evaluate command, the node-local cache in a run, layering."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest


def test_training_through_the_node_cache_gives_the_same_losses(
    train_losses, dataset, tmp_path, tiny
) -> None:
    direct = train_losses(tiny(dataset, "", "optim.max_steps=4"))
    log = tmp_path / "m.jsonl"
    nvme = f"data.cache_dir={tmp_path / 'nvme'}"
    cached = train_losses(tiny(dataset, "", "optim.max_steps=4", nvme, f"metrics_jsonl={log}"))
    assert cached == direct
    assert len(list((tmp_path / "nvme").glob("shard-*.tar"))) >= 1
    steps = [json.loads(x) for x in log.read_text().splitlines() if "training_loss" in x]
    assert all("training_shard_prefetch_queue_depth" in r for r in steps)


def test_periodic_evaluation_logs_held_out_perplexity(
    train_losses, dataset, tmp_path, tiny
) -> None:
    cfg = tiny(dataset, tmp_path, "optim.max_steps=6", "eval_interval=3", "data.eval_samples=16")
    train_losses(cfg)
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "training_eval_perplexity" in r]
    assert [r["step"] for r in evals] == [3, 6]
    assert evals[1]["training_eval_loss"] < evals[0]["training_eval_loss"]
    assert evals[1]["training_eval_perplexity"] == pytest.approx(
        2.718281828 ** evals[1]["training_eval_loss"], rel=1e-6
    )


@pytest.mark.slow
def test_evaluate_command_writes_a_perplexity_report(
    train_losses, dataset, tmp_path, tiny, repo, sub_env
):
    train_losses(tiny(dataset, tmp_path, "optim.max_steps=10", "checkpoint.interval=10"))
    out = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "trainer", "evaluate", "--checkpoint"]
    cmd += [str(tmp_path / "step-000010"), "--samples", "8", "--out", str(out)]
    proc = subprocess.run(cmd, env=sub_env, cwd=repo, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["step"] == 10 and report["samples"] == 8
    assert 1.0 < report["perplexity"] < 100.0  # far below the vocabulary size of 512


def test_evaluating_on_data_read_with_another_tokenizer_is_refused(
    train_losses, dataset, tmp_path, tiny
) -> None:
    """A version packed by the control plane has no tokenizer.json: its text would become
    byte-level ids, not the ids this checkpoint learned."""
    from trainer.__main__ import main

    train_losses(tiny(dataset, tmp_path, "optim.max_steps=2", "checkpoint.interval=2"))
    bare = tmp_path / "bare"
    shutil.copytree(dataset, bare)
    (bare / "tokenizer.json").unlink()
    step = str(tmp_path / "step-000002")
    assert main(["evaluate", "--checkpoint", step, "--data", str(bare), "--samples", "4"]) == 2
    assert main(["evaluate", "--checkpoint", step, "--samples", "4"]) == 0


def test_the_trainer_never_imports_django() -> None:
    code = (
        "import sys, trainer.train, trainer.__main__, trainer.engines, trainer.checkpoint, "
        "trainer.metrics, trainer.ds_config; sys.exit('django' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
