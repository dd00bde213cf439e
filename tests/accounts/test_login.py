"""Login, lockout, TOTP enforcement for privileged roles."""

from __future__ import annotations

import pytest
from django.test import Client
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice

from apps.core.testing import PASSWORD, client_for, make_user

pytestmark = pytest.mark.django_db


def login(client: Client, username: str, password: str = PASSWORD):
    return client.post("/accounts/login/", {"username": username, "password": password})


def code_for(device: TOTPDevice) -> str:
    return f"{totp(device.bin_key, step=device.step, t0=device.t0, digits=device.digits):06d}"


def test_it_signs_in_a_clinician_without_a_second_factor(client):
    make_user("dr_li", "clinician_reviewer")
    response = login(client, "dr_li")
    assert response.status_code == 302
    assert client.get("/").status_code == 200


def test_it_locks_the_account_after_repeated_failures(client, settings):
    make_user("op", "clinician_reviewer")
    for _ in range(settings.AXES_FAILURE_LIMIT):
        login(client, "op", "wrong-password-000")
    locked = login(client, "op")  # even the right password is refused now
    assert locked.status_code == 429
    assert "locked" in locked.content.decode().lower()
    assert "_auth_user_id" not in client.session


def test_a_locked_account_does_not_lock_other_accounts(client, settings):
    make_user("a1", "auditor")
    make_user("a2", "auditor")
    for _ in range(settings.AXES_FAILURE_LIMIT):
        login(client, "a1", "wrong-password-000")
    assert login(Client(), "a2").status_code == 302


@pytest.mark.parametrize("role", ["operator", "privacy_officer", "admin"])
def test_privileged_roles_must_pass_totp_before_any_page(role):
    user = make_user(f"u_{role}", role)
    TOTPDevice.objects.create(user=user, name="phone", confirmed=True)
    client = client_for(user, verified=False)
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/mfa/")
    assert client.get("/api/me/").status_code == 403


def test_a_privileged_user_without_a_device_is_sent_to_enrolment_with_a_qr_code():
    user = make_user("newop", "operator")
    client = client_for(user, verified=False)
    page = client.get("/accounts/mfa/")
    assert page.status_code == 200
    assert b"<svg" in page.content
    device = TOTPDevice.objects.get(user=user, confirmed=False)
    confirmed = client.post("/accounts/mfa/", {"code": code_for(device)})
    assert confirmed.status_code == 302
    device.refresh_from_db()
    assert device.confirmed
    assert client.get("/").status_code == 200


def test_a_wrong_totp_code_keeps_the_gate_closed():
    user = make_user("op2", "operator")
    device = TOTPDevice.objects.create(user=user, name="phone", confirmed=True)
    client = client_for(user, verified=False)
    bad = (int(code_for(device)) + 1) % 1_000_000
    response = client.post("/accounts/mfa/", {"code": f"{bad:06d}"})
    assert response.status_code == 200
    assert client.get("/").status_code == 302


def test_a_right_totp_code_opens_the_gate():
    user = make_user("op3", "operator")
    device = TOTPDevice.objects.create(user=user, name="phone", confirmed=True)
    client = client_for(user, verified=False)
    response = client.post("/accounts/mfa/?next=/accounts/tokens/", {"code": code_for(device)})
    assert response["Location"] == "/accounts/tokens/"
    assert client.get("/").status_code == 200


def test_mfa_next_never_redirects_off_site():
    user = make_user("op4", "operator")
    device = TOTPDevice.objects.create(user=user, name="phone", confirmed=True)
    client = client_for(user, verified=False)
    response = client.post("/accounts/mfa/?next=https://evil.example/", {"code": code_for(device)})
    assert response["Location"] == "/"


def test_login_and_failures_are_audited_without_the_username(client):
    from apps.audit.models import AuditEvent

    make_user("dr_wang", "clinician_reviewer")
    login(client, "dr_wang", "wrong-password-000")
    login(client, "dr_wang")
    actions = list(AuditEvent.objects.order_by("seq").values_list("action", flat=True))
    assert "accounts.login_failed" in actions and "accounts.login" in actions
    for event in AuditEvent.objects.all():
        assert "dr_wang" not in f"{event.resource}{event.details}"
