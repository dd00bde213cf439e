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

import queue
import threading
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
    """Background thread that builds this rank's next micro-batches in sampler order.

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
    ) -> None:
        self.reader, self.sampler, self.collate, self.depth = reader, sampler, collate, depth
        self.cache = cache
        self._queue: queue.Queue[tuple[int, Batch] | BaseException] = queue.Queue(depth)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def _produce(self, start: int) -> None:
        # Absolute stream positions: the trainer advances sampler.position concurrently.
        step = self.sampler.global_batch
        ahead = 0
        try:
            while not self._stop.is_set():
                position = start + ahead * step
                indices = self.sampler.at(position)
                if self.cache is not None:
                    upcoming = self.sampler.at(position + self.depth * step)
                    shard_names = self.reader.shard_names
                    names = [shard_names[self.reader.shard_of[i]] for i in upcoming]
                    self.cache.want(list(dict.fromkeys(names)))
                batch = self.collate([self.reader[i] for i in indices], indices)
                while not self._stop.is_set():
                    try:
                        self._queue.put((position, batch), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                ahead += 1
        except BaseException as exc:  # surfaced to the trainer on the next call to next()
            self._queue.put(exc)

    def _start(self) -> None:
        self._stop.clear()
        self._queue = queue.Queue(self.depth)
        start = self.sampler.position
        self._thread = threading.Thread(target=self._produce, args=(start,), daemon=True)
        self._thread.start()

    def next(self) -> Batch:
        """The next micro-batch; advances the sampler by one global micro-batch."""
        if self._thread is None:
            self._start()
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        assert item[0] == self.sampler.position, "prefetched batch out of order"
        self.sampler.next()
        return item[1]

    def queue_depth(self) -> int:
        """Micro-batches built and waiting."""
        return self._queue.qsize()

    def reset(self) -> None:
        """Drop prefetched batches (after the sampler position is changed, e.g. on resume)."""
        self.close()
        self._thread = None

    def close(self) -> None:
        """Stop the background thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __iter__(self) -> Iterator[Batch]:
        while True:
            yield self.next()
