"""Fixtures for the de-id run tests (the engine's own tests live in tests/deid/engine/)."""

from __future__ import annotations

import pytest


@pytest.fixture
def deid_keys(monkeypatch):
    """Explicit keys, so no test depends on the SECRET_KEY-derived development fallback."""
    monkeypatch.setenv("DEID_PROJECT_KEY", "11" * 32)
    monkeypatch.setenv("DEID_VAULT_KEY", "22" * 32)
    monkeypatch.setenv("DEID_OCR", "off")


@pytest.fixture
def no_ocr_profile():
    from apps.deid.engine import DeidProfile, OcrSettings

    return DeidProfile(name="test", ocr=OcrSettings(enabled=False, require_ocr=False))


@pytest.fixture
def mixed(db, tmp_path, deid_keys):
    from tests.deid.factories import mixed_batch

    return mixed_batch(tmp_path)


@pytest.fixture(autouse=True)
def _fast_passwords(request):
    # The cast fixture hashes seven passwords per test; PBKDF2 costs seconds on this machine.
    # The engine's own suite (tests/deid/engine/) runs without Django (-p no:django).
    if not request.config.pluginmanager.hasplugin("django"):
        return
    settings = request.getfixturevalue("settings")
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
