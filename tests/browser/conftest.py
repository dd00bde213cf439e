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
