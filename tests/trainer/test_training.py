"""The single-process loop: loss falls, resume is bit-exact, bad checkpoints are skipped."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from trainer.checkpoint import CheckpointManager, verify
from trainer.data.tokenizer import Tokenizer
from trainer.train import build_run, lr_at


@pytest.fixture(autouse=True)
def _one_thread():
    # Bit-exact comparisons need the same reduction order in every run.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_it_lowers_the_loss_on_the_synthetic_multimodal_set(
    train_losses, dataset, tmp_path, tiny
) -> None:
    losses = train_losses(tiny(dataset, tmp_path, "optim.max_steps=30"))
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert first > 5.0  # about ln(vocab) at initialisation
    assert last < first / 3, losses


def test_resume_reproduces_the_uninterrupted_losses_exactly(
    train_losses, dataset, tmp_path, tiny
) -> None:
    extra = ("optim.max_steps=12", "checkpoint.interval=6", "data.grad_accum_steps=2")
    full = train_losses(tiny(dataset, tmp_path / "full", *extra))
    first = train_losses(tiny(dataset, tmp_path / "cut", *extra[1:], "optim.max_steps=6"))
    # Same schedule as the full run: max_steps fixes the cosine, so resume with 12.
    resumed_cfg = tiny(dataset, tmp_path / "cut", *extra, "checkpoint.resume=latest")
    run = build_run(resumed_cfg)
    try:
        assert run.trainer.train() == 0
        assert run.trainer.step == 12
        second = run.trainer.losses
    finally:
        run.close()
    assert len(first) == 6 and len(second) == 6
    assert first + second == full  # float equality, not approx


def test_the_cut_run_uses_the_full_runs_schedule(dataset, tiny) -> None:
    cfg = tiny(dataset, "", "optim.max_steps=12", "optim.warmup_steps=3")
    assert lr_at(0, cfg) == pytest.approx(cfg.optim.lr / 3)
    assert lr_at(3, cfg) == pytest.approx(cfg.optim.lr)
    assert lr_at(12, cfg) == pytest.approx(cfg.optim.min_lr)


def test_resume_latest_skips_a_corrupted_checkpoint_and_logs_why(
    train_losses, dataset, tmp_path, caplog, tiny
) -> None:
    train_losses(tiny(dataset, tmp_path, "optim.max_steps=4", "checkpoint.interval=2"))
    newest = tmp_path / "step-000004" / "model.pt"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    run = build_run(tiny(dataset, tmp_path, "optim.max_steps=5", "checkpoint.resume=latest"))
    try:
        with caplog.at_level(logging.WARNING, logger="trainer.checkpoint"):
            run.trainer.resume()
        assert run.trainer.step == 2
    finally:
        run.close()
    assert "step-000004: model.pt sha256 does not match" in caplog.text


def test_resume_latest_skips_a_folder_without_manifest(
    train_losses, dataset, tmp_path, caplog, tiny
) -> None:
    train_losses(tiny(dataset, tmp_path, "optim.max_steps=2", "checkpoint.interval=2"))
    (tmp_path / "step-000009").mkdir()
    (tmp_path / "step-000009" / "model.pt").write_bytes(b"partial")
    run = build_run(tiny(dataset, tmp_path, "optim.max_steps=3", "checkpoint.resume=latest"))
    try:
        with caplog.at_level(logging.WARNING, logger="trainer.checkpoint"):
            run.trainer.resume()
        assert run.trainer.step == 2
    finally:
        run.close()
    assert "step-000009: no manifest.json" in caplog.text


def test_keep_last_n_removes_older_checkpoints(train_losses, dataset, tmp_path, tiny) -> None:
    cfg = tiny(dataset, tmp_path, "optim.max_steps=8", "checkpoint.interval=2")
    cfg.checkpoint.keep_last = 2
    train_losses(cfg)
    names = sorted(p.name for p in tmp_path.glob("step-*"))
    assert names == ["step-000006", "step-000008"]
    assert all(verify(tmp_path / n)[0] for n in names)


def test_manifest_describes_the_checkpoint(train_losses, dataset, tmp_path, tiny) -> None:
    train_losses(tiny(dataset, tmp_path, "optim.max_steps=3", "checkpoint.interval=3"))
    manifest = json.loads((tmp_path / "step-000003" / "manifest.json").read_text())
    assert manifest["step"] == 3
    assert manifest["engine"] == "single"
    assert manifest["world_size"] == 1
    assert manifest["tokens_seen"] == 3 * 4 * 64
    assert manifest["data"]["position"] == 12  # 3 steps x 4 samples: the next sample
    assert manifest["config"]["model"]["d_model"] == 128
    assert manifest["code_version"]["trainer"]
    assert set(manifest["files"]) == {"model.pt", "optimizer.pt", "rng-0.pt"}
    own = Tokenizer.load(dataset / "tokenizer.json")
    assert manifest["tokenizer"] == {"sha256": own.fingerprint(), "vocab_size": own.vocab_size}


def test_resuming_with_another_tokenizer_is_refused(train_losses, dataset, tmp_path, tiny) -> None:
    train_losses(tiny(dataset, tmp_path, "optim.max_steps=2", "checkpoint.interval=2"))
    other = tmp_path / "other.json"
    Tokenizer([]).save(other)  # byte-level: the same text, other ids
    cfg = tiny(dataset, tmp_path, "optim.max_steps=4", "checkpoint.resume=latest")
    cfg.data.tokenizer = str(other)
    run = build_run(cfg)
    try:
        with pytest.raises(ValueError, match=r"use the same data\.tokenizer"):
            run.trainer.train()
    finally:
        run.close()


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from trainer.checkpoint import CheckpointManager

    class DyingEngine:
        name, rank, world = "single", 0, 1
        def barrier(self): pass
        def broadcast_object(self, obj): return obj
        def save_state(self, directory: Path) -> None:
            (directory / "model.pt").write_bytes(b"half a checkpoint")
            os.kill(os.getpid(), signal.SIGKILL)  # dies mid-write, before the manifest

    CheckpointManager(sys.argv[1], DyingEngine()).save(99, {})
    """
)


def test_a_save_killed_mid_write_leaves_the_previous_checkpoint_usable(
    train_losses, dataset, tmp_path, tiny, sub_env
) -> None:
    train_losses(tiny(dataset, tmp_path, "optim.max_steps=2", "checkpoint.interval=2"))
    proc = subprocess.run([sys.executable, "-c", KILLER, str(tmp_path)], env=sub_env, check=False)
    assert proc.returncode == -9
    assert (tmp_path / ".tmp-step-000099" / "model.pt").exists()
    assert not (tmp_path / "step-000099").exists()
    run = build_run(tiny(dataset, tmp_path, "optim.max_steps=3", "checkpoint.resume=latest"))
    try:
        assert run.trainer.train() == 0
        assert run.trainer.losses and run.trainer.step == 3
    finally:
        run.close()
    assert not (tmp_path / ".tmp-step-000099").exists()  # cleaned at start
    assert (tmp_path / "step-000003").exists()


def test_checkpoint_manager_lists_only_complete_step_folders(tmp_path) -> None:
    class Engine:
        name, rank, world = "single", 0, 1

        def barrier(self) -> None: ...

        def broadcast_object(self, obj):
            return obj

        def save_state(self, directory: Path) -> None:
            (directory / "model.pt").write_bytes(b"weights")

    manager = CheckpointManager(tmp_path, Engine(), keep_last=0)
    manager.save(1, {"engine": "single"})
    (tmp_path / "notes").mkdir()
    assert [s for s, _ in manager.list_steps()] == [1]
    assert manager.latest() == tmp_path / "step-000001"


@pytest.mark.slow
def test_cli_trains_and_resumes_latest(dataset, tmp_path, python, repo, sub_env) -> None:
    base = [str(python), "-m", "trainer", "train", "--config", "tiny", "--engine", "single"]
    base += ["--data", str(dataset), "--save-dir", str(tmp_path), "--metrics-port", "0"]
    first = subprocess.run(
        [*base, "--max-steps", "3"],
        env=sub_env,
        cwd=repo,
        check=False,
        capture_output=True,
        text=True,
    )
    assert first.returncode == 0, first.stderr[-2000:]
    second = subprocess.run(
        [*base, "--max-steps", "5", "--resume", "latest"],
        env=sub_env, cwd=repo, check=False, capture_output=True, text=True,
    )  # fmt: skip
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resumed from" in second.stderr and "step-000003" in second.stderr
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "training_loss" in r]
    assert steps == [1, 2, 3, 4, 5]
    assert os.path.isdir(tmp_path / "step-000005")


@pytest.mark.slow
def test_bf16_autocast_trains_on_cpu(train_losses, dataset, tiny) -> None:
    losses = train_losses(tiny(dataset, "", "optim.max_steps=8", "parallel.precision=bf16"))
    assert losses[-1] < losses[0] - 1.0
    assert all(x == x for x in losses)  # no NaN


def test_a_config_error_exits_with_code_2_naming_the_key(dataset, python, repo, sub_env) -> None:
    cmd = [str(python), "-m", "trainer", "train", "--data", str(dataset)]
    cmd += ["--set", "optim.learning_rate=1"]
    proc = subprocess.run(cmd, env=sub_env, cwd=repo, capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert "learning_rate" in proc.stderr and "in optim" in proc.stderr
