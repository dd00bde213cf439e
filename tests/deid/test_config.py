"""Keys from the environment: strict decoding, a development-only fallback, no echo."""

from __future__ import annotations

import base64

import pytest
from django.core.exceptions import ImproperlyConfigured

from apps.deid import config


def test_keys_decode_from_hex_or_base64(monkeypatch):
    monkeypatch.setenv("DEID_PROJECT_KEY", "ab" * 32)
    monkeypatch.setenv("DEID_VAULT_KEY", base64.b64encode(b"v" * 32).decode())
    assert config.project_key().secret == b"\xab" * 32
    assert config.vault_key() == b"v" * 32


def test_keys_can_come_from_files(monkeypatch, tmp_path):
    path = tmp_path / "vault.key"
    path.write_text("cd" * 32 + "\n")
    monkeypatch.delenv("DEID_VAULT_KEY", raising=False)
    monkeypatch.setenv("DEID_VAULT_KEY_FILE", str(path))
    assert config.vault_key() == b"\xcd" * 32


def test_bad_keys_are_refused_without_echoing_them(monkeypatch):
    monkeypatch.setenv("DEID_VAULT_KEY", "00" * 16)
    with pytest.raises(ImproperlyConfigured, match="16 bytes"):
        config.vault_key()
    monkeypatch.setenv("DEID_PROJECT_KEY", "not a key!")
    with pytest.raises(ImproperlyConfigured) as exc:
        config.project_key()
    assert "not a key" not in str(exc.value)


def test_development_derives_distinct_keys_from_secret_key(monkeypatch, settings):
    monkeypatch.delenv("DEID_PROJECT_KEY", raising=False)
    monkeypatch.delenv("DEID_VAULT_KEY", raising=False)
    monkeypatch.setenv("MEDCTL_DEV_SECRETS", "1")
    derived = config.project_key().secret
    assert len(derived) == 32 and derived != config.vault_key()
    assert derived == config.project_key().secret  # stable


def test_production_without_keys_refuses(monkeypatch, settings):
    monkeypatch.delenv("DEID_PROJECT_KEY", raising=False)
    monkeypatch.delenv("DEID_VAULT_KEY", raising=False)
    monkeypatch.setenv("MEDCTL_DEV_SECRETS", "0")
    settings.DEBUG = False
    with pytest.raises(ImproperlyConfigured, match="production"):
        config.project_key()
    with pytest.raises(ImproperlyConfigured, match="production"):
        config.vault_key()


def test_ocr_switch(monkeypatch):
    monkeypatch.setenv("DEID_OCR", "off")
    assert config.ocr_mode() is None
    monkeypatch.setenv("DEID_OCR", "auto")
    assert config.ocr_mode() == "auto"
    monkeypatch.setenv("DEID_OCR", "maybe")
    with pytest.raises(ImproperlyConfigured):
        config.ocr_mode()
