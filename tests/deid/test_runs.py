"""De-identification runs over a generated batch: nothing lost, nothing leaked, idempotent."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from apps.audit.models import AuditEvent
from apps.deid import services
from apps.deid.models import DeidFileResult, DeidRun, VaultRecord
from tests.deid.factories import PHI_VALUES, add_file, make_batch, make_source, note_bytes

pytestmark = pytest.mark.django_db


def run_batch(batch, profile, **kwargs):
    run = services.start_run(batch, profile=profile, acting_user=None, enqueue=False)
    outcome = services.process_run(run.pk, ocr=None, **kwargs)
    run.refresh_from_db()
    return run, outcome


def results_by_name(run):
    return {r.raw_file.relpath: r for r in run.results.select_related("raw_file")}


def assert_no_phi(text: str) -> None:
    for value in PHI_VALUES:
        assert value not in text, value


def test_it_gives_every_file_exactly_one_result(mixed, no_ocr_profile):
    run, outcome = run_batch(mixed.batch, no_ocr_profile)

    assert outcome.status == DeidRun.Status.DONE
    assert run.status == DeidRun.Status.DONE
    assert run.files_total == len(mixed.files) == run.results.count()
    assert run.files_done == run.files_ok + run.files_quarantined + run.files_error
    assert run.files_done == run.files_total


def test_it_quarantines_bad_input_with_phi_free_reasons(mixed, no_ocr_profile):
    run, _ = run_batch(mixed.batch, no_ocr_profile)
    res = {key: run.results.get(raw_file=raw) for key, raw in mixed.files.items()}

    for key in ("dicom", "note", "edf"):
        assert res[key].status == "ok", (key, res[key].reason)
    for key in ("corrupt", "junk", "symlink", "excluded"):
        assert res[key].status == "quarantined", key
        assert res[key].reason and not res[key].output_relpath
    assert res["symlink"].reason.startswith("path_outside_raw_root")
    assert res["excluded"].reason == "excluded_by_data_qa"
    assert res["corrupt"].reason.startswith("dicom_")
    assert res["junk"].reason.startswith("unknown_kind")


def test_it_writes_outputs_under_pseudonymized_paths_and_verifies_hashes(mixed, no_ocr_profile):
    run, _ = run_batch(mixed.batch, no_ocr_profile)
    root = Path(run.output_root)
    assert root.is_relative_to(mixed.out_base)

    ok = list(run.results.filter(status="ok"))
    assert len(ok) == 3
    for r in ok:
        path = root / r.output_relpath
        data = path.read_bytes()
        assert services.sha256_file(path) == r.output_sha256
        assert_no_phi(r.output_relpath)
        for value in PHI_VALUES:
            for enc in ("utf-8", "gb18030"):
                assert value.encode(enc) not in data, (r.output_relpath, value)
        assert r.patient_pseudonym and r.profile_fingerprint == no_ocr_profile.fingerprint()
    # No temp files are left behind, and nothing is written outside the run's folder.
    assert not [p for p in root.rglob("*.tmp")]
    assert [p.name for p in mixed.outside.iterdir()] == ["secret.txt"]
    note = run.results.get(raw_file=mixed.files["note"])
    assert note.findings and note.spans
    assert {"type", "start", "end"} == set(note.spans[0])


def test_it_keeps_no_phi_in_rows_audit_or_logs(mixed, no_ocr_profile, caplog):
    caplog.set_level(logging.DEBUG)
    run, _ = run_batch(mixed.batch, no_ocr_profile)

    rows = list(DeidFileResult.objects.filter(run=run).values())
    assert_no_phi(json.dumps(rows, ensure_ascii=False, default=str))
    run_row = DeidRun.objects.filter(pk=run.pk).values().get()
    assert_no_phi(json.dumps(run_row, ensure_ascii=False, default=str))
    events = list(AuditEvent.objects.values())
    assert {"deid.run_started", "deid.run_running", "deid.run_finished"} <= {
        e["action"] for e in events
    }
    assert_no_phi(json.dumps(events, ensure_ascii=False, default=str))
    assert_no_phi(caplog.text)
    assert_no_phi(" ".join(str(r.args) for r in caplog.records))
    # The vault holds the mapping, encrypted.
    blobs = b"".join(bytes(b) for b in VaultRecord.objects.values_list("blob", flat=True))
    assert VaultRecord.objects.exists() and b"ZY20240305" not in blobs


def test_the_finish_event_carries_counts_only(mixed, no_ocr_profile):
    run, _ = run_batch(mixed.batch, no_ocr_profile)
    event = AuditEvent.objects.get(action="deid.run_finished")
    details = json.loads(event.details_json)
    assert details["files_total"] == run.files_total
    assert details["files_ok"] + details["files_quarantined"] + details["files_error"] == (
        run.files_total
    )
    assert event.resource == f"deid.deidrun:{run.pk}"


def test_a_rerun_adds_no_rows_and_rewrites_nothing(mixed, no_ocr_profile):
    run, _ = run_batch(mixed.batch, no_ocr_profile)
    root = Path(run.output_root)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    ids = set(run.results.values_list("pk", flat=True))

    # The same run again (a redelivered task): nothing to claim, nothing changes.
    again = services.process_run(run.pk, ocr=None)
    assert not again.claimed
    # Resume forces a second pass over the run: every file is skipped.
    DeidRun.objects.filter(pk=run.pk).update(status=DeidRun.Status.CANCELLED)
    services.resume_run(DeidRun.objects.get(pk=run.pk), acting_user=None, enqueue=False)
    second = services.process_run(run.pk, ocr=None)
    assert second.processed == 0 and second.status == DeidRun.Status.DONE
    assert set(run.results.values_list("pk", flat=True)) == ids
    after = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    assert after == before


def test_a_new_run_with_the_same_profile_reuses_earlier_outputs(mixed, no_ocr_profile):
    first, _ = run_batch(mixed.batch, no_ocr_profile)
    second, _ = run_batch(mixed.batch, no_ocr_profile)

    a, b = results_by_name(first), results_by_name(second)
    assert a.keys() == b.keys()
    for name, r in b.items():
        assert (r.status, r.output_sha256, r.output_relpath) == (
            a[name].status,
            a[name].output_sha256,
            a[name].output_relpath,
        )
        if r.status == "ok":
            assert r.actions.get("reused_from_run") == first.pk
            assert services.sha256_file(Path(second.output_root) / r.output_relpath) == (
                r.output_sha256
            )


def test_a_chunked_run_resumes_where_it_stopped(mixed, no_ocr_profile):
    run = services.start_run(mixed.batch, profile=no_ocr_profile, acting_user=None, enqueue=False)
    first = services.process_run(run.pk, ocr=None, limit=2)
    assert first.more and first.processed == 2
    run.refresh_from_db()
    assert run.status == "running" and run.files_done == 2 and run.heartbeat_at is None

    rest = services.process_run(run.pk, ocr=None)
    run.refresh_from_db()
    assert rest.status == "done" and rest.processed == run.files_total - 2
    assert run.results.count() == run.files_total


def test_a_killed_worker_is_taken_over_once_its_heartbeat_is_stale(mixed, no_ocr_profile):
    from django.utils import timezone

    run = services.start_run(mixed.batch, profile=no_ocr_profile, acting_user=None, enqueue=False)
    services.process_run(run.pk, ocr=None, limit=3)
    # A worker that died mid-run: still "running", heartbeat recent.
    DeidRun.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now())
    assert not services.process_run(run.pk, ocr=None).claimed
    DeidRun.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now() - services.STALE_AFTER * 2)
    outcome = services.process_run(run.pk, ocr=None)
    run.refresh_from_db()
    assert outcome.claimed and run.status == "done"
    assert run.results.count() == run.files_total == run.files_done
    assert AuditEvent.objects.filter(action="deid.run_taken_over").count() == 1


def test_cancel_stops_between_files(mixed, no_ocr_profile):
    run = services.start_run(mixed.batch, profile=no_ocr_profile, acting_user=None, enqueue=False)
    seen = []

    def cancel_after_two(status):
        seen.append(status)
        if len(seen) == 2:
            services.cancel_run(DeidRun.objects.get(pk=run.pk), acting_user=None)

    outcome = services.process_run(run.pk, ocr=None, progress=cancel_after_two)
    run.refresh_from_db()
    assert outcome.status == run.status == DeidRun.Status.CANCELLED
    assert run.results.count() == 2 == run.files_done
    actions = list(AuditEvent.objects.values_list("action", flat=True))
    assert "deid.run_cancel_requested" in actions and "deid.run_cancelled" in actions

    services.resume_run(run, acting_user=None, enqueue=False)
    services.process_run(run.pk, ocr=None)
    run.refresh_from_db()
    assert run.status == "done" and run.results.count() == run.files_total


def test_a_pending_run_cancels_at_once(mixed, no_ocr_profile):
    run = services.start_run(mixed.batch, profile=no_ocr_profile, acting_user=None, enqueue=False)
    services.cancel_run(run, acting_user=None)
    assert run.status == "cancelled"
    assert not services.process_run(run.pk, ocr=None).claimed
    with pytest.raises(services.DeidServiceError):
        services.cancel_run(run, acting_user=None)


def test_a_missing_file_is_an_error_that_retry_fixes(db, tmp_path, deid_keys, no_ocr_profile):
    source = make_source(tmp_path / "raw", tmp_path / "out")
    (tmp_path / "raw").mkdir()
    batch = make_batch(source)
    add_file(batch, "a.txt", note_bytes(), kind="text")
    missing = add_file(batch, "b.txt", note_bytes(), kind="text", write=False)
    run, _ = run_batch(batch, no_ocr_profile)
    assert run.files_error == 1 and run.files_ok == 1
    err = run.results.get(raw_file=missing)
    assert err.status == "error" and err.reason.startswith("raw_file_missing")

    (tmp_path / "raw" / "b.txt").write_bytes(note_bytes())
    assert services.retry_errors(run, acting_user=None, enqueue=False) == 1
    run.refresh_from_db()
    assert run.status == "pending" and run.files_error == 0 and run.files_done == 1
    services.process_run(run.pk, ocr=None)
    run.refresh_from_db()
    assert (run.status, run.files_ok, run.files_error, run.files_done) == ("done", 2, 0, 2)
    with pytest.raises(services.DeidServiceError):
        services.retry_errors(run, acting_user=None, enqueue=False)


def test_a_file_changed_since_the_scan_is_quarantined(db, tmp_path, deid_keys, no_ocr_profile):
    (tmp_path / "raw").mkdir()
    batch = make_batch(make_source(tmp_path / "raw", tmp_path / "out"))
    raw = add_file(batch, "a.txt", note_bytes(), kind="text")
    (tmp_path / "raw" / "a.txt").write_bytes(note_bytes() + b"more")
    run, _ = run_batch(batch, no_ocr_profile)
    assert run.results.get(raw_file=raw).reason.startswith("raw_file_changed")


def test_a_traversal_relpath_is_refused(db, tmp_path, deid_keys, no_ocr_profile):
    (tmp_path / "raw").mkdir()
    (tmp_path / "secret.txt").write_bytes(note_bytes())
    batch = make_batch(make_source(tmp_path / "raw", tmp_path / "out"))
    raw = add_file(batch, "../secret.txt", note_bytes(), kind="text", write=False)
    run, _ = run_batch(batch, no_ocr_profile)
    result = run.results.get(raw_file=raw)
    assert result.status == "quarantined"
    assert result.reason.startswith("path_outside_raw_root")


def test_the_note_loses_the_patient_named_in_the_study_dicom(mixed, no_ocr_profile):
    run, _ = run_batch(mixed.batch, no_ocr_profile)
    note = run.results.get(raw_file=mixed.files["note"])
    dicom = run.results.get(raw_file=mixed.files["dicom"])
    text = (Path(run.output_root) / note.output_relpath).read_text(encoding="utf-8")
    assert "张伟" not in text and "血红蛋白 120 g/L" in text
    # One patient, one pseudonym across kinds of file.
    assert note.patient_pseudonym == dicom.patient_pseudonym


def test_results_with_name_hits_are_flagged_for_review(mixed, no_ocr_profile):
    run, _ = run_batch(mixed.batch, no_ocr_profile)
    note = run.results.get(raw_file=mixed.files["note"])
    assert note.flagged and "name_hits" in note.flag_reasons


def test_start_run_refuses_a_batch_still_scanning(db, tmp_path, deid_keys):
    batch = make_batch(make_source(tmp_path, tmp_path / "o"), status="running")
    with pytest.raises(services.DeidServiceError):
        services.start_run(batch, acting_user=None, enqueue=False)


def test_start_run_enqueues_the_task_after_commit(
    mixed, no_ocr_profile, django_capture_on_commit_callbacks, monkeypatch
):
    from apps.deid import tasks

    sent = []
    monkeypatch.setattr(tasks.process_run, "delay", lambda run_id: sent.append(run_id))
    with django_capture_on_commit_callbacks(execute=True):
        run = services.start_run(mixed.batch, profile=no_ocr_profile, acting_user=None)
    assert sent == [run.pk]


def test_the_task_processes_in_chunks_and_requeues(mixed, no_ocr_profile, monkeypatch):
    from apps.deid import tasks

    monkeypatch.setattr(tasks, "CHUNK_FILES", 3)
    monkeypatch.setenv("DEID_OCR", "off")
    sent = []
    monkeypatch.setattr(tasks.process_run, "delay", lambda run_id: sent.append(run_id))
    run = services.start_run(mixed.batch, profile=no_ocr_profile, acting_user=None, enqueue=False)
    first = tasks.process_run.run(run.pk)
    assert first["more"] and sent == [run.pk]
    while sent:
        sent.pop()
        tasks.process_run.run(run.pk)
    run.refresh_from_db()
    assert run.status == "done" and run.files_done == run.files_total


@pytest.mark.django_db(transaction=True)
def test_two_workers_racing_for_one_run_process_each_file_once(tmp_path, deid_keys, no_ocr_profile):
    import threading

    from django.db import connection

    (tmp_path / "raw").mkdir()
    batch = make_batch(make_source(tmp_path / "raw", tmp_path / "out"))
    for i in range(12):
        add_file(batch, f"n{i}.txt", note_bytes() + str(i).encode(), kind="text")
    run = services.start_run(batch, profile=no_ocr_profile, acting_user=None, enqueue=False)
    barrier = threading.Barrier(2)
    outcomes = []

    def worker():
        try:
            barrier.wait()
            outcomes.append(services.process_run(run.pk, ocr=None))
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(o.claimed for o in outcomes) == [False, True]
    run.refresh_from_db()
    assert run.status == "done" and run.results.count() == 12 == run.files_done == run.files_ok


WFDB_HEADER = """ZY20240305 1 500 1000 10:32:00 05/03/2024
ZY20240305.dat 16 200/mV 12 0 -3 1234 0 ECG lead I
# 张伟 电话13812345678
"""


def test_a_wfdb_record_keeps_matching_pseudonymized_names(db, tmp_path, deid_keys, no_ocr_profile):
    (tmp_path / "raw").mkdir()
    batch = make_batch(make_source(tmp_path / "raw", tmp_path / "out"))
    hea = add_file(batch, "ecg/ZY20240305.hea", WFDB_HEADER.encode(), kind="wfdb")
    dat = add_file(batch, "ecg/ZY20240305.dat", bytes(range(256)) * 8, kind="wfdb")
    run, _ = run_batch(batch, no_ocr_profile)
    h, d = run.results.get(raw_file=hea), run.results.get(raw_file=dat)
    assert (h.status, d.status) == ("ok", "ok"), (h.reason, d.reason)
    assert Path(h.output_relpath).stem == Path(d.output_relpath).stem
    assert "ZY20240305" not in h.output_relpath + d.output_relpath
    header = (Path(run.output_root) / h.output_relpath).read_text()
    assert f"{Path(d.output_relpath).name} 16" in header


def test_outputs_are_not_reused_across_different_ocr_engines(mixed, no_ocr_profile):
    first, _ = run_batch(mixed.batch, no_ocr_profile)
    assert first.ocr_mode == "off"
    second = services.start_run(
        mixed.batch, profile=no_ocr_profile, acting_user=None, enqueue=False
    )
    services.process_run(second.pk, ocr=object())  # some other OCR engine
    second.refresh_from_db()
    assert second.ocr_mode == "custom"
    assert not any("reused_from_run" in r.actions for r in second.results.all())
    assert second.files_ok == first.files_ok


def test_the_summary_is_totalled_when_the_run_stops(mixed, no_ocr_profile):
    run, _ = run_batch(mixed.batch, no_ocr_profile)
    stored = run.summary
    assert stored["by_kind"]["dicom"] == 2 and stored["flagged"] >= 1
    assert stored["findings"] and not stored["partial"]
    summary = services.run_summary(run)
    assert summary["by_status"] == {"ok": 3, "quarantined": 4, "error": 0}
    assert summary["findings"] == stored["findings"] and summary["balanced"]


def test_an_unexpected_failure_marks_the_run_failed_without_quoting_values(
    mixed, no_ocr_profile, monkeypatch, caplog
):
    def broken(self, raw):
        raise ValueError("bad value ZY20240305")  # a message that quotes raw data

    monkeypatch.setattr(services._Worker, "process", broken)
    run = services.start_run(mixed.batch, profile=no_ocr_profile, acting_user=None, enqueue=False)
    with pytest.raises(ValueError):
        services.process_run(run.pk, ocr=None)
    run.refresh_from_db()
    assert run.status == "failed" and run.error == "ValueError"
    assert "ZY20240305" not in caplog.text and "deid run" in caplog.text
    assert AuditEvent.objects.filter(action="deid.run_failed").exists()
    services.resume_run(run, acting_user=None, enqueue=False)
    assert DeidRun.objects.get(pk=run.pk).status == "pending"


def test_the_task_reraises_failures_without_their_message(mixed, no_ocr_profile, monkeypatch):
    from apps.deid import tasks

    def broken(self, raw):
        raise ValueError("bad value ZY20240305")

    monkeypatch.setattr(services._Worker, "process", broken)
    monkeypatch.setenv("DEID_OCR", "off")
    run = services.start_run(mixed.batch, profile=no_ocr_profile, acting_user=None, enqueue=False)
    with pytest.raises(tasks.RunFailed) as exc:
        tasks.process_run.run(run.pk)
    assert "ZY20240305" not in str(exc.value) and exc.value.__cause__ is None
    assert exc.value.__suppress_context__


def test_a_file_that_killed_the_worker_twice_becomes_an_error(mixed, no_ocr_profile):
    from django.utils import timezone

    run = services.start_run(mixed.batch, profile=no_ocr_profile, acting_user=None, enqueue=False)
    services.process_run(run.pk, ocr=None, limit=1)
    poison = mixed.files["note"]
    stale = timezone.now() - services.STALE_AFTER * 2

    # First death on the file: it is retried.
    DeidRun.objects.filter(pk=run.pk).update(heartbeat_at=stale, inflight_raw_file_id=poison.pk)
    services.process_run(run.pk, ocr=None, limit=1)
    run.refresh_from_db()
    assert run.suspect_raw_file_id == poison.pk
    assert not run.results.filter(raw_file=poison, status="error").exists()

    # A second death on the same file: recorded as an error, the run goes on to the end.
    run.results.filter(raw_file=poison).delete()
    DeidRun.objects.filter(pk=run.pk).update(
        heartbeat_at=stale,
        inflight_raw_file_id=poison.pk,
        files_done=run.results.count(),
        files_ok=run.results.filter(status="ok").count(),
        files_quarantined=run.results.filter(status="quarantined").count(),
    )
    services.process_run(run.pk, ocr=None)
    run.refresh_from_db()
    result = run.results.get(raw_file=poison)
    assert result.status == "error" and result.reason.startswith("worker_died_on_file")
    assert run.status == "done" and run.results.count() == run.files_total == run.files_done


def test_a_run_counts_the_files_it_could_link_to_no_patient(mixed, no_ocr_profile, client_as):
    """A note with no study and no record number of its own names no patient: lineage by
    patient and consent withdrawal cannot reach it, and the run page says how many."""
    add_file(mixed.batch, "loose/note-1.txt", "胸部CT未见异常。".encode(), kind="text")
    own = "住院号：ZY990001。心电图正常。".encode()
    add_file(mixed.batch, "loose/note-2.txt", own, kind="text")
    run = services.start_run(mixed.batch, profile=no_ocr_profile, acting_user=None, enqueue=False)
    services.process_run(run.pk, ocr=None)
    assert services.unlinked_by_kind(run) == {"text": 1}  # note-2 names its own record number
    page = client_as("data_steward").get(f"/deid/runs/{run.pk}/").content.decode()
    assert 'data-testid="unlinked"' in page and "text</span> 1" in page
