"""The scanner: content detection, hashing, idempotent re-scans, refusal of escaping links,
progress, cancellation and the audit trail."""

from __future__ import annotations

import hashlib
import os
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from apps.audit.models import AuditEvent
from apps.inventory import services
from apps.inventory.models import IngestBatch, RawFile
from tests.inventory.conftest import SERIES_UID, STUDY_UID, write_dicom

pytestmark = pytest.mark.django_db


def scan(source, **kwargs):
    batch = services.start_scan(source, acting_user=None, enqueue=False)
    return services.scan_source(batch.pk, **kwargs)


def kinds(batch):
    return dict(RawFile.objects.filter(batch=batch).values_list("relpath", "kind"))


def test_it_detects_each_kind_by_content(source):
    batch = scan(source)
    assert batch.status == IngestBatch.Status.DONE
    assert kinds(batch) == {
        "ct/slice1.dcm": "dicom",
        "ct/slice2.dcm": "dicom",
        "ct/slice3.dcm": "dicom",
        "ecg/rec1.dat": "wfdb",
        "ecg/rec1.hea": "wfdb",
        "eeg/night.edf": "edf",
        "junk.bin": "other",
        "notes/report.txt": "text",
        "notes/报告.txt": "text",
    }


def test_it_ignores_file_names_when_detecting(source, mixed_tree):
    (mixed_tree / "ct" / "slice1.dcm").rename(mixed_tree / "looks-like-a-note.txt")
    (mixed_tree / "notes" / "report.txt").rename(mixed_tree / "notes" / "image.dcm")
    batch = scan(source)
    found = kinds(batch)
    assert found["looks-like-a-note.txt"] == "dicom"
    assert found["notes/image.dcm"] == "text"


def test_it_refuses_a_symlink_pointing_out_of_the_root(source):
    batch = scan(source)
    assert "escape.txt" not in kinds(batch)
    assert batch.files_refused == 1
    assert batch.files_done == batch.files_total == 10


def test_it_skips_a_symlink_that_stays_inside_the_root(source, mixed_tree):
    os.symlink(mixed_tree / "notes" / "report.txt", mixed_tree / "alias.txt")
    batch = scan(source)
    assert "alias.txt" not in kinds(batch)
    assert batch.files_refused == 1  # only the escaping one


def test_it_stores_sha256_size_modality_and_instance(source, mixed_tree):
    batch = scan(source)
    raw = RawFile.objects.get(batch=batch, relpath="ct/slice2.dcm")
    data = (mixed_tree / "ct" / "slice2.dcm").read_bytes()
    assert raw.sha256 == hashlib.sha256(data).hexdigest()
    assert raw.size == len(data)
    assert raw.modality == "CT"
    assert raw.instance_number == 2
    assert RawFile.objects.get(batch=batch, relpath="eeg/night.edf").modality == "EEG"


def test_it_keys_study_and_series_with_a_keyed_hash_never_the_uid(source):
    batch = scan(source)
    raw = RawFile.objects.get(batch=batch, relpath="ct/slice1.dcm")
    assert len(raw.study_key) == 64 and len(raw.series_key) == 64
    assert STUDY_UID not in raw.study_key
    assert raw.study_key != hashlib.sha256(STUDY_UID.encode()).hexdigest()
    other = RawFile.objects.get(batch=batch, relpath="ct/slice3.dcm")
    assert (other.study_key, other.series_key) == (raw.study_key, raw.series_key)


def test_the_uid_key_follows_a_dedicated_setting(settings, source):
    settings.INVENTORY_UID_KEY = "a-dedicated-key"
    batch = scan(source)
    raw = RawFile.objects.get(batch=batch, relpath="ct/slice1.dcm")
    import hmac

    expected = hmac.new(b"a-dedicated-key", b"series\x00" + SERIES_UID.encode(), "sha256")
    assert raw.series_key == expected.hexdigest()


def test_it_fills_counts_and_sizes_on_the_source(source, mixed_tree):
    scan(source)
    source.refresh_from_db()
    sizes = [p.stat().st_size for p in mixed_tree.rglob("*") if p.is_file() and not p.is_symlink()]
    assert source.scanned_count == len(sizes) == 9
    assert source.scanned_bytes == sum(sizes)
    assert source.last_scanned_at is not None
    assert str(source.estimated_count) == "100"  # the CSV estimate is kept


def test_a_rescan_registers_nothing_new(source):
    first = scan(source)
    second = scan(source)
    assert second.status == IngestBatch.Status.DONE
    assert second.files.count() == 0
    assert second.files_skipped == first.files.count() == 9
    assert RawFile.objects.filter(source=source).count() == 9


def test_a_rescan_registers_only_changed_and_new_files(source, mixed_tree):
    scan(source)
    (mixed_tree / "notes" / "report.txt").write_text("Updated report with enough words to pass.")
    write_dicom(mixed_tree / "ct" / "slice4.dcm", instance=4)
    second = scan(source)
    assert sorted(kinds(second)) == ["ct/slice4.dcm", "notes/report.txt"]
    source.refresh_from_db()
    assert source.scanned_count == 10  # the latest version of each path


def test_progress_reaches_the_total(source):
    seen = []
    scan(source, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (10, 10)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_a_cancelled_scan_stops_before_its_next_file(source):
    batch = services.start_scan(source, acting_user=None, enqueue=False)

    def cancel_after_first(done, total):
        if done == 2:  # the refused link, then one file
            services.cancel_scan(batch, acting_user=None)

    result = services.scan_source(batch.pk, progress=cancel_after_first)
    assert result.status == IngestBatch.Status.CANCELLED
    assert result.files.count() == 1
    assert not result.files.first().qa_results.exists()  # QA does not run on a cancelled scan
    source.refresh_from_db()
    assert source.scanned_count == 1


def test_a_claimed_batch_is_not_scanned_twice(source):
    batch = services.start_scan(source, acting_user=None, enqueue=False)
    services.scan_source(batch.pk)
    again = services.scan_source(batch.pk)
    assert again.files.count() == 9
    assert AuditEvent.objects.filter(action="inventory.scan_started").count() == 1


def test_only_one_scan_per_source_at_a_time(source):
    services.start_scan(source, acting_user=None, enqueue=False)
    with pytest.raises(services.ScanError, match="already pending or running"):
        services.start_scan(source, acting_user=None, enqueue=False)


def test_a_missing_raw_root_is_refused(source, tmp_path):
    source.raw_root = str(tmp_path / "nowhere")
    source.save()
    with pytest.raises(services.ScanError, match="not a readable folder"):
        services.start_scan(source, acting_user=None, enqueue=False)


def test_a_root_that_vanishes_fails_the_batch_without_naming_files(source, mixed_tree):
    batch = services.start_scan(source, acting_user=None, enqueue=False)
    mixed_tree.rename(mixed_tree.with_name("moved"))
    result = services.scan_source(batch.pk)
    assert result.status == IngestBatch.Status.FAILED
    assert result.error == "the raw root is not a readable folder"
    event = AuditEvent.objects.get(action="inventory.scan_failed")
    assert "raw" not in event.details_json.replace("raw root", "")


def test_safe_path_refuses_traversal_and_links(mixed_tree):
    root = mixed_tree.resolve()
    assert services.safe_path(root, "ct/slice1.dcm") == root / "ct" / "slice1.dcm"
    for bad in ("../outside-secret.txt", "/etc/passwd", "escape.txt", ""):
        with pytest.raises(services.ScanError):
            services.safe_path(root, bad)


def test_scanning_writes_audit_events_with_ids_only(source, cast):
    batch = services.start_scan(source, acting_user=cast["data_steward"], enqueue=False)
    services.scan_source(batch.pk)
    actions = list(
        AuditEvent.objects.filter(resource=f"inventory.ingestbatch:{batch.pk}")
        .order_by("seq")
        .values_list("action", flat=True)
    )
    assert actions == [
        "inventory.scan_requested",
        "inventory.scan_started",
        "inventory.qa_run",
        "inventory.scan_finished",
    ]
    for event in AuditEvent.objects.all():
        assert ".dcm" not in event.details_json and "slice" not in event.details_json
    assert AuditEvent.objects.get(action="inventory.scan_requested").user_id == (
        cast["data_steward"].pk
    )


def test_the_command_scans_with_a_progress_bar(source):
    out, err = StringIO(), StringIO()
    call_command("scan_source", source.source, stdout=out, stderr=err)
    assert "done; 10/10 files" in out.getvalue()
    assert "10/10" in err.getvalue()


def test_the_command_names_an_unknown_source():
    with pytest.raises(CommandError, match="no data source named 'nope'"):
        call_command("scan_source", "nope")


def test_the_task_runs_the_scan(source):
    from apps.inventory import tasks

    batch = services.start_scan(source, acting_user=None, enqueue=False)
    assert tasks.scan_source.run(batch.pk)["status"] == "done"
    assert tasks.scan_source.run(batch.pk)["status"] == "done"  # a redelivery is a no-op


def test_start_scan_queues_the_task_after_commit(source, django_capture_on_commit_callbacks):
    from unittest import mock

    with (
        mock.patch("apps.inventory.tasks.scan_source.delay") as delay,
        django_capture_on_commit_callbacks(execute=True),
    ):
        batch = services.start_scan(source, acting_user=None)
    delay.assert_called_once_with(batch.pk)


def test_fifos_and_undecodable_names_are_refused_not_opened(source, mixed_tree):
    os.mkfifo(mixed_tree / "pipe")  # opening it would block the scanner forever
    with open(os.path.join(os.fsencode(mixed_tree), b"bad-\xff.txt"), "wb") as fh:
        fh.write(b"a name that is not UTF-8")
    batch = scan(source)
    assert batch.status == IngestBatch.Status.DONE
    assert batch.files_refused == 3
    assert batch.files.count() == 9


def test_a_detector_crash_registers_the_file_as_unreadable(source, monkeypatch):
    from apps.inventory import detect

    real = detect.detect

    def explode_on_junk(path, **kwargs):
        if str(path).endswith("junk.bin"):
            raise RuntimeError("parser bug")
        return real(path, **kwargs)

    monkeypatch.setattr(detect, "detect", explode_on_junk)
    batch = scan(source)
    assert batch.status == IngestBatch.Status.DONE
    assert kinds(batch)["junk.bin"] == "unreadable"
