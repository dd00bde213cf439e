"""Tokens/s of the trainer's loop against a bare PyTorch loop on the same model and data (CPU).

    OMP_NUM_THREADS=1 .venv/bin/python bench/trainer_bench.py [--models tiny,small]
        [--rounds 10] [--chunk 40] [--micro 8] [--log-interval 1] [--loader process|thread]

"ours" is ``Trainer.train()`` with everything a real run does per step: the batch loader
(reading and collating *during* the timed steps, in its worker process or, with ``--loader
thread``, a thread), the global token count for loss normalisation, the LR schedule, the
stop-signal agreement, clipping, and a metrics record to JSONL every ``--log-interval`` steps
(default 1, the ``tiny`` preset's; ``--metrics-port`` adds the Prometheus sink). "bare" is the
textbook loop: forward, backward, clip, AdamW step, over batches of the same samples collated
*before* its timer starts (ours pays for its data, bare does not). Both clip the gradient norm
to ``optim.grad_clip``: clipping is part of the training semantics. Both build the same model
from the same seed and follow the same LR schedule, so their losses agree step by step: the
largest difference is printed as the check that the two loops do the same math.

The two loops live in one process and take turns, ``--chunk`` steps each, for ``--rounds``
rounds after one warm-up round (who goes first alternates), so load from other work on the
machine falls on both. Before each turn the loader's queue is refilled, so it never works
during bare's turn (it refills in each of ours' turns exactly what that turn consumes). Reported:
the median over rounds of ``ours / bare - 1`` and best / best, and each loop's main-thread CPU
time per step, which other processes on the machine barely disturb. ``small`` is a wider,
deeper model: the loop's cost per step is fixed, so its share falls as the step grows.
Goal: overhead <= 5 %.
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

from trainer.config import TrainConfig, count_params, load_config
from trainer.data.batching import Batch, Collator
from trainer.data.sampler import ResumableSampler
from trainer.data.shards import ShardReader
from trainer.data.synthetic import write_synthetic
from trainer.data.tokenizer import Tokenizer
from trainer.engines import param_groups
from trainer.model import build_model
from trainer.train import Run, build_run, lr_at

#: Model shapes measured: the ``tiny`` preset and a wider, deeper one whose step is several
#: times longer (the loop's cost per step is fixed, so its share shrinks as the step grows).
MODELS: dict[str, list[str]] = {
    "tiny": [],
    "small": [
        "model.d_model=256", "model.n_layers=4", "model.n_heads=8", "model.n_kv_heads=4",
        "model.ffn_hidden=688", "model.nominal_params=0",
    ],
}  # fmt: skip


class Ours:
    """The real trainer, advanced ``n`` steps at a time by raising ``optim.max_steps``."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.run: Run = build_run(cfg)

    def steps(self, n: int) -> tuple[float, float]:
        """Wall and this thread's CPU seconds for the next ``n`` optimizer steps."""
        trainer = self.run.trainer
        trainer.cfg.optim.max_steps = trainer.step + n
        c0, t0 = time.thread_time(), time.perf_counter()
        trainer.train()
        return time.perf_counter() - t0, time.thread_time() - c0

    def settle(self) -> None:
        """Let the background loader refill its queue, so it does not run during the other
        loop's turn (it refills exactly what the next turn consumes, so no work is skipped)."""
        loader = self.run.data.loader
        deadline = time.monotonic() + 5
        while loader.queue_depth() < loader.depth and time.monotonic() < deadline:
            time.sleep(0.005)

    @property
    def losses(self) -> list[float]:
        return self.run.trainer.losses

    def close(self) -> None:
        self.run.close()


class Bare:
    """Forward, backward, clip, AdamW step over pre-collated batches of the same samples."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.reader = ShardReader(cfg.data.path)
        tok = Tokenizer.load(Path(cfg.data.path) / "tokenizer.json")
        self.collate = Collator(cfg.model, tok, cfg.data.seq_len)
        d = cfg.data
        self.sampler = ResumableSampler(
            range(d.eval_samples, len(self.reader)), d.micro_batch_size, seed=d.seed
        )
        self.model = build_model(cfg.model, seed=cfg.seed)
        o = cfg.optim
        self.opt = torch.optim.AdamW(
            param_groups(self.model, o.weight_decay),
            lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, foreach=False,
        )  # fmt: skip
        self.step = 0
        self._losses: list[torch.Tensor] = []

    def steps(self, n: int) -> tuple[float, float]:
        """Wall and CPU seconds for the next ``n`` steps (batches collated before the timer)."""
        batches: list[Batch] = []
        for _ in range(n):
            idx = self.sampler.next()
            batches.append(self.collate([self.reader[i] for i in idx], idx))
        self.cfg.optim.max_steps = self.step + n  # the schedule ours sees in the same turn
        model, opt, clip = self.model, self.opt, self.cfg.optim.grad_clip
        c0, t0 = time.thread_time(), time.perf_counter()
        for batch in batches:
            for group in opt.param_groups:
                group["lr"] = lr_at(self.step, self.cfg)
            loss = model(**batch.model_inputs()) / batch.target_tokens
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip, foreach=False)
            opt.step()
            opt.zero_grad(set_to_none=True)
            self._losses.append(loss.detach())  # read after the timer, not a sync per step
            self.step += 1
        return time.perf_counter() - t0, time.thread_time() - c0

    @property
    def losses(self) -> list[float]:
        return [float(x) for x in self._losses]

    def close(self) -> None:
        self.reader.close()


def measure(name: str, data: Path, tmp: Path, args: argparse.Namespace) -> dict[str, float]:
    """Alternate the two loops on model ``name``; print and return its figures."""
    overrides = [f"data.path={data}", f"data.micro_batch_size={args.micro}", *MODELS[name]]
    overrides += [f"log_interval={args.log_interval}", f"metrics_jsonl={tmp / f'{name}.jsonl'}"]
    overrides += [f"metrics_port={args.metrics_port}", f"data.loader={args.loader}"]
    ours_cfg = load_config("tiny", overrides)
    bare_cfg = load_config("tiny", overrides)
    ours, bare = Ours(ours_cfg), Bare(bare_cfg)
    ours_s: list[float] = []
    bare_s: list[float] = []
    ours_cpu: list[float] = []
    bare_cpu: list[float] = []
    try:
        for r in range(args.rounds + 1):  # round 0 warms both up and is not counted
            pair = {}
            # Alternate who goes first so neither always runs right after the other.
            order = (("ours", ours), ("bare", bare)) if r % 2 else (("bare", bare), ("ours", ours))
            for label, loop in order:
                ours.settle()
                pair[label] = loop.steps(args.chunk)
            if r:
                ours_s.append(pair["ours"][0])
                bare_s.append(pair["bare"][0])
                ours_cpu.append(pair["ours"][1])
                bare_cpu.append(pair["bare"][1])
        ours_losses, bare_losses = ours.losses, bare.losses
    finally:
        ours.close()
        bare.close()
    tokens = args.chunk * args.micro * ours_cfg.data.seq_len
    ratios = [o / b - 1 for o, b in zip(ours_s, bare_s, strict=True)]
    fig = {
        "ours_median": tokens / statistics.median(ours_s),
        "bare_median": tokens / statistics.median(bare_s),
        "ours_best": tokens / min(ours_s),
        "bare_best": tokens / min(bare_s),
        "overhead_median": 100 * statistics.median(ratios),
        "overhead_best": 100 * (min(ours_s) / min(bare_s) - 1),
        "step_ms": 1000 * statistics.median(bare_s) / args.chunk,
        "ours_cpu_ms": 1000 * statistics.median(ours_cpu) / args.chunk,
        "bare_cpu_ms": 1000 * statistics.median(bare_cpu) / args.chunk,
        "cpu_overhead": 100 * (statistics.median(ours_cpu) / statistics.median(bare_cpu) - 1),
        "loss_diff": max(abs(a - b) for a, b in zip(ours_losses, bare_losses, strict=True)),
    }
    params = count_params(ours_cfg.model)["total"]
    print(
        f"\n{name}: {params / 1e6:.2f}M params, micro {args.micro} x seq "
        f"{ours_cfg.data.seq_len}, {args.rounds} rounds x {args.chunk} steps, bare step "
        f"{fig['step_ms']:.1f} ms"
    )
    print("        median tok/s     best tok/s")
    print(f"ours  {fig['ours_median']:12.0f}  {fig['ours_best']:13.0f}")
    print(f"bare  {fig['bare_median']:12.0f}  {fig['bare_best']:13.0f}")
    print(
        f"overhead {fig['overhead_median']:+.1f} % median of rounds, "
        f"{fig['overhead_best']:+.1f} % best vs best (goal <= 5 %)"
    )
    print(
        f"main-thread CPU per step (steady under load): ours {fig['ours_cpu_ms']:.2f} ms, "
        f"bare {fig['bare_cpu_ms']:.2f} ms ({fig['cpu_overhead']:+.1f} %)"
    )
    print(
        f"same math: {len(ours_losses)} steps, max |loss ours - loss bare| = {fig['loss_diff']:.2e}"
    )
    return fig


def main() -> None:
    """Measure each model and print both loops' throughput and the overhead."""
    p = argparse.ArgumentParser()
    p.add_argument("--models", default="tiny,small", help=f"comma list of {', '.join(MODELS)}")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--chunk", type=int, default=40, help="steps per loop per round")
    p.add_argument("--micro", type=int, default=8)
    p.add_argument("--log-interval", type=int, default=1, help="ours: JSONL record every N")
    p.add_argument("--metrics-port", type=int, default=0, help="ours: also serve /metrics")
    p.add_argument("--loader", default="process", help="ours: data.loader (process | thread)")
    args = p.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); ours: {args.loader} "
        f"loader, logs every {args.log_interval} step(s)"
        f"{' + /metrics' if args.metrics_port else ''}; both clip"
    )
    with tempfile.TemporaryDirectory() as tmp:
        data = write_synthetic(Path(tmp) / "ds", samples=256, per_shard=64)
        for name in args.models.split(","):
            measure(name, data, Path(tmp), args)


if __name__ == "__main__":
    main()
