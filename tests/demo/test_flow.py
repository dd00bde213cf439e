"""The demo's main job past the review sample, in-process: the scripted reviewer judges the
de-identified files against the planted PHI, the gate releases, the version is packed and a
training run on it is accepted by the planner."""

from __future__ import annotations

from pathlib import Path

import pytest

from apps.demo import flow, synthetic
from trainer.data.tokenizer import Tokenizer

pytestmark = [pytest.mark.django_db, pytest.mark.slow]


@pytest.fixture
def deid_run(tmp_path, monkeypatch, cast):
    """The demo cohort (72 files: 59 clean reviews are the least that open the gate at 0.95)
    scanned and de-identified in this process, no OCR."""
    from apps.core.context import bound_context
    from apps.deid import services as deid
    from apps.deid.engine import DeidProfile, OcrSettings
    from apps.inventory import services as inventory

    monkeypatch.setenv("DEID_PROJECT_KEY", "11" * 32)
    monkeypatch.setenv("DEID_VAULT_KEY", "22" * 32)
    steward = cast["data_steward"]
    synthetic.write_cohort(tmp_path / "raw")
    with bound_context():
        source = inventory.create_source(
            {
                "source": "demo-test",
                "type": "MIXED",
                "owner": "test",
                "consent_status": "waived",
                "raw_root": str(tmp_path / "raw"),
                "deid_root": str(tmp_path / "deid"),
            },
            acting_user=steward,
        )
        batch = inventory.scan_source(inventory.start_scan(source, acting_user=steward).pk)
        profile = DeidProfile(name="t", ocr=OcrSettings(enabled=False, require_ocr=False))
        run = deid.start_run(batch, profile=profile, acting_user=steward, enqueue=False)
        deid.process_run(run.pk, ocr=None)
    run.refresh_from_db()
    assert run.status == "done" and run.files_ok == 72
    return run


def test_the_answer_key_finds_planted_phi_in_every_raw_file(tmp_path):
    synthetic.write_cohort(tmp_path, n_patients=2, slices=1)
    cohort = synthetic.patients(synthetic.COHORT_SIZE)
    found = {p.name: synthetic.planted_found(p.read_bytes(), cohort) for p in tmp_path.rglob("*.*")}
    assert set(found) == {"slice-000.dcm", "report.txt", "ecg.edf"}
    assert all(found.values()), found  # the check can fail: raw files all carry PHI
    assert synthetic.planted_found("胸部CT平扫 MRN".encode(), cohort) == ""


def test_released_packed_and_launched(deid_run, cast, settings, tmp_path):
    from apps.datasets import services as datasets
    from apps.jobs.models import RunState

    settings.DATASETS_ROOT = tmp_path / "datasets"
    settings.JOBS_RUNS_ROOT = str(tmp_path / "runs")
    steward, clinician = cast["data_steward"], cast["clinician_reviewer"]
    batch = flow.review_batch(deid_run, steward)
    assert batch.items.count() == 72  # a small run is reviewed whole
    assert flow.scripted_review(batch, clinician) == (72, 0)
    assert flow.release(deid_run, batch, steward) == []
    deid_run.refresh_from_db()
    assert deid_run.released_at is not None

    version = datasets.pack_version(flow.dataset_version(deid_run, steward).pk)
    assert version.status == "ready" and version.sample_count == 36
    assert flow.dataset_version(deid_run, steward).pk == version.pk  # the demo reruns

    from apps.datasets import tokenizers

    row = flow.tokenizer_for(version, cast["operator"])
    assert row.status == "queued"  # the demo's worker trains it; here the task body runs
    row = tokenizers.run_tokenizer_build(row.pk)
    tokenizer = Path(row.path)
    assert Tokenizer.load(tokenizer).vocab_size == 512  # learned from the released reports
    assert flow.tokenizer_for(version, cast["operator"]).pk == row.pk  # the demo reruns
    run = flow.training_run(version, cast["operator"], tokenizer)
    assert run.state == RunState.SUBMITTING and run.preset == "tiny"
    assert run.tokenizer == str(tokenizer) and run.plan["warnings"] == []
    assert flow.training_run(version, cast["operator"], tokenizer).pk == run.pk


def test_a_file_with_phi_left_fails_review_and_keeps_the_gate_closed(deid_run, cast):
    from apps.deid.models import DeidFileResult

    note = DeidFileResult.objects.get(
        run=deid_run, kind="text", raw_file__relpath__endswith="000/report.txt"
    )
    leaked = Path(deid_run.output_root) / note.output_relpath
    leaked.chmod(0o644)
    leaked.write_text(leaked.read_text(encoding="utf-8") + synthetic.patients(1)[0].name_zh)
    batch = flow.review_batch(deid_run, cast["data_steward"])
    assert flow.scripted_review(batch, cast["clinician_reviewer"]) == (71, 1)
    reasons = flow.release(deid_run, batch, cast["data_steward"])
    assert any("finding" in r for r in reasons), reasons
    deid_run.refresh_from_db()
    assert deid_run.released_at is None
