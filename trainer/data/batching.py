"""Samples -> model batches: tokenise, normalise images and waveforms, pad, and prefetch.

Sequence layout (``seq_len`` tokens)::

    <bos> [<img> <img_patch> x Ni </img>] [<wav> <wav_patch> x Nw </wav>] text... <eos> <pad>...

Only text and ``<eos>`` carry loss: label ``t`` is token ``t+1`` when that token is text or
``<eos>``, else ``IGNORE_INDEX``. Images: the first stack's slices are resampled evenly to
``slices`` and bilinearly to ``image_size``; grayscale uses the stack's default window from
the sample metadata (``meta["images"][0]["window"] = [center, width]``) when present, else the
stack's min..max; colour is averaged to gray. Waveforms are cropped or zero-padded to
``channels x samples`` and standardised per channel.
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
import queue
import signal
import threading
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from trainer.config import ModelConfig
from trainer.data.sampler import ResumableSampler
from trainer.data.shards import Sample, ShardReader
from trainer.data.tokenizer import (
    BOS_ID,
    EOS_ID,
    IMAGE_PATCH_ID,
    IMG_END_ID,
    IMG_ID,
    PAD_ID,
    WAV_END_ID,
    WAV_ID,
    WAVE_PATCH_ID,
    Tokenizer,
)

IGNORE_INDEX = -100


@dataclass
class Batch:
    """One micro-batch of tensors plus bookkeeping."""

    input_ids: torch.Tensor  # [B, T] int64
    labels: torch.Tensor  # [B, T] int64, IGNORE_INDEX where no loss
    images: torch.Tensor | None  # [B, S, R, R] float32, zeros where image_mask is False
    image_mask: torch.Tensor | None  # [B] bool
    waves: torch.Tensor | None  # [B, C, L] float32
    wave_mask: torch.Tensor | None  # [B] bool
    indices: list[int]  # dataset indices of the rows

    @property
    def target_tokens(self) -> int:
        """Tokens that carry loss in this micro-batch."""
        return int((self.labels != IGNORE_INDEX).sum())

    def model_inputs(self) -> dict[str, Any]:
        """Keyword arguments of ``MultimodalLM.forward``."""
        return {
            "input_ids": self.input_ids,
            "labels": self.labels,
            "images": self.images,
            "image_mask": self.image_mask,
            "waves": self.waves,
            "wave_mask": self.wave_mask,
        }


def normalise_image(
    stack: np.ndarray, meta: dict[str, Any], slices: int, size: int
) -> torch.Tensor:
    """int16 ``[S, R, C]`` or uint8 ``[S, R, C, 3]`` -> float32 ``[slices, size, size]``, 0..1."""
    x = torch.from_numpy(np.ascontiguousarray(stack)).float()
    if x.ndim == 4:  # colour: [S, R, C, 3] -> gray in [0, 1]
        x = x.mean(-1) / 255.0
    else:
        window = (meta.get("images") or [{}])[0].get("window")
        if window:
            center, width = float(window[0]), max(float(window[1]), 1e-6)
            x = ((x - (center - width / 2)) / width).clamp(0.0, 1.0)
        else:
            lo, hi = x.min(), x.max()
            x = (x - lo) / (hi - lo).clamp_min(1e-6)
    pick = torch.linspace(0, x.shape[0] - 1, slices).round().long()  # evenly spaced slices
    x = x[pick]  # [slices, R, C]
    x = F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False)[0]
    return x  # [slices, size, size]


def normalise_wave(wave: np.ndarray, channels: int, samples: int) -> torch.Tensor:
    """float32 ``[C, L]`` -> ``[channels, samples]``, zero-padded/cropped, per-channel z-score."""
    out = torch.zeros(channels, samples)
    x = torch.from_numpy(np.ascontiguousarray(wave)).float()[:channels, :samples]
    x = (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True, unbiased=False) + 1e-6)
    out[: x.shape[0], : x.shape[1]] = x
    return out


class Collator:
    """Turns samples into a :class:`Batch` for a given model configuration."""

    def __init__(self, cfg: ModelConfig, tokenizer: Tokenizer, seq_len: int) -> None:
        self.cfg, self.tok, self.seq_len = cfg, tokenizer, seq_len
        if tokenizer.vocab_size > cfg.vocab_size:
            raise ValueError(
                f"tokenizer has {tokenizer.vocab_size} ids but model.vocab_size is {cfg.vocab_size}"
            )

    def tokens(self, sample: Sample) -> tuple[list[int], int]:
        """Token ids of one sample and the index where its text starts."""
        ids = [BOS_ID]
        if self.cfg.image.enabled and sample.images:
            ids += [IMG_ID] + [IMAGE_PATCH_ID] * self.cfg.image.tokens + [IMG_END_ID]
        if self.cfg.waveform.enabled and sample.wave is not None:
            ids += [WAV_ID] + [WAVE_PATCH_ID] * self.cfg.waveform.tokens + [WAV_END_ID]
        text_start = len(ids)
        room = self.seq_len - text_start - 1  # keep one slot for <eos>
        ids += [*self.tok.encode(sample.text or "")[:room], EOS_ID]
        return ids, text_start

    def __call__(self, samples: list[Sample], indices: list[int]) -> Batch:
        b, t = len(samples), self.seq_len
        input_ids = torch.full((b, t), PAD_ID, dtype=torch.long)
        labels = torch.full((b, t), IGNORE_INDEX, dtype=torch.long)
        img, wav = self.cfg.image, self.cfg.waveform
        images = torch.zeros(b, img.slices, img.image_size, img.image_size) if img.enabled else None
        waves = torch.zeros(b, wav.channels, wav.samples) if wav.enabled else None
        image_mask = torch.zeros(b, dtype=torch.bool)
        wave_mask = torch.zeros(b, dtype=torch.bool)
        for row, sample in enumerate(samples):
            ids, text_start = self.tokens(sample)
            input_ids[row, : len(ids)] = torch.tensor(ids)
            # Predict each text token and <eos> from the token before it.
            labels[row, text_start - 1 : len(ids) - 1] = torch.tensor(ids[text_start:])
            if images is not None and sample.images:
                images[row] = normalise_image(
                    sample.images[0], sample.meta, img.slices, img.image_size
                )
                image_mask[row] = True
            if waves is not None and sample.wave is not None:
                waves[row] = normalise_wave(sample.wave, wav.channels, wav.samples)
                wave_mask[row] = True
        return Batch(
            input_ids,
            labels,
            images,
            image_mask if images is not None else None,
            waves,
            wave_mask if waves is not None else None,
            list(indices),
        )


class BatchLoader:
    """Builds this rank's next micro-batches in sampler order, ahead of the trainer.

    ``process=True`` (what training uses) reads and collates in a worker process;
    ``process=False`` in a thread of this process. A thread costs the training loop more than
    its own work: reading and collating is mostly Python, and every time the loop's thread
    comes back from a torch call it may have to wait for the loader to hand back the GIL (on
    the ``tiny`` CPU model that made each step about 17 % slower).

    The worker is forked from multiprocessing's *forkserver* (a small process started once,
    with this module imported), not from the trainer: it inherits no CUDA context, process
    group, threads, held locks, open sockets, or gigabytes of copy-on-write optimizer state.
    It opens its own reader on ``reader.root`` and, with a cache, its own :class:`ShardCache`
    on the same folder (copies are atomic, so two caches on one folder are safe). Batches
    travel as numpy arrays through a pipe (no ``/dev/shm``, which containers often cap at
    64 MiB). It ignores SIGTERM/SIGUSR1/SIGINT (the trainer decides when to stop) and exits
    when the trainer closes it or dies.

    The sampler position only advances when the trainer takes a batch (:meth:`next`), so the
    position saved in a checkpoint is exactly the next sample to train on, whatever was
    prefetched. ``queue_depth`` is the number of ready batches (0 means the GPU waits on data).
    """

    def __init__(
        self,
        reader: ShardReader,
        sampler: ResumableSampler,
        collate: Collator,
        depth: int = 4,
        cache: Any = None,
        process: bool = False,
    ) -> None:
        self.reader, self.sampler, self.collate, self.depth = reader, sampler, collate, depth
        self.cache = cache
        self.process = process
        # queue.Queue (thread) or a multiprocessing Queue (process)
        self._queue: Any = None
        self._thread: threading.Thread | None = None
        self._worker: Any = None  # multiprocessing.Process
        self._stop: Any = threading.Event()
        self._cache_depth = 0  # shards the producer's cache still has to prefetch

    def start(self) -> None:
        """Start producing from the sampler's position now (else on the first :meth:`next`)."""
        if self._thread is not None or self._worker is not None:
            return
        if not self.process:
            self._stop = threading.Event()
            self._queue = queue.Queue(self.depth)
            self._thread = threading.Thread(
                target=_produce,
                args=(self.sampler.position, self._spec(), self._queue, self._stop),
                daemon=True,
            )
            self._thread.start()
            return
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])  # the server imports torch once, not each worker
        self._stop = ctx.Event()
        self._queue = ctx.Queue(self.depth)
        _grow_pipe(self._queue)
        self._worker = ctx.Process(
            target=_worker_main,
            args=(self.sampler.position, self._spec(), self._queue, self._stop),
            name="batch-loader",
            daemon=True,
        )
        self._worker.start()

    def _spec(self) -> _Producer:
        if not self.process:
            return _Producer(self.reader, self.sampler, self.collate, self.depth, self.cache)
        cache = self.cache
        return _Producer(
            None, self.sampler, self.collate, self.depth, None, root=str(self.reader.root),
            cache_args=(str(cache.source), str(cache.dir), cache.prefetch) if cache else None,
        )  # fmt: skip

    def _get(self) -> Any:
        if self._worker is None:
            return self._queue.get()
        while True:
            try:
                return self._queue.get(timeout=1.0)
            except queue.Empty:
                if not self._worker.is_alive():
                    raise RuntimeError(
                        f"batch loader process exited with code {self._worker.exitcode}"
                    ) from None

    def next(self) -> Batch:
        """The next micro-batch; advances the sampler by one global micro-batch."""
        self.start()
        item = self._get()
        if isinstance(item, BaseException):
            raise item
        position, batch, self._cache_depth = item
        assert position == self.sampler.position, "prefetched batch out of order"
        self.sampler.next()
        return _unpack(batch) if self._worker is not None else batch

    def queue_depth(self) -> int:
        """Micro-batches built and waiting."""
        return self._queue.qsize() if self._queue is not None else 0

    def cache_queue_depth(self) -> int:
        """Shards the producer's cache still had to prefetch when it built the last batch."""
        return self._cache_depth

    def reset(self) -> None:
        """Drop prefetched batches (after the sampler position is changed, e.g. on resume)."""
        self.close()

    def close(self) -> None:
        """Stop the producer (thread or process)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._worker is not None:
            self._worker.join(timeout=5)
            if self._worker.is_alive():
                self._worker.kill()
                self._worker.join()
            self._queue.close()
            self._worker = None

    def __iter__(self) -> Iterator[Batch]:
        while True:
            yield self.next()


@dataclass
class _Producer:
    """What the producer needs; in a worker, ``reader`` and ``cache`` are opened there."""

    reader: ShardReader | None
    sampler: ResumableSampler
    collate: Collator
    depth: int
    cache: Any
    root: str = ""
    cache_args: tuple[str, str, int] | None = None


def _produce(start: int, p: _Producer, out: Any, stop: Any, alive: Any = None) -> None:
    """Put ``(position, batch, cache depth)`` for positions ``start``, ``start + g``, ...

    Absolute stream positions: the trainer advances ``sampler.position`` concurrently. In a
    worker (``alive`` given) batches travel packed as numpy arrays.
    """
    assert p.reader is not None
    in_worker = alive is not None
    step = p.sampler.global_batch
    ahead = 0
    try:
        while not stop.is_set():
            position = start + ahead * step
            indices = p.sampler.at(position)
            if p.cache is not None:
                upcoming = p.sampler.at(position + p.depth * step)
                shard_names = p.reader.shard_names
                names = [shard_names[p.reader.shard_of[i]] for i in upcoming]
                p.cache.want(list(dict.fromkeys(names)))
            batch = p.collate([p.reader[i] for i in indices], indices)
            cache_depth = p.cache.queue_depth() if p.cache is not None else 0
            item = (position, _pack(batch) if in_worker else batch, cache_depth)
            while not stop.is_set():
                if in_worker and not alive():
                    return  # the trainer died without closing us
                try:
                    out.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            ahead += 1
    except BaseException as exc:  # surfaced to the trainer on its next call to next()
        if in_worker:
            raise
        out.put(exc)


def _worker_main(start: int, p: _Producer, out: Any, stop: Any) -> None:
    """Entry point of the loader process."""
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    torch.set_num_threads(1)
    try:
        if p.cache_args is not None:
            from trainer.data.cache import ShardCache

            p.cache = ShardCache(*p.cache_args)
        p.reader = ShardReader(p.root, resolve=p.cache.path if p.cache is not None else None)
        parent = mp.parent_process()  # the trainer (not the forkserver)
        assert parent is not None
        _produce(start, p, out, stop, alive=parent.is_alive)
    except BaseException as exc:
        out.put(_picklable(exc))  # surfaced to the trainer on its next call to next()
        out.close()
        out.join_thread()  # the error reaches the pipe before this process exits
    else:
        out.cancel_join_thread()  # stopped: exit without waiting for the pipe to drain
    finally:
        if p.cache is not None:
            p.cache.close()
        if p.reader is not None:
            p.reader.close()


_FIELDS = ("input_ids", "labels", "images", "image_mask", "waves", "wave_mask")


def _pack(batch: Batch) -> tuple[Any, ...]:
    """A batch as numpy arrays (pickled by value through the worker's pipe)."""
    arrays = tuple(None if (t := getattr(batch, f)) is None else t.numpy() for f in _FIELDS)
    return (*arrays, batch.indices)


def _unpack(packed: tuple[Any, ...]) -> Batch:
    t = [None if a is None else torch.from_numpy(a) for a in packed[:-1]]
    return Batch(t[0], t[1], t[2], t[3], t[4], t[5], packed[-1])  # type: ignore[arg-type]


def _grow_pipe(q: Any, size: int = 1 << 20) -> None:
    """Let a whole small batch sit in the queue's pipe (Linux; 64 KiB by default), so the
    trainer reads it in one go instead of waking the worker for every 64 KiB."""
    try:
        import fcntl

        fcntl.fcntl(q._writer.fileno(), fcntl.F_SETPIPE_SZ, size)
    except (ImportError, AttributeError, OSError):  # not Linux, or above pipe-max-size
        pass


def _picklable(exc: BaseException) -> BaseException:
    """``exc`` itself when it survives pickling, else a RuntimeError carrying its traceback."""
    try:
        pickle.dumps(exc)
        return exc
    except Exception:
        text = "".join(traceback.format_exception(exc))
        return RuntimeError(f"batch loader process failed:\n{text}")
