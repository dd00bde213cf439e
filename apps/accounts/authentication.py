"""Bearer authentication for the REST API with short-lived, revocable tokens."""

from __future__ import annotations

import hmac
from datetime import timedelta
from typing import Any

from django.utils import timezone
from rest_framework import authentication, exceptions

from apps.accounts.models import TOKEN_PREFIX, ApiToken


class ApiTokenAuthentication(authentication.BaseAuthentication):
    """``Authorization: Bearer mct_<key_id>_<secret>``; expiry is enforced here, per request."""

    keyword = "Bearer"

    def authenticate(self, request: Any) -> tuple[Any, ApiToken] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        scheme, _, raw = header.partition(" ")
        if scheme != self.keyword:
            return None
        parts = raw.strip().split("_", 2)
        if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
            raise exceptions.AuthenticationFailed("Malformed API token.")
        _, key_id, secret = parts
        token = ApiToken.objects.select_related("user").filter(key_id=key_id).first()
        if token is None or not hmac.compare_digest(
            token.secret_hash, ApiToken.hash_secret(secret)
        ):
            raise exceptions.AuthenticationFailed("Invalid API token.")
        if not token.is_usable:
            raise exceptions.AuthenticationFailed("API token expired or revoked.")
        if not token.user.is_active:
            raise exceptions.AuthenticationFailed("User inactive.")
        now = timezone.now()
        # Stamp use at most once a minute: a busy client should not write on every call.
        if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=1):
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        return token.user, token

    def authenticate_header(self, request: Any) -> str:
        return self.keyword
