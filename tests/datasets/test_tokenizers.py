"""Tokenizers trained on a version's text: queued from the page or the API, trained by the
worker's task body, written once and read-only, deterministic, offered on the launch form,
and reached by the lineage like any consumer of the version."""

from __future__ import annotations

import os
import stat
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from apps.audit.models import AuditEvent
from apps.datasets import services, tokenizers
from apps.datasets.models import DatasetTokenizer, DatasetUse
from trainer.data.tokenizer import Tokenizer, dataset_texts

pytestmark = pytest.mark.django_db

VOCAB = 300  # 35 merges over the byte-level base: quick on the world's three notes


@pytest.fixture
def tokenizer_queue(monkeypatch):
    """Tokenizer ids queued for a worker, caught before the broker; ``.run()`` trains them."""
    from apps.datasets import tasks

    class Queue(list):
        def run(self) -> None:
            while self:
                tokenizers.run_tokenizer_build(self.pop(0))

    queue = Queue()
    monkeypatch.setattr(tasks.train_tokenizer, "delay", queue.append)
    return queue


def test_a_queued_tokenizer_is_trained_written_once_and_recorded_in_the_lineage(
    built, user_of, tokenizer_queue, django_capture_on_commit_callbacks
):
    operator = user_of("operator")
    with django_capture_on_commit_callbacks(execute=True):
        row, created = tokenizers.request_tokenizer(
            built, vocab_size=VOCAB, max_mb=1, acting_user=operator
        )
    assert created and row.status == "queued" and tokenizer_queue == [row.pk]
    tokenizer_queue.run()
    row.refresh_from_db()
    assert row.status == "ready" and row.merges_done == row.merges_total == VOCAB - 265
    # The same merges as the trainer's own command learns from the same text.
    expected = Tokenizer.train(dataset_texts([built.root], 1 << 20), VOCAB)
    written = Tokenizer.load(row.path)
    assert written.merges == expected.merges and row.ids == written.vocab_size == VOCAB
    assert row.fingerprint == expected.fingerprint()
    path = Path(row.path)
    assert path.parent == Path(built.root).parent / f"v{built.number}.tokenizers"
    assert not os.stat(path).st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    assert services.sha256_file(path) == row.sha256
    # A consumer of the version, so a patient's report reaches it.
    use = DatasetUse.objects.get(version=built, consumer_kind=tokenizers.CONSUMER_KIND)
    assert use.consumer_id == str(row.pk)
    reach = services.reach_of_patient("P-AAAA")
    assert (tokenizers.CONSUMER_KIND, str(row.pk)) in {
        (u.consumer_kind, u.consumer_id) for u in reach.uses
    }
    actions = list(
        AuditEvent.objects.filter(action__startswith="datasets.tokenizer").values_list(
            "action", flat=True
        )
    )
    assert sorted(actions) == ["datasets.tokenizer_requested", "datasets.tokenizer_trained"]


def test_the_same_settings_give_the_same_row_and_a_failed_one_may_be_asked_again(built):
    first, created = tokenizers.request_tokenizer(
        built, vocab_size=VOCAB, max_mb=1, acting_user=None
    )
    again, created_again = tokenizers.request_tokenizer(
        built, vocab_size=VOCAB, max_mb=1, acting_user=None
    )
    assert created and not created_again and again.pk == first.pk
    other, created_other = tokenizers.request_tokenizer(
        built, vocab_size=VOCAB + 1, max_mb=1, acting_user=None
    )
    assert created_other and other.pk != first.pk
    DatasetTokenizer.objects.filter(pk=first.pk).update(status="failed", error="worker died")
    retry, created_retry = tokenizers.request_tokenizer(
        built, vocab_size=VOCAB, max_mb=1, acting_user=None
    )
    assert created_retry and retry.pk not in (first.pk, other.pk)


@pytest.mark.parametrize(
    ("vocab", "max_mb", "message"),
    [
        (265, 1, "vocabulary size 265 must lie in 266"),
        (300_000, 1, "vocabulary size 300000 must lie in"),
        (VOCAB, 0, "text budget 0 MB must lie in"),
        (VOCAB, 5000, "text budget 5000 MB must lie in"),
    ],
)
def test_out_of_range_settings_are_refused(built, vocab, max_mb, message):
    with pytest.raises(services.DatasetError, match=message):
        tokenizers.request_tokenizer(built, vocab_size=vocab, max_mb=max_mb, acting_user=None)
    assert not DatasetTokenizer.objects.exists()


def test_no_tokenizer_on_a_version_holding_withdrawn_data_or_no_text(built):
    services.withdraw_consent("P-BBBB", reference="DPO-1", acting_user=None)
    with pytest.raises(services.DatasetError, match="withdrew consent: train on a version"):
        tokenizers.request_tokenizer(built, vocab_size=VOCAB, max_mb=1, acting_user=None)
    services.reinstate_consent("P-BBBB", reference="DPO-2", acting_user=None)
    built.modality_counts = {"image": 2}  # (versions are immutable rows: not saved)
    with pytest.raises(services.DatasetError, match="holds no text"):
        tokenizers.request_tokenizer(built, vocab_size=VOCAB, max_mb=1, acting_user=None)


def test_a_build_that_cannot_read_the_text_fails_with_a_reason_and_no_text(built):
    row, _ = tokenizers.request_tokenizer(built, vocab_size=VOCAB, max_mb=1, acting_user=None)
    index = sorted(Path(built.root).glob("index/*.json"))[0]
    index.chmod(0o644)
    index.write_text("{ not json")
    row = tokenizers.run_tokenizer_build(row.pk)
    assert row.status == "failed" and row.error == "training stopped: JSONDecodeError"
    assert not row.path and not DatasetUse.objects.filter(consumer_kind=tokenizers.CONSUMER_KIND)


def test_stewards_and_operators_train_from_the_version_page_and_watch_it(
    built, as_role, tokenizer_queue, django_capture_on_commit_callbacks
):
    url = f"/datasets/{built.pk}/"
    for role in ("auditor", "privacy_officer"):
        page = as_role(role).get(url).content.decode()
        assert 'data-testid="tokenizers"' in page and 'data-testid="tokenizer-form"' not in page
        refused = as_role(role).post(
            f"{url}tokenizers/", {"vocab_size": VOCAB, "max_mb": 1}, follow=False
        )
        assert refused.status_code == 403
    client = as_role("operator")
    assert 'data-testid="tokenizer-form"' in client.get(url).content.decode()
    bad = client.post(f"{url}tokenizers/", {"vocab_size": 10, "max_mb": 1}, follow=True)
    assert "greater than or equal to 266" in bad.content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"{url}tokenizers/", {"vocab_size": VOCAB, "max_mb": 1})
    assert response.status_code == 302 and response["Location"].endswith("#tokenizers")
    row = DatasetTokenizer.objects.get()
    panel = client.get(f"{url}tokenizers/status/").content.decode()
    assert 'hx-trigger="every 2s"' in panel and 'data-tokenizer="queued"' in panel
    tokenizer_queue.run()
    panel = client.get(f"{url}tokenizers/status/").content.decode()
    assert 'hx-trigger="every 2s"' not in panel and 'data-tokenizer="ready"' in panel
    row.refresh_from_db()
    assert row.path in panel and row.fingerprint[:12] in panel
    # The launch form offers it.
    form = client.get("/jobs/new/").content.decode()
    assert f'<option value="{row.path}">' in form and 'list="tokenizer-choices"' in form


def test_the_tokenizers_api_queues_once_and_only_for_stewards_and_operators(
    built, as_role, tokenizer_queue, django_capture_on_commit_callbacks
):
    url = "/api/datasets/tokenizers/"
    body = {"version": built.pk, "vocab_size": VOCAB, "max_mb": 1}
    for role in ("auditor", "privacy_officer"):
        assert as_role(role).post(url, body, content_type="application/json").status_code == 403
    steward = as_role("data_steward")
    with django_capture_on_commit_callbacks(execute=True):
        queued = steward.post(url, body, content_type="application/json")
    assert queued.status_code == 202, queued.content
    assert queued.json()["status"] == "queued"
    again = steward.post(url, body, content_type="application/json")
    assert again.status_code == 200 and again.json()["id"] == queued.json()["id"]
    bad = steward.post(url, {**body, "vocab_size": 10}, content_type="application/json")
    assert bad.status_code == 400
    tokenizer_queue.run()
    listed = as_role("auditor").get(f"{url}?version={built.pk}").json()["results"]
    assert [(t["id"], t["status"], t["ids"]) for t in listed] == [
        (queued.json()["id"], "ready", VOCAB)
    ]


def test_train_tokenizer_from_the_command_line(built):
    out = StringIO()
    call_command(
        "train_tokenizer", str(built.pk), "--vocab-size", str(VOCAB), "--max-mb", "1", stdout=out
    )
    row = DatasetTokenizer.objects.get()
    assert row.status == "ready"
    assert out.getvalue().strip().endswith(row.path) and f"{VOCAB} ids" in out.getvalue()
    call_command("train_tokenizer", str(built.pk), "--vocab-size", str(VOCAB), "--max-mb", "1")
    assert DatasetTokenizer.objects.count() == 1  # the same tokenizer: nothing trained again
    with pytest.raises(CommandError, match="no dataset version 'nope'"):
        call_command("train_tokenizer", "nope")


def test_a_new_run_refuses_a_tokenizer_trained_on_text_of_a_patient_who_withdrew(
    built, world, steward
):
    from dataclasses import replace

    from apps.jobs import services as jobs
    from apps.jobs.validation import cpu_trial

    row = tokenizers.train_tokenizer(built, vocab_size=VOCAB, max_mb=1, acting_user=None)
    later = services.build_version("later", [world.run], target_shard_mb=1, acting_user=steward)
    spec = replace(cpu_trial("with-tokenizer", later.pk), tokenizer=row.path)

    def errors() -> list[str]:
        plan = jobs.check_run(spec)
        return [str(m) for messages in plan.errors.values() for m in messages]

    assert not any("tokenizer was trained on" in e for e in errors())
    services.withdraw_consent("P-CCCC", reference="DPO-1", acting_user=None)
    refused = [e for e in errors() if "tokenizer was trained on" in e]
    assert refused == [
        "this tokenizer was trained on ct-demo v1, which holds text of a patient who withdrew "
        "consent since; train one on a version built after"
    ]
    assert row.path not in [t.path for t in jobs.tokenizer_choices()]


def test_a_tokenizer_build_is_cancelled_at_once_when_queued_and_at_its_next_report_when_training(
    built, as_role, monkeypatch
):
    client = as_role("operator")
    queued, _ = tokenizers.request_tokenizer(built, vocab_size=VOCAB, max_mb=1, acting_user=None)
    page = client.get(f"/datasets/{built.pk}/").content.decode()
    assert 'data-testid="tokenizer-cancel"' in page
    assert (
        as_role("auditor").post(f"/datasets/{built.pk}/tokenizers/{queued.pk}/cancel/").status_code
        == 403
    )
    client.post(f"/datasets/{built.pk}/tokenizers/{queued.pk}/cancel/")
    queued.refresh_from_db()
    assert (queued.status, queued.error) == ("failed", "cancelled on request")
    assert tokenizers.run_tokenizer_build(queued.pk).status == "failed"  # a late task: nothing

    # Training: the stop is seen at the next progress report, and nothing is written.
    running, _ = tokenizers.request_tokenizer(built, vocab_size=VOCAB, max_mb=1, acting_user=None)
    real_train = tokenizers.Tokenizer.train

    def train_then_cancel(texts, vocab_size, progress=None):
        def report(done, total):
            response = as_role("data_steward").post(
                f"/api/datasets/tokenizers/{running.pk}/cancel/"
            )
            assert response.status_code == 200 and response.json()["cancel_requested"]
            progress(done, total)

        return real_train(texts, vocab_size, report)

    monkeypatch.setattr(tokenizers.Tokenizer, "train", train_then_cancel)
    row = tokenizers.run_tokenizer_build(running.pk)
    assert (row.status, row.error, row.path) == ("failed", "cancelled on request", "")
    assert not list((Path(built.root).parent / f"v{built.number}.tokenizers").glob("*.json"))
    again = as_role("data_steward").post(f"/api/datasets/tokenizers/{running.pk}/cancel/")
    assert again.status_code == 409


def test_a_build_no_worker_reported_on_is_given_up_and_asked_again(built):
    from datetime import timedelta

    from django.utils import timezone

    lost, _ = tokenizers.request_tokenizer(built, vocab_size=VOCAB, max_mb=1, acting_user=None)
    long_ago = timezone.now() - timedelta(seconds=services.STALE_CLAIM_SECONDS + 1)
    DatasetTokenizer.objects.filter(pk=lost.pk).update(requested_at=long_ago)
    again, created = tokenizers.request_tokenizer(
        built, vocab_size=VOCAB, max_mb=1, acting_user=None
    )
    lost.refresh_from_db()
    assert created and again.pk != lost.pk
    assert lost.status == "failed"
    assert lost.error == "no worker reported on this tokenizer; ask again"
