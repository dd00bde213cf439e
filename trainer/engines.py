"""Engines: how one micro-batch is run forward and backward, how a step is taken, and how the
model and optimizer state is saved. One narrow interface, four implementations:

- ``single``: one process, plain model.
- ``ddp``: ``DistributedDataParallel`` (gloo on CPU, NCCL on GPU).
- ``fsdp2``: ``fully_shard`` on every transformer block, then on the root; DCP checkpoints.
- ``deepspeed``: ZeRO stage 0-3 from :mod:`trainer.ds_config`, client ``torch.optim.AdamW``.

Parallelism is applied in a fixed order: activation checkpointing (inside the model, from
``model.activation_checkpointing``), then data parallel / sharding. Tensor and pipeline
parallel degrees above 1 are validated by :class:`trainer.config.ParallelDims` but refused here.

Loss normalisation: the model returns a *sum* of token losses; the trainer multiplies each
micro-batch's sum by ``loss_multiplier / N`` where N is the global number of loss tokens in the
optimizer step. Every engine averages gradients over ranks (DeepSpeed also divides by the
accumulation steps), and ``loss_multiplier`` undoes exactly that, so the gradient is the mean
over all tokens of the step whatever the engine, rank count or padding.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import random
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from trainer.config import ConfigError, ParallelDims, TrainConfig
from trainer.data.batching import Batch
from trainer.model import Block, MultimodalLM, build_model


def dist_env() -> tuple[int, int, int]:
    """(rank, local_rank, world) from torchrun's variables, else Slurm's, else a single process.

    Reading Slurm's lets ``srun python -m trainer ...`` start one task per GPU without torchrun,
    so Slurm's pre-emption signal reaches the trainer processes directly.
    """
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env.get("LOCAL_RANK", 0)), int(env["WORLD_SIZE"])
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        rank, world = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"])
        local = int(env.get("SLURM_LOCALID", 0))
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local))
        return rank, local, world
    return 0, 0, 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pick_device(local_rank: int) -> torch.device:
    """CUDA device of this local rank when there is a GPU, else the CPU."""
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: matrices decay, vectors (norm weights) do not."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for _, param in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if param.requires_grad:
            # ZeRO-3 partitioned parameters are empty locally; ds_shape is the real shape.
            ndim = len(getattr(param, "ds_shape", param.shape))
            (decay if ndim >= 2 else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def rng_state() -> dict[str, Any]:
    """Every RNG this process uses, for a checkpoint."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Engine:
    """Runs micro-batches and optimizer steps; owns model, optimizer and process group."""

    name = "base"

    def __init__(self, cfg: TrainConfig, dims: ParallelDims, rank: int, device: torch.device):
        if dims.tensor != 1 or dims.pipeline != 1:
            raise ConfigError(
                f"engine {cfg.parallel.engine!r} implements data parallelism only; got "
                f"tensor_parallel={dims.tensor}, pipeline_parallel={dims.pipeline}"
            )
        self.cfg, self.dims, self.rank, self.device = cfg, dims, rank, device
        self.world = dims.world_size
        self.allreduce_seconds: float | None = None
        # nn.Module, DDP, an FSDP2-sharded module or a DeepSpeed engine (methods of its own).
        self.model: Any
        self.optimizer: torch.optim.Optimizer

    # ---- collectives shared by every engine

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Sum small scalars across ranks (float64 so token counts stay exact)."""
        if self.world == 1 or not dist.is_initialized():
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t)
        return t.tolist()

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.world > 1:
            dist.barrier()

    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    # ---- the training contract

    @property
    def loss_multiplier(self) -> float:
        """Factor that cancels the engine's own gradient averaging (see module docstring)."""
        return float(self.dims.data)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.cfg.parallel.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _inputs(self, batch: Batch) -> dict[str, Any]:
        return {
            k: (v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
            for k, v in batch.model_inputs().items()
        }

    def forward_backward(self, batch: Batch, scale: float, last: bool) -> float:
        """Forward + backward of one micro-batch; returns its summed token loss."""
        raise NotImplementedError

    def step(self, lr: float) -> float:
        """Clip, take the optimizer step at ``lr``, zero gradients; returns the gradient norm."""
        raise NotImplementedError

    @torch.no_grad()
    def eval_loss(self, batch: Batch) -> float:
        """Summed token loss of ``batch`` without gradients."""
        self.model.eval()
        with self._autocast():
            loss = self.model(**self._inputs(batch))
        self.model.train()
        return float(loss)

    def save_state(self, directory: Path) -> None:
        """Write model + optimizer state into ``directory`` (called on every rank)."""
        raise NotImplementedError

    def load_state(self, directory: Path) -> None:
        """Read what :meth:`save_state` wrote (called on every rank)."""
        raise NotImplementedError

    def close(self) -> None:
        """Tear down the process group."""
        if dist.is_initialized():
            dist.destroy_process_group()


class TorchEngine(Engine):
    """``single`` and ``ddp``: full model replicas, torch AdamW, rank 0 saves one file."""

    def __init__(self, cfg: TrainConfig, dims: ParallelDims, rank: int, device: torch.device):
        super().__init__(cfg, dims, rank, device)
        self.name = cfg.parallel.engine
        self.raw: MultimodalLM = build_model(cfg.model, device, seed=cfg.seed)
        self.model = self.raw
        if self.name == "ddp":
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [device.index] if device.type == "cuda" else None
            self.model = DDP(self.raw, device_ids=ids)
            if device.type == "cpu":
                self._time_allreduce()
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(
            param_groups(self.raw, o.weight_decay),
            lr=o.lr,
            betas=(o.beta1, o.beta2),
            eps=o.eps,
            foreach=False,  # identical arithmetic across engines for the loss-match tests
        )

    def _time_allreduce(self) -> None:
        # On CPU/gloo the hook can wait for each bucket without losing overlap that matters;
        # on GPUs waiting would serialise NCCL with compute, so it is not installed there.
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        # Unannotated on purpose: DDP checks hook annotations against dist.GradBucket, and
        # postponed (string) annotations would fail that check.
        def hook(state, bucket):  # type: ignore[no-untyped-def]
            t0 = time.perf_counter()
            fut = allreduce_hook(state, bucket)
            fut.wait()
            self._allreduce_acc += time.perf_counter() - t0
            return fut

        self._allreduce_acc = 0.0
        self.model.register_comm_hook(None, hook)

    def forward_backward(self, batch: Batch, scale: float, last: bool) -> float:
        """Forward + backward; DDP syncs gradients only on the last micro-batch."""
        sync = (
            contextlib.nullcontext() if last or self.name != "ddp" else self.model.no_sync()  # type: ignore[operator]
        )
        with sync:
            with self._autocast():
                loss = self.model(**self._inputs(batch))
            (loss * scale).backward()
        return float(loss.detach())

    def step(self, lr: float) -> float:
        """Clip to ``optim.grad_clip``, AdamW step, zero gradients."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        clip = self.cfg.optim.grad_clip or float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.raw.parameters(), clip, foreach=False)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.name == "ddp" and self.device.type == "cpu":
            self.allreduce_seconds, self._allreduce_acc = self._allreduce_acc, 0.0
        return float(norm)

    def save_state(self, directory: Path) -> None:
        """Rank 0 writes ``model.pt`` and ``optimizer.pt``; every rank its ``rng-<rank>.pt``."""
        if self.rank == 0:
            torch.save(self.raw.state_dict(), directory / "model.pt")
            torch.save(self.optimizer.state_dict(), directory / "optimizer.pt")
        torch.save(rng_state(), directory / f"rng-{self.rank}.pt")

    def load_state(self, directory: Path) -> None:
        """Load full model and optimizer state (any world size can resume it)."""
        self.raw.load_state_dict(torch.load(directory / "model.pt", map_location=self.device))
        self.optimizer.load_state_dict(
            torch.load(directory / "optimizer.pt", map_location=self.device)
        )
        rng = directory / f"rng-{self.rank}.pt"
        if rng.exists():
            set_rng_state(torch.load(rng, weights_only=False))


class FSDP2Engine(Engine):
    """``fully_shard`` per transformer block and on the root; DCP sharded checkpoints."""

    name = "fsdp2"

    def __init__(self, cfg: TrainConfig, dims: ParallelDims, rank: int, device: torch.device):
        super().__init__(cfg, dims, rank, device)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        self.mesh = init_device_mesh(device.type, (dims.data,))
        # Build on the meta device and shard before allocating: no rank ever materialises the
        # whole model (torchtitan's order), then allocate the local shards and initialise.
        model = build_model(cfg.model, "meta")
        mp = MixedPrecisionPolicy()
        if cfg.parallel.precision == "bf16":
            mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for module in model.modules():
            if isinstance(module, Block):
                fully_shard(module, mesh=self.mesh, mp_policy=mp)
        fully_shard(model, mesh=self.mesh, mp_policy=mp)
        model.to_empty(device=device)
        self._init_sharded(model, cfg.seed)
        self.model = model
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(
            param_groups(model, o.weight_decay),
            lr=o.lr,
            betas=(o.beta1, o.beta2),
            eps=o.eps,
            foreach=False,
        )

    @staticmethod
    def _init_sharded(model: MultimodalLM, seed: int) -> None:
        """Same values as ``init_weights`` (same generator stream), written shard by shard."""
        from torch.distributed.tensor import DTensor, distribute_tensor

        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, param in model.named_parameters():
                value = model.init_value(name, param.shape, gen)  # full shape, on CPU
                if isinstance(param, DTensor):
                    value = distribute_tensor(
                        value.to(param.device), param.device_mesh, param.placements
                    )
                param.copy_(value)

    def _autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # FSDP2's MixedPrecisionPolicy casts instead

    def forward_backward(self, batch: Batch, scale: float, last: bool) -> float:
        """Forward + backward; gradient reduce-scatter only on the last micro-batch."""
        self.model.set_requires_gradient_sync(last)  # type: ignore[operator]
        loss = self.model(**self._inputs(batch))
        (loss * scale).backward()
        return float(loss.detach())

    def step(self, lr: float) -> float:
        """Clip (DTensor-aware), AdamW step, zero gradients."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        clip = self.cfg.optim.grad_clip or float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip, foreach=False)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def save_state(self, directory: Path) -> None:
        """DCP: each rank writes its shards; ``.metadata`` describes the whole."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(directory / "dcp"))
        torch.save(rng_state(), directory / f"rng-{self.rank}.pt")

    def load_state(self, directory: Path) -> None:
        """DCP load (reshards if the world size changed) then set into model and optimizer."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=str(directory / "dcp"))
        set_state_dict(
            self.model,
            self.optimizer,
            model_state_dict=model_sd,  # filled in place by dcp.load
            optim_state_dict=optim_sd,
        )
        rng = directory / f"rng-{self.rank}.pt"
        if rng.exists():
            set_rng_state(torch.load(rng, weights_only=False))


class DeepSpeedEngine(Engine):
    """DeepSpeed ZeRO-0/1/2/3 with the config from :func:`trainer.ds_config.build_ds_config`."""

    name = "deepspeed"

    def __init__(self, cfg: TrainConfig, dims: ParallelDims, rank: int, device: torch.device):
        super().__init__(cfg, dims, rank, device)
        import deepspeed

        from trainer.ds_config import build_ds_config

        self.ds_config = build_ds_config(cfg, dims, hidden_size=cfg.model.d_model)
        if cfg.parallel.zero_stage == 3:
            model = self._build_partitioned(cfg, device)
        else:
            model = build_model(cfg.model, device, seed=cfg.seed)
        o = cfg.optim
        optimizer = None
        if not cfg.parallel.offload_optimizer:
            # A client torch AdamW avoids JIT-building FusedAdam/CPUAdam (50-105 s on CPU).
            optimizer = torch.optim.AdamW(
                param_groups(model, o.weight_decay),
                lr=o.lr,
                betas=(o.beta1, o.beta2),
                eps=o.eps,
                foreach=False,
            )
        self.model, self.optimizer, _, _ = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            model_parameters=None if optimizer else param_groups(model, o.weight_decay),
            config=self.ds_config,
        )
        self._micro = 0

    def _build_partitioned(self, cfg: TrainConfig, device: torch.device) -> nn.Module:
        """ZeRO-3: partition each parameter as it is created, so no rank ever holds the whole
        model (a 70B model does not fit one GPU), then initialise one parameter at a time."""
        import deepspeed

        remote = "cpu" if cfg.parallel.offload_params else None
        with deepspeed.zero.Init(config_dict_or_path=self.ds_config, remote_device=remote):
            model = MultimodalLM(cfg.model)
        gen = torch.Generator().manual_seed(cfg.seed)
        with torch.no_grad():
            for name, param in model.named_parameters():
                # Gathers only this parameter (the largest is the embedding); rank 0 writes
                # it and DeepSpeed re-partitions the new value on exit.
                with deepspeed.zero.GatheredParameters([param], modifier_rank=0):
                    if self.rank == 0:
                        value = model.init_value(name, param.shape, gen)
                        param.copy_(value.to(device=param.device, dtype=param.dtype))
        return model

    @property
    def loss_multiplier(self) -> float:
        """DeepSpeed averages over ranks and divides by the accumulation steps."""
        return float(self.dims.data * self.cfg.data.grad_accum_steps)

    def _autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # the engine holds bf16 weights itself

    def _inputs(self, batch: Batch) -> dict[str, Any]:
        inputs = super()._inputs(batch)
        if self.cfg.parallel.precision == "bf16":
            for key in ("images", "waves"):
                if inputs[key] is not None:
                    inputs[key] = inputs[key].to(torch.bfloat16)
        return inputs

    def forward_backward(self, batch: Batch, scale: float, last: bool) -> float:
        """Forward + ``engine.backward``; DeepSpeed tracks the accumulation boundary itself."""
        loss = self.model(**self._inputs(batch))
        self.model.backward(loss * scale)
        self._micro += 1
        if not last:
            self.model.step()  # not a boundary: DeepSpeed only counts the micro-step
        return float(loss.detach().float())

    def step(self, lr: float) -> float:
        """Set ``lr``, take the boundary step (DeepSpeed clips), return the global grad norm."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        own = None
        if self.cfg.parallel.zero_stage == 0:
            # ZeRO-0 keeps no global norm; measure it before the step consumes the gradients.
            grads = [p.grad for p in self.model.module.parameters() if p.grad is not None]
            own = float(torch.nn.utils.get_total_norm(grads)) if grads else None
        self.model.step()
        norm = self.model.get_global_grad_norm()
        if norm is None:
            norm = own
        return float(norm) if norm is not None else float("nan")

    def save_state(self, directory: Path) -> None:
        """``engine.save_checkpoint`` into ``directory/deepspeed`` on every rank."""
        self.model.save_checkpoint(str(directory), tag="deepspeed")
        torch.save(rng_state(), directory / f"rng-{self.rank}.pt")

    def load_state(self, directory: Path) -> None:
        """``engine.load_checkpoint`` (same world size; ZeRO shards are per rank)."""
        path, _ = self.model.load_checkpoint(str(directory), tag="deepspeed")
        if path is None:
            raise RuntimeError(f"{directory}: DeepSpeed found no checkpoint to load")
        rng = directory / f"rng-{self.rank}.pt"
        if rng.exists():
            set_rng_state(torch.load(rng, weights_only=False))


def load_model_weights(directory: Path, model: nn.Module, engine: str) -> None:
    """Load the weights of a checkpoint written by any engine into a plain, unwrapped model.

    Lets ``python -m trainer evaluate`` (one process) read FSDP2 and DeepSpeed checkpoints
    whatever world size wrote them: DCP reshards, DeepSpeed ZeRO shards are consolidated with
    its own ``zero_to_fp32`` helper.
    """
    directory = Path(directory)
    if engine in ("single", "ddp"):
        state = torch.load(directory / "model.pt", map_location="cpu")
    elif engine == "fsdp2":
        import torch.distributed.checkpoint as dcp

        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        box = {"model": state}
        dcp.load(box, checkpoint_id=str(directory / "dcp"), no_dist=True)
        state = box["model"]
    elif engine == "deepspeed":
        single = directory / "deepspeed" / "mp_rank_00_model_states.pt"
        if single.exists():  # ZeRO stage 0: whole module in one file
            state = torch.load(single, map_location="cpu", weights_only=False)["module"]
        else:
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

            state = get_fp32_state_dict_from_zero_checkpoint(str(directory), tag="deepspeed")
    else:
        raise ValueError(f"{directory}: unknown engine {engine!r} in its manifest")
    model.load_state_dict({k: v.float() for k, v in state.items()})


def init_engine(cfg: TrainConfig) -> Engine:
    """Start the process group the engine needs and build it (validates parallel dims)."""
    rank, local_rank, world = dist_env()
    dims = ParallelDims.from_config(cfg.parallel, world)
    device = pick_device(local_rank)
    engine = cfg.parallel.engine
    if engine == "deepspeed":
        import deepspeed

        os.environ.setdefault("DS_ACCELERATOR", "cuda" if device.type == "cuda" else "cpu")
        if world == 1 and "MASTER_ADDR" not in os.environ:
            # Without a launcher DeepSpeed tries MPI discovery (mpi4py); a 1-process
            # rendezvous on localhost avoids it.
            os.environ.update(
                RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(_free_port()),
            )  # fmt: skip
        deepspeed.init_distributed(
            dist_backend="nccl" if device.type == "cuda" else "gloo",
            timeout=datetime.timedelta(minutes=30),
        )
        return DeepSpeedEngine(cfg, dims, rank, device)
    if world > 1 or engine in ("ddp", "fsdp2"):
        if world == 1:
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
            os.environ.setdefault("RANK", "0")
            os.environ.setdefault("WORLD_SIZE", "1")
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            timeout=datetime.timedelta(minutes=30),
        )
    if engine in ("single", "ddp"):
        return TorchEngine(cfg, dims, rank, device)
    if engine == "fsdp2":
        return FSDP2Engine(cfg, dims, rank, device)
    raise ConfigError(f"parallel.engine {engine!r} is not implemented")
