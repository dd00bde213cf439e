from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from apps.core import access, navigation
from apps.core.roles import ROLE_LABELS


def nav(request: HttpRequest) -> dict[str, Any]:
    """Menu entries for the user's roles; none until a required TOTP check has passed."""
    user = getattr(request, "user", None)
    user_roles = access.roles_of(user)
    show = bool(user_roles) and access.mfa_satisfied(user)
    return {
        "nav_items": navigation.items_for(user_roles) if show else [],
        "user_role_labels": [str(ROLE_LABELS[r]) for r in sorted(user_roles)],
    }
