"""Short-lived, revocable API tokens whose scopes follow the user's roles."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.test import Client
from django.utils import timezone

from apps.accounts import services
from apps.accounts.models import ApiToken
from apps.core.testing import client_for, make_user

pytestmark = pytest.mark.django_db


def bearer(token: str) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {token}")


def test_a_token_authenticates_as_its_owner_with_its_scopes():
    user = make_user("steward", "data_steward", "project_manager")
    _, secret = services.issue_token(user, name="ci", scopes={"data_steward"})
    body = bearer(secret).get("/api/me/").json()
    assert body["username"] == "steward"
    assert body["roles"] == ["data_steward"]


def test_an_expired_token_is_refused_by_the_server():
    user = make_user("s2", "data_steward")
    token, secret = services.issue_token(user, name="ci", hours=1)
    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = bearer(secret).get("/api/me/")
    assert response.status_code == 401
    assert "expired" in response.json()["detail"]


def test_a_revoked_token_is_refused_at_once():
    user = make_user("s3", "data_steward")
    token, secret = services.issue_token(user, name="ci")
    assert bearer(secret).get("/api/me/").status_code == 200
    client_for(user).delete(f"/api/tokens/{token.pk}/")
    assert bearer(secret).get("/api/me/").status_code == 401


def test_a_wrong_secret_is_refused():
    user = make_user("s4", "data_steward")
    _, secret = services.issue_token(user, name="ci")
    forged = secret[:-4] + ("AAAA" if not secret.endswith("AAAA") else "BBBB")
    assert bearer(forged).get("/api/me/").status_code == 401
    assert bearer("mct_nothing").get("/api/me/").status_code == 401


def test_scopes_cannot_exceed_the_users_roles():
    user = make_user("s5", "clinician_reviewer")
    with pytest.raises(ValidationError):
        services.issue_token(user, name="x", scopes={"admin"})


def test_lifetime_is_capped(settings):
    user = make_user("s6", "clinician_reviewer")
    with pytest.raises(ValidationError):
        services.issue_token(user, name="x", hours=settings.API_TOKEN_MAX_HOURS + 1)


def test_removing_a_role_narrows_existing_tokens():
    admin = make_user("boss", "admin")
    user = make_user("s7", "auditor", "project_manager")
    _, secret = services.issue_token(user, name="x")
    services.set_roles(user, {"project_manager"}, acting_user=admin)
    assert bearer(secret).get("/api/me/").json()["roles"] == ["project_manager"]


def test_a_token_cannot_mint_another_token():
    user = make_user("s8", "data_steward")
    _, secret = services.issue_token(user, name="x")
    response = bearer(secret).post(
        "/api/tokens/", {"name": "child"}, content_type="application/json"
    )
    assert response.status_code == 403
    assert ApiToken.objects.filter(user=user).count() == 1


def test_a_verified_session_mints_a_token_shown_once():
    user = make_user("op", "operator")
    client = client_for(user)
    response = client.post(
        "/api/tokens/", {"name": "cli", "hours": 2}, content_type="application/json"
    )
    assert response.status_code == 201
    secret = response.json()["token"]
    assert bearer(secret).get("/api/me/").status_code == 200
    listed = client.get("/api/tokens/").json()["results"]
    assert "token" not in listed[0]
    assert ApiToken.objects.get().secret_hash != secret


def test_users_only_see_and_revoke_their_own_tokens():
    a = make_user("a", "data_steward")
    b = make_user("b", "data_steward")
    token, _ = services.issue_token(a, name="mine")
    other = client_for(b)
    assert other.get("/api/tokens/").json()["results"] == []
    assert other.delete(f"/api/tokens/{token.pk}/").status_code == 404
    token.refresh_from_db()
    assert token.revoked_at is None


def test_issuing_and_revoking_are_audited():
    from apps.audit.models import AuditEvent

    user = make_user("s9", "data_steward")
    token, secret = services.issue_token(user, name="x")
    services.revoke_token(token, acting_user=user)
    actions = list(AuditEvent.objects.order_by("seq").values_list("action", flat=True))
    assert actions[-2:] == ["accounts.token_issued", "accounts.token_revoked"]
    assert not AuditEvent.objects.filter(details_json__contains=secret).exists()
