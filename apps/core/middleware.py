"""Request context, security headers and the default-deny access check."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from django.shortcuts import redirect
from django.utils.translation import gettext as _

from apps.core import access, context


def client_ip(request: HttpRequest) -> str | None:
    """The caller's address; X-Forwarded-For is believed only from TRUSTED_PROXIES."""
    remote = request.META.get("REMOTE_ADDR") or None
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    if remote and forwarded and remote in settings.TRUSTED_PROXIES:
        hops = [h.strip() for h in forwarded.split(",") if h.strip()]
        for hop in reversed(hops):
            if hop not in settings.TRUSTED_PROXIES:
                remote = hop
                break
    try:
        return str(ipaddress.ip_address(remote)) if remote else None
    except ValueError:
        return None


class RequestContextMiddleware:
    """Gives every request an id (echoed as X-Request-ID) that its audit events share."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        proposed = request.META.get("HTTP_X_REQUEST_ID")
        with context.bound_context(proposed, client_ip(request)) as ctx:
            request.request_id = ctx.request_id  # type: ignore[attr-defined]
            response = self.get_response(request)
        response["X-Request-ID"] = ctx.request_id
        return response


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if settings.CONTENT_SECURITY_POLICY:
            response.setdefault("Content-Security-Policy", settings.CONTENT_SECURITY_POLICY)
        return response


class AccessMiddleware:
    """Default deny for every non-API view, and the TOTP gate for privileged roles.

    DRF views authenticate inside the view (tokens), so their check is
    ``DeclaredRolesPermission``; this middleware only insists that they declare roles.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_view(
        self, request: HttpRequest, view_func: Callable[..., Any], args: Any, kwargs: Any
    ) -> HttpResponse | None:
        declared = access.declared_roles(view_func)
        if declared is None:
            return HttpResponseForbidden(_("This page declares no roles and is closed."))
        if declared == access.PUBLIC or access.is_drf_view(view_func):
            return None
        user = request.user
        if not user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not access.mfa_satisfied(user) and not access.is_mfa_exempt(view_func):
            return redirect(f"{settings.MFA_VERIFY_URL}?next={request.path}")
        if not access.allowed(declared, access.roles_of(user)):
            return HttpResponseForbidden(_("Your roles do not allow this page."))
        return None
