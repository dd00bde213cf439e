"""The demo's main job past the review sample: release, dataset version, verify, training.

Every step goes through the same services the pages and the API call, and the long ones
(de-identification, packing, re-hashing, the training job) through the real worker and the
local scheduler. The one stand-in is the reviewer: a script that knows the synthetic
cohort's answer key (``synthetic.planted``) judges each sampled file, passing it only when
none of the planted values is left in its bytes. It reviews a second de-identification run
of the same scan, so the first run's sample stays for a person to review.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import CommandError

from apps.core.context import bound_context
from apps.datasets import services as datasets
from apps.datasets import tokenizers
from apps.datasets.models import DatasetTokenizer, DatasetVersion
from apps.deid.models import DeidRun
from apps.demo import synthetic
from apps.jobs import services as jobs
from apps.jobs.models import TrainingRun
from apps.jobs.rendering import run_dir
from apps.jobs.validation import cpu_trial
from apps.review import services as review
from apps.review.models import ReviewBatch

DATASET_NAME = "demo-cohort"
RUN_NAME = "demo-tiny"
RUN_STEPS = 40
TINY_VOCAB = 512  # trainer/presets/tiny.yaml: model.vocab_size
# The smallest threshold the policy allows; with no failures it takes 59 clean reviews
# (0.05 ** (1 / 59) >= 0.95), so the scripted batch reviews every file of the run (72).
THRESHOLD = 0.95


def review_batch(run: DeidRun, steward: Any) -> ReviewBatch:
    """The run's live review batch, or a new one holding every de-identified file."""
    live = review.live_batch(run)
    if live is not None:
        return live
    with bound_context():
        return review.create_batch(
            run,
            acting_user=steward,
            fraction=review.policy("FRACTION_MIN"),
            min_per_stratum=1_000_000,  # every file of each stratum: a small run is reviewed whole
            threshold=THRESHOLD,
            double_review_fraction=0.0,  # one scripted reviewer; double review needs two people
        )


def scripted_review(batch: ReviewBatch, reviewer: Any) -> tuple[int, int]:
    """Judge every item left in ``batch`` against the answer key; returns (passed, failed)."""
    cohort = synthetic.patients(synthetic.COHORT_SIZE)
    passed = failed = 0
    with bound_context():
        while (item := review.next_item(batch, reviewer)) is not None:
            category = synthetic.planted_found(review.output_path(item).read_bytes(), cohort)
            if category:
                review.submit_verdict(item, reviewer, decision="fail", category=category)
                failed += 1
            else:
                review.submit_verdict(item, reviewer, decision="pass")
                passed += 1
    return passed, failed


def release(run: DeidRun, batch: ReviewBatch, steward: Any) -> list[str]:
    """Release the run through the gate; returns the gate's reasons when it stays closed."""
    if run.released_at is not None:
        return []
    gate = review.gate(batch)
    if gate.reasons:
        return [str(r) for r in gate.reasons]
    with bound_context():
        review.release_run(run, acting_user=steward)
    return []


def dataset_version(run: DeidRun, steward: Any) -> DatasetVersion:
    """The demo's ready version of ``run``, or a build of it queued on the worker."""
    existing = DatasetVersion.objects.filter(name=DATASET_NAME, runs=run, status="ready").first()
    if existing is not None:
        return existing
    with bound_context():
        return datasets.request_build(
            DATASET_NAME, [run], target_shard_mb=0.25, acting_user=steward
        )


def tokenizer_for(version: DatasetVersion, operator: Any) -> DatasetTokenizer:
    """The operator asks for a BPE tokenizer on the version's released text (as from its page:
    a worker trains it), sized for the tiny preset's 512-id embedding."""
    with bound_context():
        row, _created = tokenizers.request_tokenizer(
            version, vocab_size=TINY_VOCAB, max_mb=64.0, acting_user=operator
        )
    return row


def training_run(version: DatasetVersion, operator: Any, tokenizer: Path) -> TrainingRun:
    """The demo's training run on ``version``: the tiny preset, a few dozen steps on the CPU
    through the local scheduler, checkpoints and metrics as on a cluster."""
    existing = TrainingRun.objects.filter(name=RUN_NAME, dataset_version=version).first()
    if existing is not None:
        return existing
    spec = cpu_trial(
        RUN_NAME,
        version.pk,
        global_batch_size=4,
        max_steps=RUN_STEPS,
        time_limit_minutes=15,
        scheduler="local",
        tokenizer=str(tokenizer),
    )
    with bound_context():
        try:
            return jobs.launch_run(spec, acting_user=operator)
        except jobs.LaunchRefused as exc:
            raise CommandError(f"the demo's training run was refused: {exc}") from None


def _metrics(run: TrainingRun) -> list[dict[str, Any]]:
    """The trainer's JSONL records of ``run`` (a few dozen for the demo's run)."""
    path = Path(run_dir(run.name, run.pk)) / "checkpoints" / "metrics.jsonl"
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a line being written
    return [r for r in records if isinstance(r, dict)]


def last_step(run: TrainingRun) -> int:
    return max((int(r.get("step", 0)) for r in _metrics(run)), default=0)


def losses(run: TrainingRun) -> list[float]:
    """The training loss at each logged step, in order."""
    return [r["training_loss"] for r in _metrics(run) if "training_loss" in r]
