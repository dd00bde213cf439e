"""Playwright on Debian's chromium (never a downloaded browser), against live_server."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import require_service

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    require_service(
        "chromium",
        shutil.which("chromium") is not None,
        "apt-get install chromium (deploy/ci/services.sh)",
    )
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": []}


@pytest.fixture
def artifacts(request):
    """A folder under test-results/ for screenshots a person can look at."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "test-results" / request.node.name
    path.mkdir(parents=True, exist_ok=True)
    return path


# --- review fixtures -------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    """Test users by the dozen: PBKDF2's deliberate slowness costs seconds per user here."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def root(tmp_path):
    """Where sources' raw roots and runs' output roots live for one test."""
    return tmp_path


@pytest.fixture
def clinicians(db):
    """``clinicians(3)`` → three clinician reviewers (fresh usernames each call)."""
    import itertools

    from apps.core.roles import CLINICIAN
    from apps.core.testing import make_user

    counter = itertools.count(1)

    def make(n: int) -> list:
        return [make_user(f"clin{next(counter)}", CLINICIAN) for _ in range(n)]

    return make


@pytest.fixture
def steward(cast):
    return cast["data_steward"]


@pytest.fixture
def mixed_run(root, db):
    """A finished run with one real DICOM, one note and one EDF, plus a quarantined file."""
    from tests.review import factories as f

    run = f.make_run(root, status="running")
    f.add_result(
        run,
        kind="dicom",
        modality="CT",
        content=f.dicom_bytes(),
        original=f.dicom_bytes(patient_name="ZHANG^WEI", burned_in=True),
        actions={"pixel_boxes_masked": 1, "boxes": [[2, 2, 32, 8]]},
        flagged=True,
    )
    text, spans = f.note_with_spans()
    f.add_result(
        run,
        kind="text",
        modality="",
        content=text.encode(),
        original=b"Patient Zhang Wei seen on 2023-05-14, phone 13800138000. Chest pain resolved.",
        spans=spans,
    )
    f.add_result(run, kind="edf", modality="ECG", content=f.edf_bytes(), original=f.edf_bytes())
    f.add_result(run, kind="dicom", modality="CT", status="quarantined")
    return f.finish(run)
