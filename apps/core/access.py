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

import re
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
    return bool(
        getattr(_target(view_func), "mfa_exempt", False) or getattr(view_func, "mfa_exempt", False)
    )


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


# --- the URL configuration as a table of declarations ---------------------------------------

_SAMPLE_ARGS = {
    "int": 1,
    "str": "x",
    "slug": "x",
    "uuid": "00000000-0000-0000-0000-000000000001",
    "path": "x",
}


def iter_endpoints() -> list[dict[str, Any]]:
    """Every URL pattern with its view, declared roles and a sample URL to request.

    Used by the access-matrix test and by ``manage.py access_matrix`` (docs/access-matrix.md).
    """
    from django.urls import URLPattern, URLResolver, get_resolver, reverse

    found: list[dict[str, Any]] = []

    def walk(
        patterns: list[Any], prefix: str, namespace: str | None, converters: dict[str, Any]
    ) -> None:
        for p in patterns:
            if isinstance(p, URLResolver):
                ns = p.namespace
                full_ns = f"{namespace}:{ns}" if namespace and ns else (ns or namespace)
                conv = {**converters, **getattr(p.pattern, "converters", {})}
                walk(p.url_patterns, prefix + str(p.pattern), full_ns, conv)
            elif isinstance(p, URLPattern):
                route = prefix + str(p.pattern)
                name = f"{namespace}:{p.name}" if namespace and p.name else p.name
                conv = {**converters, **getattr(p.pattern, "converters", {})}
                kwargs = {
                    key: _SAMPLE_ARGS.get(type(c).__name__.replace("Converter", "").lower(), "1")
                    for key, c in conv.items()
                }
                kwargs.update({k: "1" for k in p.pattern.regex.groupindex if k not in kwargs})
                try:
                    sample = reverse(name, kwargs=kwargs) if name else None
                except Exception:
                    sample = None
                found.append(
                    {
                        "route": route,
                        "name": name,
                        "view": p.callback,
                        "roles": declared_roles(p.callback),
                        "sample": sample,
                        "api": is_drf_view(p.callback),
                        "methods": method_roles(p.callback),
                    }
                )

    walk(get_resolver().url_patterns, "/", None, {})
    return found


def method_roles(view_func: Callable[..., Any]) -> dict[str, frozenset[str]]:
    """For a DRF viewset route: each HTTP method's roles after ``action_roles`` narrowing."""
    actions = getattr(view_func, "actions", None) or {}
    cls = getattr(view_func, "cls", None)
    declared = declared_roles(view_func)
    if not actions or cls is None or declared is None:
        return {}
    per_action = getattr(cls, "action_roles", {}) or {}
    return {
        method.upper(): frozenset(per_action.get(action, declared))
        for method, action in actions.items()
    }


def matrix_markdown() -> str:
    """The role x endpoint table, generated from the declarations."""
    from apps.core.roles import ROLE_LABELS

    cols = sorted(ALL_ROLES)
    lines = [
        "# Access matrix",
        "",
        "Generated by `make access-matrix` from the roles each view declares "
        "(`apps/core/access.py`). `tests/test_access_matrix.py` proves every row against the "
        "running site and fails when this file is out of date. ✓ = allowed, · = 403, "
        "public = no login needed. Anonymous callers get a login redirect (pages) or "
        "401/403 (API) everywhere but public rows. A row naming a method (POST, DELETE, …) is "
        "an API action its viewset narrows to fewer roles (`action_roles`).",
        "",
        "| endpoint | " + " | ".join(str(ROLE_LABELS[c]) for c in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for ep in sorted(iter_endpoints(), key=lambda e: e["route"]):
        roles_ = ep["roles"]
        if roles_ == PUBLIC:
            cells = ["public"] * len(cols)
        elif roles_ is None:
            cells = ["UNDECLARED"] * len(cols)
        else:
            cells = ["✓" if c in roles_ else "·" for c in cols]
        route = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"<\1>", ep["route"])
        route = route.replace("^", "").replace("$", "").replace("|", "\\|")
        lines.append(f"| `{route}` | " + " | ".join(cells) + " |")
        # Methods whose action narrows the view's roles get a row of their own.
        for method, narrowed in sorted(ep["methods"].items()):
            if narrowed != roles_ and method != "GET":
                cells = ["✓" if c in narrowed else "·" for c in cols]
                lines.append(f"| `{route}` {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
