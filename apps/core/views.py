from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from django.views.i18n import set_language

from apps.core import access, health


@access.roles(*access.ANY_ROLE)
def home(request: HttpRequest) -> HttpResponse:
    return render(request, "core/home.html", {})


@access.public
@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """Database, broker and channel layer reachability; 503 when any is down."""
    checks = health.run_checks()
    ok = all(c["ok"] for c in checks.values())
    return JsonResponse({"ok": ok, "checks": checks}, status=200 if ok else 503)


language = access.public(set_language)
