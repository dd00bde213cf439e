from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from django.views.i18n import set_language

from apps.core import access, health, navigation


@access.roles(*access.ANY_ROLE)
def home(request: HttpRequest) -> HttpResponse:
    """Where things stand: a card per area the user's roles reach, with its figures."""
    items = navigation.items_for(access.roles_of(request.user))
    cards = [(item, item.summary() if item.summary else []) for item in items if item.key != "home"]
    return render(request, "core/home.html", {"cards": cards})


@access.public
@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """Database, broker and channel layer reachability; 503 when any is down."""
    checks = health.run_checks()
    ok = all(c["ok"] for c in checks.values())
    return JsonResponse({"ok": ok, "checks": checks}, status=200 if ok else 503)


language = access.public(set_language)
