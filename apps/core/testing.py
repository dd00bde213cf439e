"""The cast of test users, one per role, and logged-in clients (STYLE.md 18).

Importable by every app's tests; imports only Django and django-otp, never another app.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.test import Client
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.plugins.otp_totp.models import TOTPDevice

from apps.core.roles import ALL_ROLES

PASSWORD = "correct-horse-battery-staple-42"  # noqa: S105 - test cast only


def make_user(username: str, *role_names: str, password: str = PASSWORD, **extra: Any) -> Any:
    """A user in the given roles (groups are created as needed)."""
    unknown = set(role_names) - ALL_ROLES
    if unknown:
        raise ValueError(f"unknown roles: {sorted(unknown)}")
    user = get_user_model().objects.create_user(username=username, password=password, **extra)
    for name in role_names:
        group, _ = Group.objects.get_or_create(name=name)
        user.groups.add(group)
    return user


def totp_device(user: Any) -> TOTPDevice:
    device = TOTPDevice.objects.filter(user=user, confirmed=True).first()
    if device is None:
        device = TOTPDevice.objects.create(user=user, name="test", confirmed=True)
    return device


def client_for(user: Any, *, verified: bool = True, client: Client | None = None) -> Client:
    """A test client logged in as ``user``; ``verified`` marks the session as past TOTP."""
    client = client or Client()
    client.force_login(user)
    if verified:
        device = totp_device(user)
        session = client.session
        session[DEVICE_ID_SESSION_KEY] = device.persistent_id
        session.save()
    return client


def mfa_required(role: str) -> bool:
    return role in settings.MFA_REQUIRED_ROLES
