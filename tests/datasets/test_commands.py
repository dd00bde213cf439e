"""manage.py build_dataset and verify_dataset."""

from __future__ import annotations

from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from apps.datasets.models import DatasetVersion

pytestmark = pytest.mark.django_db


def test_build_dataset_refuses_an_unreleased_run_naming_it(unreleased_world):
    with pytest.raises(CommandError, match=f"de-id run {unreleased_world.run.pk} is not released"):
        call_command(
            "build_dataset",
            "x",
            "--run",
            str(unreleased_world.run.pk),
            stdout=StringIO(),
            stderr=StringIO(),
        )
    assert not DatasetVersion.objects.exists()


def test_build_dataset_packs_released_runs_and_verify_dataset_checks_them(world):
    out = StringIO()
    call_command(
        "build_dataset",
        "cli",
        "--run",
        str(world.run.pk),
        "--target-shard-mb",
        "0.004",
        stdout=out,
        stderr=StringIO(),
    )
    version = DatasetVersion.objects.get(name="cli")
    assert "ready: 3 samples" in out.getvalue() and version.status == "ready"
    out = StringIO()
    call_command("verify_dataset", str(version.pk), stdout=out)
    assert "OK" in out.getvalue()
    shard = sorted(Path(version.root).glob("shard-*.tar"))[0]
    shard.chmod(0o644)
    shard.write_bytes(shard.read_bytes()[:-1] + b"\x01")
    with pytest.raises(CommandError, match="problem"):
        call_command("verify_dataset", "cli", "--number", "1", stdout=StringIO(), stderr=StringIO())


def _lineage(*args):
    out, err = StringIO(), StringIO()
    call_command("lineage", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_lineage_follows_a_withdrawn_patient_to_versions_and_runs(built, world, tmp_path):
    import csv

    from apps.datasets import services

    services.record_dataset_use(
        built, consumer_kind="jobs.trainingrun", consumer_id="5", acting_user=None
    )
    target = tmp_path / "reach.csv"
    out, _ = _lineage("--patient", "P-AAAA", "--csv", str(target))
    assert f"patient P-AAAA: ct-demo v1 (id {built.pk}): 5 files in 1 sample" in out
    assert "read by Training run 5 (jobs.trainingrun) through ct-demo v1" in out
    with target.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert {int(r["raw_file_id"]) for r in rows if r["row"] == "file"} == {
        world.raws[k].pk for k in ("a_ct1", "a_ct2", "a_ct3", "a_report", "a_ecg")
    }
    assert [r["consumer_id"] for r in rows if r["row"] == "use"] == ["5"]
    out, _ = _lineage("--sha256", world.raws["a_ecg"].sha256)
    assert out.startswith(
        f"raw file {world.raws['a_ecg'].pk}: ct-demo v1 (id {built.pk}): 1 file in 1 sample"
    )
    out, _ = _lineage("--patient", "P-NOBODY")
    assert out.strip() == "patient P-NOBODY: in no dataset version"


def test_lineage_lists_every_raw_file_behind_a_run_as_csv(built, world):
    import csv

    from apps.datasets import services

    services.record_dataset_use(
        built, consumer_kind="jobs.trainingrun", consumer_id="5", acting_user=None
    )
    out, err = _lineage("--run", "5", "--csv", "-")
    assert "Training run 5: ct-demo v1" in err and "11 files in 3 samples" in err
    rows = list(csv.DictReader(StringIO(out)))
    assert {(int(r["raw_file_id"]), r["raw_sha256"]) for r in rows} == {
        (m.raw_file_id, m.raw_file.sha256) for m in services.lineage_of_version(built)
    }


def test_lineage_refuses_what_it_cannot_answer(built, tmp_path):
    for args, message in (
        (["--run", "6"], "read no dataset version"),
        (["--consumer", "jobs.trainingrun", "5;rm"], "a consumer is KIND ID"),
        (["--raw-file", "999999"], "no raw file 999999"),
        (["--patient", "P-AAAA", "--csv", str(tmp_path / "missing" / "x.csv")], "cannot write"),
    ):
        with pytest.raises(CommandError, match=message):
            _lineage(*args)


def test_lineage_writes_a_run_csv_file_with_a_progress_bar(built, tmp_path):
    import csv

    from apps.datasets import services

    services.record_dataset_use(
        built, consumer_kind="jobs.trainingrun", consumer_id="5", acting_user=None
    )
    target = tmp_path / "run-5.csv"
    _out, err = _lineage("--run", "5", "--csv", str(target))
    assert "11/11" in err  # the bar counted every row of the version
    with target.open(newline="") as f:
        assert len(list(csv.DictReader(f))) == 11
