"""Login events into the audit trail (Django's auth signals, no custom backend needed)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.db.models.signals import post_migrate
from django.dispatch import receiver

from apps.accounts import services


@receiver(user_logged_in)
def on_login(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    services.record_login(user, succeeded=True)


@receiver(user_login_failed)
def on_login_failed(
    sender: Any, credentials: dict[str, Any], request: Any = None, **kwargs: Any
) -> None:
    services.record_login(None, succeeded=False, username=credentials.get("username"))


@receiver(user_logged_out)
def on_logout(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    if user is not None:
        services.record_logout(user)


@receiver(post_migrate)
def on_migrate(sender: Any, **kwargs: Any) -> None:
    if getattr(sender, "label", None) == "accounts":
        services.ensure_role_groups()
