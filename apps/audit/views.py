"""The auditor's pages: the filtered event list, its CSV export, the chain status panel."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from typing import Any

from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.utils import timezone
from django.views.decorators.http import require_GET

from apps.audit.filtersets import AuditEventFilterForm
from apps.audit.models import EVENT_COLUMNS, EVENT_FIELDS, AuditEvent
from apps.audit.services import last_check
from apps.core.access import roles
from apps.core.htmx import render_page
from apps.core.roles import AUDITOR, PRIVACY

PAGE_SIZE = 50
CSV_COLUMNS = EVENT_COLUMNS
CSV_HEADER = EVENT_FIELDS


def _filtered(request: HttpRequest) -> tuple[AuditEventFilterForm, Any]:
    form = AuditEventFilterForm(request.GET or None)
    qs = AuditEvent.objects.order_by("-seq")
    if form.is_bound and not form.is_valid():
        return form, qs.none()
    return form, (form.filter(qs) if form.is_bound else qs)


@roles(AUDITOR, PRIVACY)
@require_GET
def event_list(request: HttpRequest) -> HttpResponse:
    """Filter by user, action, resource, request and time; newest first."""
    form, qs = _filtered(request)
    page = Paginator(qs, PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    context = {
        "form": form,
        "page": page,
        "events": page.object_list,
        "query": query.urlencode(),
        "check": last_check(),
        "head": AuditEvent.objects.order_by("-seq").values_list("seq", "timestamp").first(),
    }
    response = render_page(
        request, "audit/event_list.html", "audit/partials/event_table.html", context
    )
    if form.errors:
        response.status_code = 400
    return response


class _Echo:
    """A file-like object whose write returns the line, for csv.writer → streaming."""

    def write(self, value: str) -> str:
        return value


def _csv_safe(value: Any) -> Any:
    # Spreadsheets run cells that start with these as formulas (CSV injection).
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return f"'{value}"
    return value


def _csv_rows(qs: Any) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(CSV_HEADER)
    for row in qs.values_list(*CSV_COLUMNS).iterator(chunk_size=2000):
        seq, ts, *rest = row
        yield writer.writerow([seq, ts.isoformat(), *(_csv_safe(v) for v in rest)])


@roles(AUDITOR, PRIVACY)
@require_GET
def event_csv(request: HttpRequest) -> HttpResponse:
    """The filtered set as CSV, oldest first, streamed (it may be millions of rows)."""
    form, qs = _filtered(request)
    if form.is_bound and not form.is_valid():
        errors = "; ".join(f"{k}: {' '.join(v)}" for k, v in form.errors.items())
        return HttpResponse(errors, status=400, content_type="text/plain; charset=utf-8")
    stamp = timezone.localtime().strftime("%Y%m%d-%H%M%S")
    response = StreamingHttpResponse(
        _csv_rows(qs.order_by("seq")), content_type="text/csv; charset=utf-8"
    )
    response["Content-Disposition"] = f'attachment; filename="audit-events-{stamp}.csv"'
    return response
