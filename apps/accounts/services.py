"""Account operations: roles, API tokens, TOTP enrolment. Each writes its audit event."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from django_otp.plugins.otp_totp.models import TOTPDevice

from apps.accounts.models import ApiToken
from apps.audit.services import record
from apps.core.access import roles_of
from apps.core.roles import ALL_ROLES

User = get_user_model()


def _user_state(user: Any) -> dict[str, Any]:
    return {
        "id": user.pk,
        "is_active": user.is_active,
        "roles": sorted(set(user.groups.values_list("name", flat=True)) & ALL_ROLES),
    }


def ensure_role_groups() -> None:
    """Create one group per role (idempotent; run after migrate and by the demo)."""
    for name in sorted(ALL_ROLES):
        Group.objects.get_or_create(name=name)


def create_user(
    username: str,
    *,
    roles: set[str] | frozenset[str],
    acting_user: Any | None,
    password: str | None = None,
    email: str = "",
) -> Any:
    """Create a staff account in the given roles."""
    unknown = set(roles) - ALL_ROLES
    if unknown:
        raise ValidationError(f"unknown roles: {sorted(unknown)}")
    with transaction.atomic():
        user = User.objects.create_user(username=username, password=password, email=email)
        if not password:
            user.set_unusable_password()
            user.save(update_fields=["password"])
        for name in sorted(roles):
            user.groups.add(Group.objects.get_or_create(name=name)[0])
        record(
            "accounts.user_created",
            f"accounts.user:{user.pk}",
            actor=acting_user,
            post=_user_state(user),
        )
    return user


def set_roles(user: Any, roles: set[str] | frozenset[str], *, acting_user: Any) -> None:
    """Replace a user's roles. An admin cannot remove their own admin role (no lock-out)."""
    unknown = set(roles) - ALL_ROLES
    if unknown:
        raise ValidationError(f"unknown roles: {sorted(unknown)}")
    if acting_user is not None and acting_user.pk == user.pk and "admin" not in roles:
        raise ValidationError("You cannot remove your own administrator role.")
    with transaction.atomic():
        before = _user_state(user)
        keep = user.groups.exclude(name__in=ALL_ROLES)
        user.groups.set(list(keep) + [Group.objects.get_or_create(name=n)[0] for n in roles])
        user.__dict__.pop("_medctl_roles", None)
        after = _user_state(user)
        if before != after:
            record(
                "accounts.roles_changed",
                f"accounts.user:{user.pk}",
                actor=acting_user,
                pre=before,
                post=after,
                details={
                    "added": sorted(set(after["roles"]) - set(before["roles"])),
                    "removed": sorted(set(before["roles"]) - set(after["roles"])),
                },
            )


def issue_token(
    user: Any, *, name: str, hours: int | None = None, scopes: set[str] | None = None
) -> tuple[ApiToken, str]:
    """Mint a bearer token for ``user``; returns the row and the secret, shown only once.

    Scopes default to all of the user's roles and may only narrow them. Lifetime is capped
    by API_TOKEN_MAX_HOURS.
    """
    hours = hours or settings.API_TOKEN_DEFAULT_HOURS
    if not 1 <= hours <= settings.API_TOKEN_MAX_HOURS:
        raise ValidationError(
            f"lifetime must be 1 to {settings.API_TOKEN_MAX_HOURS} hours, got {hours}"
        )
    held = roles_of(user)
    scopes = set(held) if scopes is None else set(scopes)
    if not scopes or not scopes <= held:
        raise ValidationError(f"scopes must be a non-empty subset of your roles {sorted(held)}")
    name = name.strip()[:80] or "token"
    key_id, secret, plaintext = ApiToken.new_key()
    with transaction.atomic():
        token = ApiToken.objects.create(
            user=user,
            name=name,
            key_id=key_id,
            secret_hash=ApiToken.hash_secret(secret),
            scopes=sorted(scopes),
            expires_at=timezone.now() + timedelta(hours=hours),
        )
        record(
            "accounts.token_issued",
            f"accounts.apitoken:{token.pk}",
            actor=user,
            post={
                "key_id": key_id,
                "scopes": token.scopes,
                "expires_at": token.expires_at.isoformat(),
            },
            details={"hours": hours},
        )
    return token, plaintext


def revoke_token(token: ApiToken, *, acting_user: Any) -> bool:
    """Revoke a token now; False when it was already revoked (idempotent)."""
    with transaction.atomic():
        changed = ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
        if changed:
            record(
                "accounts.token_revoked",
                f"accounts.apitoken:{token.pk}",
                actor=acting_user,
                details={"key_id": token.key_id},
            )
    return bool(changed)


def pending_totp_device(user: Any) -> TOTPDevice:
    """The user's unconfirmed TOTP device, created on first call (enrolment in progress)."""
    device = TOTPDevice.objects.filter(user=user, confirmed=False).first()
    if device is None:
        device = TOTPDevice.objects.create(user=user, name="authenticator", confirmed=False)
    return device


def confirm_totp(user: Any, device: TOTPDevice, code: str) -> bool:
    """Confirm enrolment when ``code`` is valid for the pending device."""
    if device.user_id != user.pk or device.confirmed or not device.verify_token(code.strip()):
        return False
    with transaction.atomic():
        TOTPDevice.objects.filter(user=user, confirmed=True).delete()
        device.confirmed = True
        device.save(update_fields=["confirmed"])
        record(
            "accounts.mfa_enrolled",
            f"accounts.user:{user.pk}",
            actor=user,
            details={"device": device.persistent_id},
        )
    return True


def record_login(user: Any, *, succeeded: bool, username: str | None = None) -> None:
    """Audit a login attempt; a failure names only a hash of the username tried."""
    with transaction.atomic():
        if succeeded:
            record("accounts.login", f"accounts.user:{user.pk}", actor=user)
        else:
            digest = hashlib.sha256((username or "").encode()).hexdigest()[:16]
            record(
                "accounts.login_failed",
                "accounts.login:-",
                actor=None,
                details={"username_sha256": digest},
            )


def record_logout(user: Any) -> None:
    with transaction.atomic():
        record("accounts.logout", f"accounts.user:{user.pk}", actor=user)


def record_mfa_passed(user: Any, device: TOTPDevice) -> None:
    with transaction.atomic():
        record(
            "accounts.mfa_verified",
            f"accounts.user:{user.pk}",
            actor=user,
            details={"device": device.persistent_id},
        )
