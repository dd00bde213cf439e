"""`manage.py deid_folder IN OUT --report R.json`: every input reported once, PHI gone."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from django.core.management import call_command

from apps.demo import synthetic

pytestmark = pytest.mark.slow


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "in"
    synthetic.write_cohort(root, n_patients=3, slices=2)
    (root / "junk.bin").write_bytes(os.urandom(700))
    good = next(root.rglob("slice-000.dcm")).read_bytes()
    (root / "patient-000" / "ct" / "truncated.dcm").write_bytes(good[:300])
    (root / "patient-001" / "no-extension").write_bytes(good)  # DICOM without extension
    (root / "escape").symlink_to("/etc/hostname")
    return root


def run(tree: Path, tmp_path: Path, *extra: str) -> dict:
    report = tmp_path / "report.json"
    call_command(
        "deid_folder",
        str(tree),
        str(tmp_path / "out"),
        "--report",
        str(report),
        "--no-ocr",
        "--no-progress",
        *extra,
    )
    return json.loads(report.read_text(encoding="utf-8"))


def test_every_input_appears_once_and_phi_is_gone(tree, tmp_path):
    report = run(tree, tmp_path, "--workers", "2")
    inputs = sorted(
        str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_file() or p.is_symlink()
    )
    assert [f["input"] for f in report["files"]] == inputs
    by_input = {f["input"]: f for f in report["files"]}
    assert by_input["junk.bin"]["status"] == "quarantined"
    assert by_input["patient-000/ct/truncated.dcm"]["status"] == "quarantined"
    assert by_input["escape"]["status"] == "quarantined" and by_input["escape"]["output"] is None
    assert by_input["patient-001/no-extension"]["kind"] == "dicom"
    assert by_input["patient-001/no-extension"]["status"] == "ok"
    s = report["summary"]
    assert s["files"] == len(inputs) == s["ok"] + s["quarantined"] + s["error"]
    assert s["error"] == 0

    out = tmp_path / "out"
    written = {f["output"] for f in report["files"] if f["output"]}
    assert written == {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    blob = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())
    assert synthetic.planted_found(blob, synthetic.patients(3)) == ""
    assert "胸部CT平扫".encode() in blob  # clinical content survives


def test_quarantined_files_have_no_output_and_a_reason(tree, tmp_path):
    report = run(tree, tmp_path, "--workers", "1")
    for entry in report["files"]:
        if entry["status"] != "ok":
            assert entry["output"] is None and entry["reason"]
