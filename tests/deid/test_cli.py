"""``manage.py deid_run``: in-process runs with a progress bar, and a worker killed mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from apps.deid import services
from apps.deid.models import DeidFileResult, DeidRun
from tests.deid.factories import add_file, make_batch, make_source, note_bytes
from tests.workers import ROOT, database_url


@pytest.mark.django_db
def test_it_runs_a_batch_in_process_and_prints_counts(mixed, no_ocr_profile, tmp_path, capsys):
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps(no_ocr_profile.to_dict()), encoding="utf-8")
    out = StringIO()
    call_command("deid_run", str(mixed.batch.pk), "--profile", str(profile), "--no-ocr", stdout=out)
    run = DeidRun.objects.get()
    assert run.status == "done" and run.profile_fingerprint == no_ocr_profile.fingerprint()
    text = out.getvalue()
    assert f"run {run.pk} done: 7/7 files: 3 ok, 4 quarantined, 0 error" in text
    assert "7/7" in capsys.readouterr().err  # the tqdm bar


@pytest.mark.django_db
def test_it_refuses_unknown_batches_and_bad_profiles(mixed, tmp_path):
    with pytest.raises(CommandError, match="no ingest batch"):
        call_command("deid_run", "999", "--no-progress")
    bad = tmp_path / "bad.json"
    bad.write_text('{"nope": 1}', encoding="utf-8")
    with pytest.raises(CommandError, match="unknown profile keys"):
        call_command("deid_run", str(mixed.batch.pk), "--profile", str(bad), "--no-progress")


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(tmp_path, deid_keys):
    (tmp_path / "raw").mkdir()
    batch = make_batch(make_source(tmp_path / "raw", tmp_path / "out"))
    for i in range(120):
        add_file(
            batch, f"notes/n{i:03d}.txt", note_bytes() + f"第{i}次复查。".encode(), kind="text"
        )
    env = {**os.environ, "DATABASE_URL": database_url(), "DEID_OCR": "off"}
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "deid_run", str(batch.pk), "--no-progress", "--no-ocr"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while DeidFileResult.objects.count() < 5:
            assert proc.poll() is None, "the worker ended before it could be killed"
            assert time.monotonic() < deadline, "the worker never started"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    run = DeidRun.objects.get()
    done_before = run.results.count()
    assert run.status == "running" and 0 < done_before < 120

    # Its heartbeat goes stale; the next worker takes over and finishes.
    DeidRun.objects.filter(pk=run.pk).update(
        heartbeat_at=run.heartbeat_at - services.STALE_AFTER * 2
    )
    outcome = services.process_run(run.pk, ocr=None)
    run.refresh_from_db()
    assert outcome.claimed and outcome.processed == 120 - done_before
    assert run.status == "done" and run.results.count() == 120 == run.files_done == run.files_ok
    root = Path(run.output_root)
    for r in run.results.all():
        assert services.sha256_file(root / r.output_relpath) == r.output_sha256
    assert not list(root.rglob("*.tmp"))


@pytest.mark.django_db
def test_ctrl_c_cancels_between_files_and_resume_finishes(mixed, no_ocr_profile, monkeypatch):
    real = services._Worker.process
    calls = []

    def interrupted(self, raw):
        calls.append(raw.pk)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, raw)

    monkeypatch.setattr(services._Worker, "process", interrupted)
    out = StringIO()
    call_command("deid_run", str(mixed.batch.pk), "--no-ocr", "--no-progress", stdout=out)
    run = DeidRun.objects.get()
    assert run.status == "cancelled" and run.files_done == 2
    assert f"run {run.pk} cancelled: 2/7" in out.getvalue()

    monkeypatch.setattr(services._Worker, "process", real)
    call_command("deid_run", "--resume", str(run.pk), "--no-ocr", "--no-progress", stdout=out)
    run.refresh_from_db()
    assert run.status == "done" and run.results.count() == 7 == run.files_done


@pytest.mark.slow
@pytest.mark.django_db
def test_engine_processes_give_the_same_results_as_one(mixed, no_ocr_profile, tmp_path):
    from apps.deid.models import VaultRecord

    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps(no_ocr_profile.to_dict()), encoding="utf-8")
    common = ("--profile", str(profile), "--no-ocr", "--no-progress")
    call_command("deid_run", str(mixed.batch.pk), *common, "--workers", "2", stdout=StringIO())
    parallel = DeidRun.objects.get()
    assert parallel.status == "done" and parallel.files_done == 7 == parallel.results.count()
    assert (parallel.files_ok, parallel.files_quarantined, parallel.files_error) == (3, 4, 0)
    assert VaultRecord.objects.exists()  # the children's vault writes were persisted
    # The same batch in one process (no reuse: a different OCR engine is not involved, so
    # compare with a fresh run that cannot reuse by clearing the first run's key fingerprint).
    DeidRun.objects.filter(pk=parallel.pk).update(key_fingerprint="")
    call_command("deid_run", str(mixed.batch.pk), *common, stdout=StringIO())
    serial = DeidRun.objects.exclude(pk=parallel.pk).get()

    def view(run):
        return {
            r.raw_file_id: (r.status, r.reason, r.output_relpath, r.output_sha256, r.findings)
            for r in run.results.all()
        }

    assert view(parallel) == view(serial)
    assert not any("reused_from_run" in r.actions for r in serial.results.all())
