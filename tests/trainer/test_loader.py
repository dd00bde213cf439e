"""The loader process, and metrics written every log_interval steps."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from trainer.config import ConfigError, load_config
from trainer.data.batching import BatchLoader, Collator
from trainer.data.sampler import ResumableSampler
from trainer.data.shards import ShardFormatError, ShardReader
from trainer.data.tokenizer import Tokenizer
from trainer.metrics import PrometheusLogger


def process_loader(
    dataset: Path, sampler: ResumableSampler, depth: int = 3, process: bool = True
) -> BatchLoader:
    tok = Tokenizer.load(dataset / "tokenizer.json")
    collate = Collator(load_config("tiny").model, tok, 64)
    return BatchLoader(ShardReader(dataset), sampler, collate, depth=depth, process=process)


@pytest.mark.parametrize("process", [True, False], ids=["process", "thread"])
def test_the_loader_prefetches_in_order_and_reports_queue_depth(dataset, process) -> None:
    sampler = ResumableSampler(range(64), 4, seed=5)
    loader = process_loader(dataset, sampler, process=process)
    try:
        expected = ResumableSampler(range(64), 4, seed=5)
        first = loader.next()
        assert first.indices == expected.next()
        assert first.input_ids.shape == (4, 64)
        deadline = time.monotonic() + 20
        while loader.queue_depth() < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert loader.queue_depth() == 3
        assert sampler.position == 4  # prefetching does not advance the saved position
        assert loader.next().indices == expected.next()
        sampler.position = 40  # a resume: reset drops what was prefetched
        loader.reset()
        assert loader.next().indices == ResumableSampler(range(64), 4, seed=5).at(40)
    finally:
        loader.close()


def test_a_truncated_shard_read_in_the_loader_process_fails_the_trainer_naming_it(
    dataset, tmp_path
) -> None:
    broken = tmp_path / "v1"
    shutil.copytree(dataset, broken)
    for shard in broken.glob("shard-*.tar"):
        shard.write_bytes(shard.read_bytes()[:1024])
    loader = process_loader(broken, ResumableSampler(range(64), 4, seed=5))
    try:
        with pytest.raises(ShardFormatError, match=r"shard-\d+\.tar: member .* is truncated"):
            loader.next()
    finally:
        loader.close()


def test_the_thread_and_process_loaders_train_identically(train_losses, dataset, tiny) -> None:
    thread = train_losses(tiny(dataset, "", "optim.max_steps=3", "data.loader=thread"))
    process = train_losses(tiny(dataset, "", "optim.max_steps=3", "data.loader=process"))
    assert process == thread


def test_an_unknown_loader_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"data\.loader 'fork'"):
        load_config("tiny", ["data.loader=fork"])


def test_metrics_are_logged_every_log_interval_steps_and_at_the_last_step(
    train_losses, dataset, tmp_path, tiny
) -> None:
    log = tmp_path / "m.jsonl"
    train_losses(tiny(dataset, "", "optim.max_steps=6", "log_interval=4", f"metrics_jsonl={log}"))
    records = [json.loads(x) for x in log.read_text().splitlines()]
    steps = [r for r in records if "training_loss" in r]
    assert [r["step"] for r in steps] == [4, 6]
    assert [r["training_iterations_total"] for r in steps] == [4, 6]


def test_the_iteration_counter_counts_steps_between_sparse_records() -> None:
    logger = PrometheusLogger(0, {"run": "t"})
    try:
        logger.log(4, {"training_loss": 2.0, "training_iterations_total": 4.0})
        logger.log(6, {"training_loss": 1.5, "training_iterations_total": 6.0})
        value = logger.registry.get_sample_value("training_iterations_total", {"run": "t"})
        assert value == 6.0
    finally:
        logger.close()
