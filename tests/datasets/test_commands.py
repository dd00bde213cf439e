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
