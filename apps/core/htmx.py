"""The one htmx helper (NetBox ``utilities/htmx.py``): full page or partial, by request."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def is_htmx(request: HttpRequest) -> bool:
    # A history restore wants the whole page, not the fragment.
    return (
        request.headers.get("HX-Request") == "true"
        and request.headers.get("HX-History-Restore-Request") != "true"
    )


def render_page(
    request: HttpRequest, template: str, partial: str, context: dict[str, Any]
) -> HttpResponse:
    """Render ``partial`` for htmx swaps and ``template`` (which includes it) otherwise."""
    return render(request, partial if is_htmx(request) else template, context)
