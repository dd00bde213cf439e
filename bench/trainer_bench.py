"""Tokens/s of the trainer's loop against a bare PyTorch loop on the same model and data (CPU).

    OMP_NUM_THREADS=1 .venv/bin/python bench/trainer_bench.py [--steps 40] [--micro 8]

"ours" is ``Trainer.train()`` with everything a real run does per step (background batch
loader over the shard format, global token all-reduce bookkeeping, LR schedule, clipping,
metrics to JSONL). "bare" is the textbook loop over pre-collated batches of the same samples:
forward, backward, clip, AdamW step. Rounds alternate to share the machine's noise; the
median and the best of each are reported. Goal: our overhead <= 5 %.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.config import load_config
from trainer.data.batching import Collator
from trainer.data.sampler import ResumableSampler
from trainer.data.shards import ShardReader
from trainer.data.synthetic import write_synthetic
from trainer.data.tokenizer import Tokenizer
from trainer.engines import param_groups
from trainer.model import build_model
from trainer.train import build_run, lr_at


def ours(cfg, warmup: int, steps: int) -> float:
    """Seconds for ``steps`` optimizer steps of the real trainer, after ``warmup`` steps."""
    run = build_run(cfg)
    try:
        run.trainer.cfg.optim.max_steps = warmup
        run.trainer.train()
        run.trainer.cfg.optim.max_steps = warmup + steps
        t0 = time.perf_counter()
        run.trainer.train()
        return time.perf_counter() - t0
    finally:
        run.close()


def bare(cfg, warmup: int, steps: int) -> float:
    """Seconds for ``steps`` steps of a plain loop over pre-collated batches."""
    reader = ShardReader(cfg.data.path)
    tok = Tokenizer.load(Path(cfg.data.path) / "tokenizer.json")
    collate = Collator(cfg.model, tok, cfg.data.seq_len)
    sampler = ResumableSampler(range(len(reader)), cfg.data.micro_batch_size, seed=cfg.data.seed)
    batches = []
    for _ in range(warmup + steps):
        idx = sampler.next()
        batches.append(collate([reader[i] for i in idx], idx))
    model = build_model(cfg.model, seed=cfg.seed)
    o = cfg.optim
    opt = torch.optim.AdamW(
        param_groups(model, o.weight_decay), lr=o.lr, betas=(o.beta1, o.beta2), foreach=False
    )
    t0 = 0.0
    for step, batch in enumerate(batches):
        if step == warmup:
            t0 = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss = model(**batch.model_inputs()) / batch.target_tokens
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip, foreach=False)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def main() -> None:
    """Run alternating rounds and print both throughputs and the overhead."""
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--micro", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = write_synthetic(Path(tmp) / "ds", samples=256, per_shard=64)
        overrides = [f"data.path={data}", f"data.micro_batch_size={args.micro}"]
        overrides += ["log_interval=1000000", f"metrics_jsonl={Path(tmp) / 'm.jsonl'}"]
        overrides += [f"optim.max_steps={args.warmup + args.steps}"]
        cfg = load_config("tiny", overrides)
        tokens = args.steps * args.micro * cfg.data.seq_len
        ours_s, bare_s = [], []
        for _ in range(args.rounds):
            ours_s.append(ours(cfg, args.warmup, args.steps))
            bare_s.append(bare(cfg, args.warmup, args.steps))
        o, b = statistics.median(ours_s), statistics.median(bare_s)
        best_o, best_b = min(ours_s), min(bare_s)
        print(f"model tiny, micro {args.micro} x seq {cfg.data.seq_len}, {args.steps} steps, "
              f"torch threads {torch.get_num_threads()}")  # fmt: skip
        print(f"ours  {tokens / o:10.0f} tok/s  (rounds: {', '.join(f'{x:.2f}s' for x in ours_s)})")
        print(f"bare  {tokens / b:10.0f} tok/s  (rounds: {', '.join(f'{x:.2f}s' for x in bare_s)})")
        median_pct, best_pct = 100 * (o / b - 1), 100 * (best_o / best_b - 1)
        print(f"overhead {median_pct:+.1f} % median, {best_pct:+.1f} % best (goal <= 5 %; the")
        print("best of the rounds is the steadier figure on a shared machine)")


if __name__ == "__main__":
    main()
