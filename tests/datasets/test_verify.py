"""verify_version re-hashes every file and names each difference."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from apps.audit.models import AuditEvent
from apps.datasets import services
from apps.datasets.models import VerifyCheck

pytestmark = pytest.mark.django_db


def _flip_a_byte(path: Path, at: int = 700) -> None:
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def test_it_reports_ok_for_an_untouched_version(built, steward):
    report = services.verify_version(built, acting_user=steward)
    assert report.ok and report.problems == []
    assert report.files_checked == 1 + 2 * built.shard_count
    check = VerifyCheck.objects.get(version=built)
    assert check.ok and check.checked_by_id == steward.pk


def test_it_catches_a_flipped_byte_in_a_shard(built):
    shard = sorted(Path(built.root).glob("shard-*.tar"))[-1]
    _flip_a_byte(shard)
    report = services.verify_version(built)
    assert not report.ok
    assert [p["file"] for p in report.problems] == [shard.name]
    assert "sha256" in report.problems[0]["problem"]


def test_it_catches_a_changed_manifest(built):
    _flip_a_byte(Path(built.root) / "manifest.json", at=5)
    problems = services.verify_version(built).problems
    assert problems[0]["file"] == "manifest.json"
    assert "differs from the recorded" in problems[0]["problem"]


def test_it_catches_a_changed_index_file(built):
    index = sorted((Path(built.root) / "index").glob("*.json"))[0]
    _flip_a_byte(index, at=3)
    problems = services.verify_version(built).problems
    assert problems == [
        {"file": f"index/{index.name}", "problem": "sha256 differs from the manifest's"}
    ]


def test_it_catches_a_missing_shard_and_an_extra_file(built):
    shard = sorted(Path(built.root).glob("shard-*.tar"))[0]
    shard.unlink()
    (Path(built.root) / "stray.bin").write_bytes(b"x")
    problems = {p["file"]: p["problem"] for p in services.verify_version(built).problems}
    assert problems == {shard.name: "missing", "stray.bin": "not in the manifest"}


def test_it_records_each_check_in_the_audit_trail(built, steward):
    services.verify_version(built, acting_user=steward)
    event = AuditEvent.objects.get(action="datasets.version_verified")
    assert event.resource == f"datasets.datasetversion:{built.pk}"
    assert event.user_id == steward.pk


def test_it_refuses_to_verify_a_version_that_is_not_ready(world):
    failed = services.build_version("f", [world.run], target_shard_mb=1, acting_user=None)
    Path(world.run.output_root, world.results["c_note"].output_relpath).unlink()
    again = services.build_version("f", [world.run], target_shard_mb=1, acting_user=None)
    assert failed.status == "ready" and again.status == "failed"
    with pytest.raises(services.DatasetError, match="failed"):
        services.verify_version(again)


def test_hashing_on_several_threads_finds_the_same_differences(built, settings):
    shards = sorted(Path(built.root).glob("shard-*.tar"))
    assert len(shards) >= 2
    _flip_a_byte(shards[0])
    _flip_a_byte(shards[-1], at=900)
    serial = services.verify_version(built).problems
    settings.DATASETS_PACK_WORKERS = 3
    assert services.verify_version(built).problems == serial  # same problems, same order
    assert [p["file"] for p in serial] == [shards[0].name, shards[-1].name]


def test_progress_counts_every_byte_hashed(built):
    seen: list[tuple[int, int]] = []
    services.verify_version(built, progress=lambda done, total: seen.append((done, total)))
    root = Path(built.root)
    total = sum(p.stat().st_size for p in [*root.glob("shard-*.tar"), *root.glob("index/*")])
    assert len(seen) == 2 * built.shard_count  # one call per shard and per index file
    assert [d for d, _ in seen] == sorted(d for d, _ in seen) and seen[-1] == (total, total)


@pytest.mark.parametrize("state", ["queued", "running"])
def test_a_check_no_worker_reported_on_is_given_up_and_asked_again(built, steward, state):
    from datetime import timedelta

    from django.utils import timezone

    first = services.request_verify(built, acting_user=steward)
    assert services.request_verify(built, acting_user=steward).pk == first.pk
    then = timezone.now() - timedelta(seconds=services.STALE_CLAIM_SECONDS + 1)
    fields = {"checked_at": then} if state == "queued" else {"heartbeat_at": then}
    VerifyCheck.objects.filter(pk=first.pk).update(status=state, **fields)
    second = services.request_verify(built, acting_user=steward)
    first.refresh_from_db()
    assert second.pk != first.pk and second.status == "queued"
    assert first.status == "failed" and "no worker reported" in first.error
    # The lost worker's task, delivered late, finds its check given up and does nothing.
    assert services.run_verify_check(first.pk).status == "failed"


def test_a_redelivered_task_does_not_hash_a_finished_check_again(built):
    check = services.request_verify(built, acting_user=None)
    done = services.run_verify_check(check.pk)
    assert done.status == "done" and done.ok
    finished_at = done.finished_at
    assert services.run_verify_check(check.pk).finished_at == finished_at
    assert AuditEvent.objects.filter(action="datasets.version_verified").count() == 1


def test_a_check_that_cannot_read_the_files_fails_with_a_reason(built, monkeypatch):
    def gone(*args, **kwargs):  # fault injection: the storage goes away mid-check
        raise OSError("Input/output error: /mnt/datasets/ct-demo")

    monkeypatch.setattr(services, "_rehash", gone)
    check = services.run_verify_check(services.request_verify(built, acting_user=None).pk)
    assert check.status == "failed" and check.ok is None
    assert check.error == "verification stopped: OSError"  # no path in the page's text
    with pytest.raises(services.DatasetError, match="verification stopped"):
        services.verify_version(built)
