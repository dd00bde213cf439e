"""A tiny synthetic multimodal dataset written through the real shard format.

Used by tests, benchmarks and ``python -m trainer synth``: reports whose wording depends on a
bright-square position in a CT-like int16 stack and on the rate of an ECG-like sine, so a model
can lower its loss by reading both the text and the other modalities. No real patient data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trainer.data.shards import Sample, ShardWriter
from trainer.data.tokenizer import Tokenizer

_SIDES = ("left upper", "right upper", "left lower", "right lower")
_RHYTHM = ("bradycardia", "normal sinus rhythm", "tachycardia")
_EXTRA = (
    "No acute findings otherwise.",
    "Follow-up in six months recommended.",
    "Compared with the prior study, stable.",
    "Clinical correlation advised.",
)


def make_sample(i: int, rng: np.random.Generator) -> Sample:
    """Sample ``i``: text always, image for 3 in 4, waveform for 2 in 3."""
    side = int(rng.integers(4))
    rhythm = int(rng.integers(3))
    has_image, has_wave = i % 4 != 3, i % 3 != 2
    parts = []
    images = []
    meta: dict = {"patient": f"P{i % 17:04d}", "deid_profile": "synthetic-1"}
    if has_image:
        stack = rng.normal(0, 20, size=(3, 32, 32)).astype(np.int16) - 1000  # air-ish HU
        r0, c0 = (side // 2) * 16, (side % 2) * 16
        stack[:, r0 + 4 : r0 + 12, c0 + 4 : c0 + 12] += 1040  # soft-tissue lesion
        images.append(stack.astype(np.int16))
        meta["images"] = [{"modality": "CT", "shape": list(stack.shape), "window": [40, 400]}]
        parts.append(f"CT chest shows a nodule in the {_SIDES[side]} lobe.")
    wave = None
    if has_wave:
        rate = (50, 75, 120)[rhythm]
        t = np.arange(256) / 100.0
        wave = np.stack([np.sin(2 * np.pi * rate / 60 * t + k) for k in range(12)]).astype(
            np.float32
        )
        wave += rng.normal(0, 0.05, size=wave.shape).astype(np.float32)
        meta["waveform"] = {"sampling_rate": 100, "channels": [f"L{k}" for k in range(12)]}
        parts.append(f"ECG shows {_RHYTHM[rhythm]}.")
    parts.append(_EXTRA[int(rng.integers(len(_EXTRA)))])
    return Sample(key=f"s{i:06d}", meta=meta, text=" ".join(parts), images=images, wave=wave)


def write_synthetic(
    out: str | Path, samples: int = 64, per_shard: int = 16, seed: int = 0, vocab_size: int = 512
) -> Path:
    """Write ``samples`` synthetic samples as shards in ``out`` plus ``out/tokenizer.json``."""
    rng = np.random.default_rng(seed)
    out = Path(out)
    texts = []
    with ShardWriter(out, samples_per_shard=per_shard, lineage={"source": "synthetic"}) as w:
        for i in range(samples):
            sample = make_sample(i, rng)
            texts.append(sample.text or "")
            w.write(sample)
    Tokenizer.train(texts, vocab_size).save(out / "tokenizer.json")
    return out
