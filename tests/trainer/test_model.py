"""The model: causal, multimodal splice, grouped-query attention, activation checkpointing."""

from __future__ import annotations

import pytest
import torch

from trainer.config import load_config
from trainer.data.batching import Collator
from trainer.data.shards import ShardReader
from trainer.data.tokenizer import Tokenizer
from trainer.model import build_model


@pytest.fixture
def batch(dataset):
    cfg = load_config("tiny")
    reader = ShardReader(dataset)
    tok = Tokenizer.load(dataset / "tokenizer.json")
    return Collator(cfg.model, tok, 64)([reader[i] for i in range(4)], list(range(4)))


def test_it_is_causal(batch) -> None:
    model = build_model(load_config("tiny").model, seed=1).eval()
    inputs = batch.model_inputs() | {"labels": None}
    logits = model(**inputs)
    changed = batch.input_ids.clone()
    changed[:, 40:] = 300
    logits2 = model(**inputs | {"input_ids": changed})
    assert torch.allclose(logits[:, :40], logits2[:, :40], atol=1e-5)
    assert not torch.allclose(logits[:, 40:], logits2[:, 40:])


def test_images_and_waveforms_reach_the_text_predictions(batch) -> None:
    model = build_model(load_config("tiny").model, seed=1).eval()
    inputs = batch.model_inputs()
    base = model(**inputs)
    assert model(**inputs | {"images": torch.rand_like(batch.images)}) != base
    assert model(**inputs | {"waves": torch.randn_like(batch.waves)}) != base
    # Sample 3 has no image, so its stream ignores whatever sits in its image row.
    row3 = inputs | {"input_ids": batch.input_ids[3:], "labels": batch.labels[3:]}
    row3 |= {"images": batch.images[3:], "image_mask": batch.image_mask[3:]}
    row3 |= {"waves": batch.waves[3:], "wave_mask": batch.wave_mask[3:]}
    noisy = row3 | {"images": torch.rand_like(batch.images[3:])}
    assert model(**row3) == model(**noisy)


def test_every_parameter_gets_a_gradient_even_without_images(batch) -> None:
    model = build_model(load_config("tiny").model, seed=1)
    inputs = batch.model_inputs() | {"image_mask": torch.zeros(4, dtype=torch.bool)}
    inputs["input_ids"] = torch.where(inputs["input_ids"] == 7, 300, inputs["input_ids"])
    model(**inputs).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_activation_checkpointing_gives_the_same_gradients(batch) -> None:
    cfg = load_config("tiny")
    plain = build_model(cfg.model, seed=2)
    cfg_ckpt = load_config("tiny", ["model.activation_checkpointing=true"])
    ckpt = build_model(cfg_ckpt.model, seed=2)
    plain(**batch.model_inputs()).backward()
    ckpt(**batch.model_inputs()).backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name


def test_grouped_query_attention_has_fewer_kv_weights() -> None:
    cfg = load_config("tiny")
    attn = build_model(cfg.model, device="meta").blocks[0].attn
    assert attn.wk.weight.shape == (cfg.model.n_kv_heads * 32, cfg.model.d_model)
    assert attn.wq.weight.shape == (cfg.model.n_heads * 32, cfg.model.d_model)


def test_initialisation_is_deterministic_per_seed() -> None:
    cfg = load_config("tiny").model
    a, b, c = build_model(cfg, seed=5), build_model(cfg, seed=5), build_model(cfg, seed=6)
    assert torch.equal(a.tok_embed.weight, b.tok_embed.weight)
    assert not torch.equal(a.tok_embed.weight, c.tok_embed.weight)
