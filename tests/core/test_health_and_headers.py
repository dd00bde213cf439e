"""/healthz, request ids, security headers, settings from the environment."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

from controlplane import env

pytestmark = pytest.mark.django_db


def test_healthz_reports_database_broker_and_channel_layer(client):
    response = client.get("/healthz")
    body = response.json()
    assert response.status_code == 200, body
    assert set(body["checks"]) == {"database", "broker", "channel_layer"}
    assert all(check["ok"] for check in body["checks"].values())


def test_healthz_says_503_and_names_the_broken_part(client, monkeypatch):
    from apps.core import health

    def down():
        raise ConnectionRefusedError("broker unreachable")

    monkeypatch.setitem(health.CHECKS, "broker", down)
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["checks"]["broker"]["ok"] is False
    assert "ConnectionRefusedError" in response.json()["checks"]["broker"]["error"]


def test_every_response_carries_a_request_id_and_a_strict_csp(client):
    response = client.get("/accounts/login/")
    assert len(response["X-Request-ID"]) >= 8
    assert "script-src 'self'" in response["Content-Security-Policy"]
    assert response["X-Frame-Options"] == "DENY"


def test_a_well_formed_proxy_request_id_is_kept_and_a_hostile_one_replaced(client):
    assert client.get("/healthz", HTTP_X_REQUEST_ID="abc-123-def")["X-Request-ID"] == "abc-123-def"
    hostile = client.get("/healthz", HTTP_X_REQUEST_ID="x\nSet-Cookie: a=b")["X-Request-ID"]
    assert "\n" not in hostile and "Set-Cookie" not in hostile


def test_the_login_page_speaks_chinese_when_asked(client):
    response = client.get("/accounts/login/", HTTP_ACCEPT_LANGUAGE="zh-Hans")
    assert "登录" in response.content.decode()


def test_env_helpers_reject_bad_values(monkeypatch):
    monkeypatch.setenv("X_BOOL", "maybe")
    with pytest.raises(ImproperlyConfigured, match="X_BOOL='maybe'"):
        env.env_bool("X_BOOL")
    monkeypatch.setenv("X_INT", "ten")
    with pytest.raises(ImproperlyConfigured, match="X_INT='ten'"):
        env.env_int("X_INT", 1)


def test_production_secrets_have_no_default(monkeypatch, tmp_path):
    monkeypatch.delenv("X_SECRET", raising=False)
    with pytest.raises(ImproperlyConfigured, match="X_SECRET"):
        env.env_secret("X_SECRET", required=True, generate_into=tmp_path / "s")


def test_secrets_are_read_from_a_file(monkeypatch, tmp_path):
    (tmp_path / "s").write_text("from-file\n")
    monkeypatch.delenv("X_SECRET", raising=False)
    monkeypatch.setenv("X_SECRET_FILE", str(tmp_path / "s"))
    assert env.env_secret("X_SECRET", required=True) == "from-file"


def test_demo_secrets_are_generated_once_and_kept(monkeypatch, tmp_path):
    monkeypatch.delenv("X_SECRET", raising=False)
    first = env.env_secret("X_SECRET", required=False, generate_into=tmp_path / "k")
    assert first == env.env_secret("X_SECRET", required=False, generate_into=tmp_path / "k")
    assert len(first) > 40
    assert (tmp_path / "k").stat().st_mode & 0o077 == 0


def test_a_production_site_refuses_to_start_without_its_secrets(tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.endswith(("SECRET_KEY", "_KEY_FILE"))}
    env.update(
        MEDCTL_ENV="production",
        MEDCTL_VAR_DIR=str(tmp_path),
        DJANGO_SETTINGS_MODULE="controlplane.settings",
    )
    proc = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "SECRET_KEY (or SECRET_KEY_FILE) must be set" in proc.stderr
    assert not (tmp_path / "secret_key").exists()
