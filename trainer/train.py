"""The training loop. ``Trainer.train()`` reads as the loop: resume, step, checkpoint, eval, log.

Signals: SIGTERM and SIGUSR1 (Slurm's pre-emption / time-limit warning) set a flag; at the end
of the current optimizer step every rank agrees on it, a checkpoint is written, and the process
exits with :data:`trainer.EXIT_REQUEUE` so the control plane requeues the job.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer import EXIT_REQUEUE
from trainer.checkpoint import CheckpointManager
from trainer.config import ConfigError, TrainConfig, count_params, flops_per_token
from trainer.data.batching import Batch, BatchLoader, Collator
from trainer.data.cache import ShardCache
from trainer.data.sampler import ResumableSampler
from trainer.data.shards import ShardReader, write_atomic
from trainer.data.tokenizer import Tokenizer
from trainer.engines import Engine, init_engine
from trainer.metrics import MetricsLogger, build_logger, peak_memory_bytes

log = logging.getLogger(__name__)

REQUEUE_MARKER = "requeue.json"


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup, then cosine."""
    o = cfg.optim
    if step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    span = max(1, o.max_steps - o.warmup_steps)
    progress = min(1.0, (step - o.warmup_steps) / span)
    return o.min_lr + 0.5 * (o.lr - o.min_lr) * (1 + math.cos(math.pi * progress))


class StopFlag:
    """Set by SIGTERM/SIGUSR1; the loop checks it once per step."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def install(self) -> None:
        """Install the handlers (main thread only)."""
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: Any) -> None:
        self.signal = signum

    @property
    def set(self) -> bool:
        """True once a stop signal arrived."""
        return self.signal is not None


@dataclass
class Data:
    """The run's data pipeline: the training loader, optional eval loader, and the cache."""

    loader: BatchLoader
    eval_loader: BatchLoader | None
    cache: ShardCache | None = None
    readers: list[ShardReader] = field(default_factory=list)
    tokenizer: Tokenizer | None = None

    def close(self) -> None:
        """Stop threads and close files."""
        self.loader.close()
        if self.eval_loader is not None:
            self.eval_loader.close()
        for reader in self.readers:
            reader.close()
        if self.cache is not None:
            self.cache.close()


def build_data(cfg: TrainConfig, rank: int, world: int) -> Data:
    """Reader (through the node-local cache when configured), tokenizer, samplers, loaders."""
    d = cfg.data
    if not d.path:
        raise ValueError("data.path is empty: pass --data DIR (a dataset version folder)")
    cache = ShardCache(d.path, d.cache_dir, d.prefetch_shards) if d.cache_dir else None
    resolve = cache.path if cache is not None else None
    reader = ShardReader(d.path, resolve=resolve)
    tokenizer = Tokenizer.for_dataset(d.path, d.tokenizer)
    if not tokenizer.merges:
        log.warning("no tokenizer.json in %s and none given: using byte-level ids", d.path)
    collate = Collator(cfg.model, tokenizer, d.seq_len)
    n = len(reader)
    if d.eval_samples >= n:
        raise ValueError(f"data.eval_samples ({d.eval_samples}) leaves no training samples of {n}")
    train = ResumableSampler(range(d.eval_samples, n), d.micro_batch_size, rank, world, d.seed)
    loader = BatchLoader(
        reader, train, collate, depth=4, cache=cache, process=d.loader == "process"
    )
    eval_loader = None
    readers = [reader]
    if d.eval_samples:
        eval_reader = ShardReader(d.path, resolve=resolve)
        readers.append(eval_reader)
        held = ResumableSampler(
            range(d.eval_samples), d.micro_batch_size, rank, world, shuffle=False
        )
        eval_loader = BatchLoader(eval_reader, held, collate, depth=2)
    return Data(loader, eval_loader, cache, readers, tokenizer)


class Trainer:
    """Owns the loop; everything it touches is passed in (engine, data, checkpoints, logger)."""

    def __init__(
        self,
        cfg: TrainConfig,
        engine: Engine,
        data: Data,
        checkpoints: CheckpointManager | None,
        logger: MetricsLogger,
        stop: StopFlag | None = None,
    ) -> None:
        self.cfg, self.engine, self.data = cfg, engine, data
        self.checkpoints, self.logger = checkpoints, logger
        self.stop = stop or StopFlag()
        self.step = 0
        self.start_step = 0  # the step this process started from (a resumed checkpoint's)
        self.tokens_seen = 0
        self.losses: list[float] = []  # per optimizer step, for tests and the final summary
        self.last: dict[str, float] = {}
        self.tokens_per_step = (
            cfg.data.micro_batch_size
            * cfg.data.seq_len
            * cfg.data.grad_accum_steps
            * engine.dims.data
        )

    # ------------------------------------------------------------------ the loop

    def train(self) -> int:
        """Run to ``optim.max_steps`` (or a stop signal); returns the process exit code."""
        self.resume()
        while self.step < self.cfg.optim.max_steps:
            metrics = self.train_step()
            stop = metrics.pop("stop") > 0
            if stop or self.checkpoint_due():
                self.save()
            if self.eval_due():
                metrics.update(self.evaluate())
            self.log(metrics, final=stop or self.step >= self.cfg.optim.max_steps)
            if stop:
                self.write_requeue_marker()
                log.warning(
                    "stop signal received: checkpoint at step %d, exit %d", self.step, EXIT_REQUEUE
                )
                self.logger.event("stopped", {"step": self.step, "signal": self.stop.signal})
                return EXIT_REQUEUE
        if self.checkpoints is not None and not self._saved_at(self.step):
            self.save()
        return 0

    # ------------------------------------------------------------------ pieces

    def resume(self) -> None:
        """Load ``checkpoint.resume`` (``latest`` = newest verified) and continue after it."""
        if self.checkpoints is None:
            return
        if self.engine.rank == 0:  # this attempt answers the previous one's requeue request
            (self.checkpoints.dir / REQUEUE_MARKER).unlink(missing_ok=True)
        path = self.checkpoints.resolve(self.cfg.checkpoint.resume)
        if path is None:
            if self.cfg.checkpoint.resume:
                log.info("no checkpoint to resume in %s: starting fresh", self.checkpoints.dir)
            return
        manifest = self.checkpoints.load(path)
        self.check_tokenizer(path, manifest)
        self.step = self.start_step = int(manifest["step"])
        self.tokens_seen = int(manifest["tokens_seen"])
        self.data.loader.sampler.load_state_dict(manifest["data"])
        self.data.loader.reset()
        log.info("resumed from %s at step %d", path, self.step)
        self.logger.event("resumed", {"path": str(path), "step": self.step})

    def check_tokenizer(self, path: Path, manifest: dict[str, Any]) -> None:
        """Ids mean nothing under another tokenizer: refuse to resume or evaluate a checkpoint
        with a different one (a ConfigError: exit 2, not worth a requeue). Checkpoints
        written before the tokenizer was recorded are taken as they are."""
        recorded, tok = manifest.get("tokenizer"), self.data.tokenizer
        if recorded is None or tok is None or recorded.get("sha256") == tok.fingerprint():
            return
        raise ConfigError(
            f"{path} was trained with tokenizer {recorded.get('sha256', '?')[:12]} "
            f"({recorded.get('vocab_size')} ids); this run reads with {tok.fingerprint()[:12]} "
            f"({tok.vocab_size} ids): use the same data.tokenizer"
        )

    def train_step(self) -> dict[str, float]:
        """One optimizer step over ``grad_accum_steps`` micro-batches on every rank.

        Two scalar all-reduces per step (none in one process): the loss-token count before
        backward, and the summed loss together with the stop flag after the step.
        """
        t0 = time.perf_counter()
        batches: list[Batch] = [
            self.data.loader.next() for _ in range(self.cfg.data.grad_accum_steps)
        ]
        queue_depth = self.data.loader.queue_depth()
        t_data = time.perf_counter() - t0
        local_tokens = sum(b.target_tokens for b in batches)
        (global_tokens,) = self.engine.all_reduce_sum([float(local_tokens)])
        scale = self.engine.loss_multiplier / max(global_tokens, 1.0)
        lr = lr_at(self.step, self.cfg)
        loss_sum = 0.0
        for i, batch in enumerate(batches):
            loss_sum += self.engine.forward_backward(batch, scale, last=i == len(batches) - 1)
        grad_norm = self.engine.step(lr)
        total_loss, stop = self.engine.all_reduce_sum([loss_sum, 1.0 if self.stop.set else 0.0])
        self.step += 1
        self.tokens_seen += self.tokens_per_step
        loss = total_loss / max(global_tokens, 1.0)
        self.losses.append(loss)
        seconds = time.perf_counter() - t0
        out = {
            "training_loss": loss,
            "training_gradient_norm": grad_norm,
            "training_learning_rate": lr,
            "training_step_seconds": seconds,
            "training_tokens_per_second": self.tokens_per_step / seconds,
            "training_dataloader_queue_depth": float(queue_depth),
            "training_tokens_seen_total": float(self.tokens_seen),
            "data_wait_seconds": t_data,
            "stop": stop,  # any rank got a stop signal (every rank sees the same sum)
        }
        if self.engine.allreduce_seconds is not None:
            out["training_allreduce_seconds"] = self.engine.allreduce_seconds
        if self.data.cache is not None:
            out["training_shard_prefetch_queue_depth"] = float(self.data.loader.cache_queue_depth())
        return out

    def write_requeue_marker(self) -> None:
        """``<save_dir>/requeue.json``: the launcher-independent record that this run asks to
        be requeued (torchrun exits 1 even when its workers exit 75)."""
        if self.checkpoints is None or self.engine.rank != 0:
            return
        marker = {
            "exit_code": EXIT_REQUEUE,
            "signal": self.stop.signal,
            "step": self.step,
            "checkpoint": self.checkpoints.folder_name(self.step),
            "time": time.time(),
        }
        write_atomic(self.checkpoints.dir / REQUEUE_MARKER, json.dumps(marker).encode())

    def checkpoint_due(self) -> bool:
        """Every ``checkpoint.interval`` steps."""
        interval = self.cfg.checkpoint.interval
        return self.checkpoints is not None and interval > 0 and self.step % interval == 0

    def eval_due(self) -> bool:
        """Every ``eval_interval`` steps when there is held-out data."""
        n = self.cfg.eval_interval
        return self.data.eval_loader is not None and n > 0 and self.step % n == 0

    def _saved_at(self, step: int) -> bool:
        assert self.checkpoints is not None
        return (self.checkpoints.dir / self.checkpoints.folder_name(step)).exists()

    def save(self) -> Path | None:
        """Checkpoint now; records step, tokens, data position, config and last metrics."""
        if self.checkpoints is None:
            return None
        t0 = time.perf_counter()
        meta = {
            "tokens_seen": self.tokens_seen,
            "data": self.data.loader.sampler.state_dict(),
            "engine": self.engine.name,
            "world_size": self.engine.world,
            "config": self.cfg.to_dict(),
            "metrics": {"loss": self.losses[-1] if self.losses else None},
        }
        if self.data.tokenizer is not None:
            meta["tokenizer"] = {
                "sha256": self.data.tokenizer.fingerprint(),
                "vocab_size": self.data.tokenizer.vocab_size,
            }
        path = self.checkpoints.save(self.step, meta)
        seconds = time.perf_counter() - t0
        self.last["training_checkpoint_seconds"] = seconds
        self.logger.event("checkpoint", {"step": self.step, "path": str(path), "seconds": seconds})
        return path

    def evaluate(self) -> dict[str, float]:
        """Mean token loss and perplexity over ``eval_batches`` held-out micro-batches."""
        loader = self.data.eval_loader
        assert loader is not None
        loader.sampler.position = 0
        loader.reset()
        loss_sum, tokens = 0.0, 0
        for _ in range(self.cfg.eval_batches):
            batch = loader.next()
            loss_sum += self.engine.eval_loss(batch)
            tokens += batch.target_tokens
        loss_sum, tokens_f = self.engine.all_reduce_sum([loss_sum, float(tokens)])
        loss = loss_sum / max(tokens_f, 1.0)
        return {"training_eval_loss": loss, "training_eval_perplexity": math.exp(min(loss, 50.0))}

    def log(self, metrics: dict[str, float], final: bool = False) -> None:
        """Hand the step's metrics to the logger (rank 0's logger; others drop them) every
        ``log_interval`` steps, after an evaluation, and at the last step of the run."""
        if self.step % self.cfg.log_interval and not final and "training_eval_loss" not in metrics:
            return
        values = {
            **metrics,
            **self.last,
            "training_device_memory_bytes": float(peak_memory_bytes()),
            "training_iterations_total": float(self.step - self.start_step),
        }
        self.last = {}
        self.logger.log(self.step, values)
        if self.engine.rank == 0:
            log.info(
                "step %d loss %.4f grad_norm %.3f lr %.2e tok/s %.0f",
                self.step,
                metrics["training_loss"],
                metrics["training_gradient_norm"],
                metrics["training_learning_rate"],
                metrics["training_tokens_per_second"],
            )


@dataclass
class Run:
    """Everything built for one training run, closed in reverse order."""

    cfg: TrainConfig
    engine: Engine
    data: Data
    checkpoints: CheckpointManager | None
    logger: MetricsLogger
    trainer: Trainer

    def close(self) -> None:
        """Close logger, data, checkpoints and the process group."""
        self.logger.close()
        self.data.close()
        if self.checkpoints is not None:
            self.checkpoints.close()
        self.engine.close()


def build_run(cfg: TrainConfig, stop: StopFlag | None = None) -> Run:
    """Engine (and process group), data, checkpoint manager, logger and trainer for ``cfg``."""
    engine = init_engine(cfg)
    data = build_data(cfg, engine.rank, engine.dims.data)
    ck = cfg.checkpoint
    checkpoints = CheckpointManager(ck.save_dir, engine, ck.keep_last) if ck.save_dir else None
    jsonl = cfg.metrics_jsonl or (str(Path(ck.save_dir) / "metrics.jsonl") if ck.save_dir else "")
    logger = build_logger(engine.rank, jsonl, cfg.metrics_port, {"run": cfg.name})
    params = count_params(cfg.model)
    logger.event(
        "config",
        {
            "config": cfg.to_dict(),
            "params": params,
            "flops_per_token": flops_per_token(cfg.model, cfg.data.seq_len),
            "world_size": engine.world,
        },
    )
    trainer = Trainer(cfg, engine, data, checkpoints, logger, stop)
    return Run(cfg, engine, data, checkpoints, logger, trainer)
