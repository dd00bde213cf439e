"""The one choke point for access: every view declares the roles that may use it.

Default deny. ``AccessMiddleware`` refuses any view that declares nothing, and the DRF
permission class does the same for the API, so a forgotten declaration is a 403, never an
open door. ``tests/test_access_matrix.py`` walks the URL configuration against these
declarations, and ``manage.py access_matrix`` writes the table in docs/access-matrix.md.

Declaring:
- function views: ``@roles(OPERATOR, ADMIN)`` or ``@public``;
- class views and DRF views: ``allowed_roles = {...}`` (``PUBLIC`` for public ones), and for a
  viewset optionally ``action_roles = {"create": {...}}`` to narrow single actions;
- ``mfa_exempt = True`` marks the few pages a user must reach before the TOTP check
  (enrolment, verification, logout, language switch).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings
from rest_framework.permissions import BasePermission

from apps.core.roles import ALL_ROLES

PUBLIC = frozenset({"__public__"})
ANY_ROLE = ALL_ROLES


def roles(*names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare the roles allowed to use a function view."""
    unknown = set(names) - ALL_ROLES
    if unknown or not names:
        raise ValueError(f"unknown or missing roles in declaration: {sorted(unknown)}")

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        view.allowed_roles = frozenset(names)  # type: ignore[attr-defined]
        return view

    return decorate


def public(view: Callable[..., Any]) -> Callable[..., Any]:
    view.allowed_roles = PUBLIC  # type: ignore[attr-defined]
    view.mfa_exempt = True  # type: ignore[attr-defined]
    return view


def mfa_exempt(view: Callable[..., Any]) -> Callable[..., Any]:
    view.mfa_exempt = True  # type: ignore[attr-defined]
    return view


def _target(view_func: Callable[..., Any]) -> Any:
    """The object that carries the declaration: the class for class-based and DRF views."""
    return getattr(view_func, "cls", None) or getattr(view_func, "view_class", None) or view_func


def declared_roles(view_func: Callable[..., Any]) -> frozenset[str] | None:
    """The union of roles a resolved view admits, or None when it declares nothing."""
    target = _target(view_func)
    declared = getattr(target, "allowed_roles", None)
    if declared is None:
        declared = getattr(view_func, "allowed_roles", None)
    if declared is None:
        return None
    return frozenset(declared)


def is_drf_view(view_func: Callable[..., Any]) -> bool:
    return hasattr(view_func, "cls")


def is_mfa_exempt(view_func: Callable[..., Any]) -> bool:
    return bool(getattr(_target(view_func), "mfa_exempt", False) or getattr(
        view_func, "mfa_exempt", False
    ))


def roles_of(user: Any, auth: Any = None) -> frozenset[str]:
    """The roles a user acts with now: their groups, narrowed by an API token's scopes."""
    if user is None or not getattr(user, "is_authenticated", False) or not user.is_active:
        return frozenset()
    cached = getattr(user, "_medctl_roles", None)
    if cached is None:
        names = set(user.groups.values_list("name", flat=True))
        cached = frozenset(names & ALL_ROLES)
        user._medctl_roles = cached
    scopes = getattr(auth, "scopes", None)
    if scopes is not None:
        return cached & frozenset(scopes)
    return cached


def needs_mfa(user: Any) -> bool:
    return bool(roles_of(user) & set(settings.MFA_REQUIRED_ROLES))


def mfa_satisfied(user: Any) -> bool:
    """True once the session passed TOTP (django-otp's ``is_verified``) or MFA is not needed."""
    if not needs_mfa(user):
        return True
    is_verified = getattr(user, "is_verified", None)
    return bool(is_verified and is_verified())


def allowed(declared: Iterable[str], user_roles: Iterable[str]) -> bool:
    declared = frozenset(declared)
    return declared == PUBLIC or bool(declared & frozenset(user_roles))


class DeclaredRolesPermission(BasePermission):
    """DRF's half of the choke point: the view's declaration, per action when given."""

    message = "Your roles do not allow this."

    def has_permission(self, request: Any, view: Any) -> bool:
        declared = getattr(view, "allowed_roles", None)
        if declared is None:
            return False
        action = getattr(view, "action", None)
        per_action = getattr(view, "action_roles", {}) or {}
        if action in per_action:
            declared = per_action[action]
        if frozenset(declared) == PUBLIC:
            return True
        user = request.user
        if not user or not user.is_authenticated:
            return False
        # Session callers must have passed TOTP; tokens can only be minted after it.
        if getattr(request, "auth", None) is None and not mfa_satisfied(user):
            self.message = "Multi-factor authentication required."
            return False
        return allowed(declared, roles_of(user, request.auth))
