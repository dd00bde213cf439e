"""Tokenizers trained on a dataset version's released text (docs/datasets.md "Tokenizers").

A training run needs the ids its text becomes; the trainer's byte-level BPE
(``trainer.data.tokenizer``) is trained here on the ``txt`` members of a ready version, so an
operator picks one on the launch form instead of running ``python -m trainer tokenizer`` on a
node. The pages and the API queue a build for a worker (``request_tokenizer``); the command
line and the demo train in their own process (``train_tokenizer``). Either way the file is
written once next to the version, read-only, and the version's lineage gains a consumer: the
merges are statistics of the patients' text, so a consent withdrawal must be able to find them.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from django.db import transaction
from django.utils import timezone

from apps.audit.services import record
from apps.datasets.models import DatasetTokenizer, DatasetVersion
from apps.datasets.services import (
    CANCELLED,
    DatasetError,
    ProgressCallback,
    _resource,
    _write_once,
    claim_work,
    fail_work,
    give_up_stale,
    record_dataset_use,
    withdrawn_samples,
    work_progress,
)
from trainer.data.tokenizer import SPECIALS, Tokenizer, dataset_texts

if TYPE_CHECKING:
    from django.contrib.auth.models import User

logger = logging.getLogger(__name__)

CONSUMER_KIND = "datasets.datasettokenizer"
MIN_VOCAB = len(SPECIALS) + 256 + 1  # at least one merge over the byte-level base
MAX_VOCAB = 262_144
MAX_TEXT_MB = 4096.0
_CANCEL_LOOK_SECONDS = 1.0


def _check(version: DatasetVersion, vocab_size: int, max_mb: float) -> None:
    if version.status != DatasetVersion.Status.READY:
        raise DatasetError(f"{version.label} is {version.status}; train on ready versions only")
    if not MIN_VOCAB <= vocab_size <= MAX_VOCAB:
        raise DatasetError(f"vocabulary size {vocab_size} must lie in {MIN_VOCAB}–{MAX_VOCAB}")
    if not 0 < max_mb <= MAX_TEXT_MB:
        raise DatasetError(f"text budget {max_mb} MB must lie in (0, {MAX_TEXT_MB:g}]")
    if not (version.modality_counts or {}).get("text"):
        raise DatasetError(f"{version.label} holds no text to train a tokenizer on")
    if withdrawn := withdrawn_samples(version):
        raise DatasetError(
            f"{withdrawn} sample(s) of {version.label} belong to patients who withdrew consent: "
            "train on a version built since"
        )


def _existing(version: DatasetVersion, vocab_size: int, max_mb: float) -> DatasetTokenizer | None:
    """The row that already holds (or is making) this tokenizer: training is deterministic."""
    _give_up_stale(version)
    return (
        DatasetTokenizer.objects.filter(version=version, vocab_size=vocab_size, max_mb=max_mb)
        .exclude(status=DatasetTokenizer.Status.FAILED)
        .first()
    )


def request_tokenizer(
    version: DatasetVersion, *, vocab_size: int, max_mb: float, acting_user: User | None
) -> tuple[DatasetTokenizer, bool]:
    """Queue a tokenizer build on a worker (the pages and the API); returns (row, created).

    The same version, vocabulary size and text budget return the row that holds or is making
    that tokenizer (two clicks, one build); a failed one may be asked for again.
    """
    _check(version, vocab_size, max_mb)
    with transaction.atomic():
        # Serialises two requests for one version (PostgreSQL; SQLite writes one at a time).
        DatasetVersion.objects.select_for_update().filter(pk=version.pk).first()
        existing = _existing(version, vocab_size, max_mb)
        if existing is not None:
            return existing, False
        row = DatasetTokenizer.objects.create(
            version=version,
            vocab_size=vocab_size,
            max_mb=max_mb,
            requested_by_id=getattr(acting_user, "pk", None),
        )
        record(
            "datasets.tokenizer_requested",
            _resource(version),
            actor=acting_user,
            details={"tokenizer": row.pk, "vocab_size": vocab_size, "max_mb": max_mb},
        )

        def enqueue() -> None:
            from apps.datasets.tasks import train_tokenizer as task

            task.delay(row.pk)

        transaction.on_commit(enqueue)
    return row, True


def train_tokenizer(
    version: DatasetVersion,
    *,
    vocab_size: int,
    max_mb: float,
    acting_user: User | None,
    progress: ProgressCallback | None = None,
) -> DatasetTokenizer:
    """Train here and now (the command line), or return the ready row of the same tokenizer.
    Raises ``DatasetError`` when the build fails, or while a worker is training it."""
    _check(version, vocab_size, max_mb)
    row = _existing(version, vocab_size, max_mb)
    if row is None:
        row = DatasetTokenizer.objects.create(
            version=version,
            vocab_size=vocab_size,
            max_mb=max_mb,
            requested_by_id=getattr(acting_user, "pk", None),
        )
    row = run_tokenizer_build(row.pk, acting_user=acting_user, progress=progress)
    if row.unfinished:
        raise DatasetError(
            f"tokenizer {row.pk} of {version.label} is being trained by a worker; "
            "its version page shows the progress"
        )
    if row.status != DatasetTokenizer.Status.READY:
        raise DatasetError(f"tokenizer {row.pk} of {version.label}: {row.error or row.status}")
    return row


def _give_up_stale(version: DatasetVersion) -> None:
    give_up_stale(
        version.tokenizers.all(), "requested_at", "no worker reported on this tokenizer; ask again"
    )


class _Cancelled(Exception):
    """Raised from the progress callback when the row was asked to stop."""


def cancel_tokenizer(row: DatasetTokenizer, *, acting_user: User | None) -> DatasetTokenizer:
    """Stop a tokenizer build: at once when no worker has started it, else at the trainer's
    next progress report (every 100 merges; nothing is written). A finished one is refused."""
    with transaction.atomic():
        stopped_now = DatasetTokenizer.objects.filter(
            pk=row.pk, status=DatasetTokenizer.Status.QUEUED
        ).update(
            status=DatasetTokenizer.Status.FAILED,
            error=CANCELLED,
            cancel_requested=True,
            finished_at=timezone.now(),
        )
        flagged = stopped_now or DatasetTokenizer.objects.filter(
            pk=row.pk, status=DatasetTokenizer.Status.RUNNING
        ).update(cancel_requested=True)
        if not flagged:
            raise DatasetError(f"tokenizer {row.pk} is {row.status}; only unfinished ones stop")
        record(
            "datasets.tokenizer_cancel_requested",
            _resource(row.version),
            actor=acting_user,
            details={"tokenizer": row.pk, "stopped_now": bool(stopped_now)},
        )
    return DatasetTokenizer.objects.get(pk=row.pk)


def run_tokenizer_build(
    pk: int, *, acting_user: User | None = None, progress: ProgressCallback | None = None
) -> DatasetTokenizer:
    """Train the row's tokenizer (the worker's task body; ``train_tokenizer`` runs it inline)
    and store it: ``ready`` with its file, or ``failed`` with a reason. Idempotent: a build
    another worker holds, or a finished one, is returned as it is. ``progress(merges learned,
    merges wanted)`` every 100 merges."""
    if not claim_work(DatasetTokenizer, pk, merges_done=0):
        return DatasetTokenizer.objects.get(pk=pk)
    row = DatasetTokenizer.objects.select_related("version").get(pk=pk)
    version = row.version
    report = work_progress(DatasetTokenizer, pk, ("merges_done", "merges_total"), progress)

    last_look = time.monotonic()

    def beat(done: int, total: int) -> None:
        nonlocal last_look
        report(done, total)
        # Asked once a second, not at every report (a query per 100 merges cost ~4 %).
        if time.monotonic() - last_look >= _CANCEL_LOOK_SECONDS or done == total:
            last_look = time.monotonic()
            if DatasetTokenizer.objects.filter(pk=pk, cancel_requested=True).exists():
                raise _Cancelled

    try:
        texts = dataset_texts([version.root], max_bytes=int(row.max_mb * (1 << 20)))
        tokenizer = Tokenizer.train(texts, row.vocab_size, beat)
        payload = tokenizer.dumps()
        fingerprint = tokenizer.fingerprint()
        path = (
            Path(version.root).parent
            / f"v{version.number}.tokenizers"
            / f"bpe-{row.vocab_size}-{fingerprint[:12]}.json"
        )
        _write_once(path, payload)
        Tokenizer.load(path)  # what the trainer will read
    except _Cancelled:
        fail_work(DatasetTokenizer, pk, CANCELLED)
        return DatasetTokenizer.objects.get(pk=pk)
    except Exception as exc:
        # The text is de-identified but still the patients': the type is enough for the page.
        logger.exception("training tokenizer %s of dataset version %s failed", pk, version.pk)
        fail_work(DatasetTokenizer, pk, f"training stopped: {type(exc).__name__}")
        return DatasetTokenizer.objects.get(pk=pk)
    with transaction.atomic():
        DatasetTokenizer.objects.filter(pk=pk).update(
            status=DatasetTokenizer.Status.READY,
            ids=tokenizer.vocab_size,
            path=str(path),
            sha256=hashlib.sha256(payload).hexdigest(),
            fingerprint=fingerprint,
            finished_at=timezone.now(),
            heartbeat_at=timezone.now(),
        )
        record_dataset_use(
            version,
            consumer_kind=CONSUMER_KIND,
            consumer_id=pk,
            acting_user=acting_user,
            label=f"tokenizer {tokenizer.vocab_size} ids",
        )
        record(
            "datasets.tokenizer_trained",
            _resource(version),
            actor=acting_user,
            details={
                "tokenizer": pk,
                "ids": tokenizer.vocab_size,
                "fingerprint": fingerprint,
                "sha256": hashlib.sha256(payload).hexdigest(),
            },
        )
    return DatasetTokenizer.objects.get(pk=pk)


def ready_tokenizers() -> list[DatasetTokenizer]:
    """Every ready tokenizer of a version a new run may read (the launch form's choices)."""
    from apps.datasets.services import trainable_versions

    return list(
        DatasetTokenizer.objects.filter(
            status=DatasetTokenizer.Status.READY, version__in=trainable_versions()
        )
        .select_related("version")
        .order_by("version__name", "-version__number", "-ids")
    )


def trained_on_withdrawn(path: str) -> DatasetVersion | None:
    """The version a tokenizer at ``path`` was trained on, when that version holds a patient
    who withdrew consent since (its merges are statistics of their text); else None."""
    for row in DatasetTokenizer.objects.filter(path=path).select_related("version"):
        if withdrawn_samples(row.version):
            return row.version
    return None
