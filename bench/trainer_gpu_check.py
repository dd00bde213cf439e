"""GPU check: DeepSpeed ZeRO-3 bf16 on one GPU with the 1B-class preset, then a resume.

    .venv/bin/python bench/trainer_gpu_check.py --out $OUT/gpu_check.json   # one H100/H200
    # on the device machine: bench/device_wheels.sh here, then bench/device_run.sh there
    .venv/bin/python bench/trainer_gpu_check.py --preset tiny --steps 4 --seq 64  # CPU smoke

Writes a synthetic dataset with long reports (so sequences are full), trains ``--steps`` steps
through the real CLI path (``build_run`` + ``Trainer.train``), checkpoints, starts a fresh run
that resumes from the checkpoint for ``--resume-steps`` more, and reports tokens/s, MFU
(``flops_per_token * tokens/s / peak``; peak bf16 dense 989 TFLOP/s for H100/H200 SXM),
peak GPU memory, and whether the resumed losses continue the first run's trajectory.
Figures belong in ``docs/benchmarks.md`` together with the GPU model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.config import count_params, flops_per_token, load_config
from trainer.data.shards import ShardWriter
from trainer.data.synthetic import make_sample
from trainer.data.tokenizer import Tokenizer

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def write_long(out: Path, samples: int, words: int) -> Path:
    """Synthetic samples whose reports are ``words`` words long."""
    rng = np.random.default_rng(0)
    texts = []
    with ShardWriter(out, samples_per_shard=64) as w:
        for i in range(samples):
            s = make_sample(i, rng)
            base = (s.text or "").split()
            s.text = " ".join(base[k % len(base)] for k in range(words))
            texts.append(s.text)
            w.write(s)
    Tokenizer.train(texts[:32], 1024).save(out / "tokenizer.json")
    return out


def run(cfg) -> tuple[list[float], list[float]]:
    """Train; returns (losses, step seconds)."""
    import torch

    from trainer.train import build_run

    built = build_run(cfg)
    times: list[float] = []
    orig = built.trainer.train_step

    def timed():
        t0 = time.perf_counter()
        out = orig()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        return out

    built.trainer.train_step = timed  # type: ignore[method-assign]
    try:
        built.trainer.train()
        return built.trainer.losses, times
    finally:
        built.close()


def phase(args: argparse.Namespace) -> None:
    """One training process (first run or resume); prints its figures as one JSON line."""
    import torch

    cfg = load_config(args.preset, json.loads(args.overrides))
    losses, times = run(cfg)
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
    print("PHASE " + json.dumps({"losses": losses, "times": times, "peak": peak}), flush=True)
    os._exit(0)  # skip interpreter teardown of process-group threads


def launch(args: argparse.Namespace, overrides: list[str]) -> dict:
    """Run a phase in a fresh process: DeepSpeed keeps process-group state per process."""
    cmd = [sys.executable, __file__, "--phase", "--preset", args.preset]
    cmd += ["--overrides", json.dumps(overrides)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("PHASE "):
            return json.loads(line[6:])
    raise SystemExit(f"phase failed ({proc.returncode}):\n{proc.stderr[-4000:]}")


def main() -> None:
    """Train, checkpoint, resume; print and write the figures."""
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="1b")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--resume-steps", type=int, default=5)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--micro", type=int, default=4)
    p.add_argument("--engine", default="deepspeed")
    p.add_argument("--out", default="")
    p.add_argument("--phase", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--overrides", default="[]", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.phase:
        phase(args)
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        data = write_long(Path(tmp) / "ds", samples=256, words=args.seq)
        save = Path(tmp) / "ckpt"
        common = [
            f"data.path={data}", f"data.seq_len={args.seq}", f"model.max_seq_len={args.seq}",
            f"data.micro_batch_size={args.micro}", "data.grad_accum_steps=1",
            f"parallel.engine={args.engine}", "parallel.zero_stage=3",
            f"parallel.precision={'bf16' if torch.cuda.is_available() else 'fp32'}",
            "parallel.offload_optimizer=false", f"checkpoint.save_dir={save}",
            "optim.warmup_steps=5", "log_interval=1",
        ]  # fmt: skip
        total = args.steps + args.resume_steps
        first = launch(args, [*common, f"optim.max_steps={args.steps}"])
        ckpt_bytes = sum(f.stat().st_size for f in save.rglob("*") if f.is_file())
        second = launch(args, [*common, f"optim.max_steps={total}", "checkpoint.resume=latest"])
        cfg = load_config(args.preset, [*common, f"optim.max_steps={args.steps}"])
        steady = first["times"][min(5, len(first["times"]) - 1) :]
        step_s = float(np.median(steady))
        tok_s = args.micro * args.seq / step_s
        fpt = flops_per_token(cfg.model, args.seq)
        peak_flops = next((v for k, v in PEAK_BF16.items() if k in gpu), None)
        resumed = second["losses"]
        report = {
            "gpu": gpu,
            "preset": args.preset,
            "params": count_params(cfg.model)["total"],
            "engine": f"{args.engine} zero3",
            "seq_len": args.seq,
            "micro_batch": args.micro,
            "steps": args.steps,
            "median_step_seconds": step_s,
            "tokens_per_second": tok_s,
            "mfu": (fpt * tok_s / peak_flops) if peak_flops else None,
            "peak_memory_gib": first["peak"] / 2**30,
            "checkpoint_gib": ckpt_bytes / 2**30,
            "losses_first": first["losses"],
            "losses_resumed": resumed,
            "resume_ok": len(resumed) == args.resume_steps and all(np.isfinite(resumed)),
        }
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
