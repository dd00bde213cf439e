"""The data map's pages: sources, CSV import/export, scans with live progress, data QA, and the
volume dashboard. Every view declares its roles; saving goes through services."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db.models import Count, Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from apps.core.access import roles, roles_of
from apps.core.htmx import render_page
from apps.core.roles import AUDITOR, PM, PRIVACY, STEWARD
from apps.inventory import csvfile, services
from apps.inventory.filtersets import QAResultFilterForm, RawFileFilterForm, SourceFilterForm
from apps.inventory.forms import CSVImportForm, DataSourceForm, ExcludeForm
from apps.inventory.models import (
    DataSource,
    IngestBatch,
    QACheck,
    QACheckResult,
    RawFile,
)

# Who may do what (docs/inventory.md). The data map itself is metadata that project managers
# and auditors read; file-level pages show paths, which can carry names, so only the data
# stewards and privacy officers see them.
READ = (STEWARD, PRIVACY, PM, AUDITOR)
WRITE = (STEWARD, PRIVACY)
FILES = (STEWARD, PRIVACY)
PAGE_SIZE = 50


def visible_source_ids(request: HttpRequest) -> list[int]:
    """Sources whose files the user may see: ``allowed_roles`` empty, or sharing a role."""
    # API callers pass a DRF request: a token's scopes narrow the roles.
    user_roles = roles_of(request.user, getattr(request, "auth", None))
    return [
        pk
        for pk, allowed in DataSource.objects.values_list("pk", "allowed_roles")
        if not allowed or set(allowed) & user_roles
    ]


def files_for(request: HttpRequest) -> QuerySet[RawFile]:
    """The one choke point for raw files on pages (the API uses the same rule)."""
    return RawFile.objects.filter(source_id__in=visible_source_ids(request))


def _page(request: HttpRequest, qs: Any) -> Any:
    return Paginator(qs, PAGE_SIZE).get_page(request.GET.get("page"))


def _query(request: HttpRequest) -> str:
    query = request.GET.copy()
    query.pop("page", None)
    return query.urlencode()


# --- data sources ----------------------------------------------------------------------------


@roles(*READ)
@require_GET
def source_list(request: HttpRequest) -> HttpResponse:
    """The data map: one row per source, filterable, with its estimate and what was scanned."""
    form = SourceFilterForm(request.GET or None)
    qs = DataSource.objects.order_by("source")
    if form.is_bound:
        qs = form.filter(qs) if form.is_valid() else qs.none()
    page = _page(request, qs)
    context = {
        "form": form,
        "page": page,
        "sources": page.object_list,
        "query": _query(request),
        "can_write": bool(roles_of(request.user) & set(WRITE)),
    }
    response = render_page(
        request, "inventory/source_list.html", "inventory/partials/source_table.html", context
    )
    if form.errors:
        response.status_code = 400
    return response


@roles(*READ)
@require_GET
def source_detail(request: HttpRequest, pk: int) -> HttpResponse:
    source = get_object_or_404(DataSource, pk=pk)
    user_roles = roles_of(request.user)
    sees_files = bool(user_roles & set(FILES)) and pk in visible_source_ids(request)
    files = RawFile.objects.filter(source=source)
    context = {
        "source": source,
        "batches": source.batches.order_by("-created")[:20],
        "can_write": bool(user_roles & set(WRITE)),
        "sees_files": sees_files,
        "kinds": files.values("kind").annotate(n=Count("id")).order_by("kind"),
        "qa": services.qa_summary(files) if sees_files else {},
        "excluded": files.filter(excluded=True).count(),
    }
    return render(request, "inventory/source_detail.html", context)


@roles(*WRITE)
@require_http_methods(["GET", "POST"])
def source_create(request: HttpRequest) -> HttpResponse:
    return _source_form(request, None)


@roles(*WRITE)
@require_http_methods(["GET", "POST"])
def source_edit(request: HttpRequest, pk: int) -> HttpResponse:
    return _source_form(request, get_object_or_404(DataSource, pk=pk))


def _source_form(request: HttpRequest, source: DataSource | None) -> HttpResponse:
    form = DataSourceForm(request.POST or None, instance=source)
    if request.method == "POST" and form.is_valid():
        data = {name: form.cleaned_data[name] for name in form.Meta.fields}
        try:
            if source is None:
                source = services.create_source(data, acting_user=request.user)
                messages.success(request, _("Source added to the data map."))
            else:
                source = services.update_source(source, data, acting_user=request.user)
                messages.success(request, _("Source saved."))
        except ValidationError as exc:
            for field, errors in getattr(exc, "message_dict", {"__all__": exc.messages}).items():
                form.add_error(field if field in form.fields else None, errors)
        else:
            return redirect("inventory:source_detail", pk=source.pk)
    status = 400 if form.errors else 200
    return render(
        request, "inventory/source_form.html", {"form": form, "source": source}, status=status
    )


@roles(*WRITE)
@require_POST
def source_scan(request: HttpRequest, pk: int) -> HttpResponse:
    """Start a scan of the source's raw root (runs on the worker; the batch page shows it)."""
    source = get_object_or_404(DataSource, pk=pk)
    try:
        batch = services.start_scan(source, acting_user=request.user)
    except services.ScanError as exc:
        messages.error(request, str(exc))
        return redirect("inventory:source_detail", pk=pk)
    return redirect("inventory:batch_detail", pk=batch.pk)


# --- CSV -------------------------------------------------------------------------------------


@roles(*WRITE)
@require_http_methods(["GET", "POST"])
def csv_import(request: HttpRequest) -> HttpResponse:
    form = CSVImportForm(request.POST or None, request.FILES or None)
    errors: list[csvfile.RowError] = []
    total = 0
    if request.method == "POST" and form.is_valid():
        try:
            result = services.import_inventory_csv(
                form.cleaned_data["file"],
                acting_user=request.user,
                encoding=form.cleaned_data["encoding"],
            )
        except csvfile.InventoryCSVError as exc:
            errors, total = exc.errors, exc.total
        else:
            messages.success(
                request,
                _("Imported: %(created)d added, %(updated)d updated, %(unchanged)d unchanged.")
                % {
                    "created": len(result.created),
                    "updated": len(result.updated),
                    "unchanged": result.unchanged,
                },
            )
            return redirect("inventory:sources")
    status = 400 if (errors or form.errors) else 200
    context = {"form": form, "errors": errors, "total": total, "columns": csvfile.COLUMNS}
    return render(request, "inventory/import.html", context, status=status)


@roles(*READ)
@require_GET
def csv_export(request: HttpRequest) -> HttpResponse:
    response = HttpResponse(services.export_inventory_csv(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = 'attachment; filename="data_inventory.csv"'
    return response


# --- batches ---------------------------------------------------------------------------------


@roles(*READ)
@require_GET
def batch_detail(request: HttpRequest, pk: int) -> HttpResponse:
    batch = get_object_or_404(IngestBatch.objects.select_related("source"), pk=pk)
    user_roles = roles_of(request.user)
    sees_files = bool(user_roles & set(FILES)) and batch.source_id in visible_source_ids(request)
    files = RawFile.objects.filter(batch=batch)
    context = {
        "batch": batch,
        "can_write": bool(user_roles & set(WRITE)),
        "sees_files": sees_files,
        "kinds": files.values("kind").annotate(n=Count("id")).order_by("kind"),
        "qa": services.qa_summary(files) if sees_files else {},
    }
    return render_page(
        request, "inventory/batch_detail.html", "inventory/partials/batch_progress.html", context
    )


@roles(*READ)
@require_GET
def batch_progress(request: HttpRequest, pk: int) -> HttpResponse:
    """The progress fragment htmx polls; it stops polling once the batch is finished."""
    batch = get_object_or_404(IngestBatch.objects.select_related("source"), pk=pk)
    return render(
        request,
        "inventory/partials/batch_progress.html",
        {"batch": batch, "can_write": bool(roles_of(request.user) & set(WRITE))},
    )


@roles(*WRITE)
@require_POST
def batch_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    batch = get_object_or_404(IngestBatch, pk=pk)
    if services.cancel_scan(batch, acting_user=request.user):
        messages.success(request, _("Cancel requested; the scan stops before its next file."))
    else:
        messages.error(request, _("This scan has already finished."))
    return redirect("inventory:batch_detail", pk=pk)


@roles(*WRITE)
@require_POST
def batch_rerun_qa(request: HttpRequest, pk: int) -> HttpResponse:
    batch = get_object_or_404(IngestBatch, pk=pk)
    if batch.status in services.ACTIVE:
        messages.error(request, _("The scan is still running; QA runs when it finishes."))
    else:
        services.request_qa(batch, acting_user=request.user)
        messages.success(request, _("Data QA queued for this batch."))
    return redirect("inventory:batch_qa", pk=pk)


# --- QA and files ----------------------------------------------------------------------------


def _qa_page(request: HttpRequest, scope: dict[str, Any], base: Q, template_title: str) -> Any:
    form = QAResultFilterForm(request.GET or None)
    qs = (
        QACheckResult.objects.filter(raw_file__in=files_for(request))
        .filter(base)
        .select_related("raw_file")
        .order_by("result", "-severity", "raw_file__relpath", "check_type")
    )
    if form.is_bound:
        qs = form.filter(qs) if form.is_valid() else qs.none()
    page = _page(request, qs)
    context = {
        **scope,
        "title": template_title,
        "form": form,
        "page": page,
        "results": page.object_list,
        "query": _query(request),
        "exclude_form": ExcludeForm(),
        "summary": [
            {**row, "label": QACheck(row["check_type"]).label}
            for row in qs.values("check_type", "result")
            .annotate(n=Count("id"))
            .order_by("check_type", "result")
        ],
    }
    response = render_page(
        request, "inventory/qa_list.html", "inventory/partials/qa_table.html", context
    )
    if form.errors:
        response.status_code = 400
    return response


@roles(*FILES)
@require_GET
def source_qa(request: HttpRequest, pk: int) -> HttpResponse:
    source = get_object_or_404(DataSource, pk=pk)
    if pk not in visible_source_ids(request):
        raise Http404
    return _qa_page(
        request, {"source": source}, Q(raw_file__source=source), _("Data QA of the source")
    )


@roles(*FILES)
@require_GET
def batch_qa(request: HttpRequest, pk: int) -> HttpResponse:
    batch = get_object_or_404(IngestBatch.objects.select_related("source"), pk=pk)
    if batch.source_id not in visible_source_ids(request):
        raise Http404
    return _qa_page(
        request,
        {"batch": batch, "source": batch.source},
        Q(raw_file__batch=batch),
        _("Data QA of the batch"),
    )


@roles(*FILES)
@require_GET
def file_list(request: HttpRequest) -> HttpResponse:
    form = RawFileFilterForm(request.GET or None)
    qs = files_for(request).order_by("source_id", "relpath", "-id")
    if form.is_bound:
        qs = form.filter(qs) if form.is_valid() else qs.none()
    page = _page(request, qs)
    context = {
        "form": form,
        "page": page,
        "files": page.object_list,
        "query": _query(request),
        "exclude_form": ExcludeForm(),
    }
    response = render_page(
        request, "inventory/file_list.html", "inventory/partials/file_table.html", context
    )
    if form.errors:
        response.status_code = 400
    return response


def _back(request: HttpRequest, raw: RawFile) -> HttpResponse:
    target = request.POST.get("next", "")
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return redirect(target)
    return redirect(reverse("inventory:batch_qa", kwargs={"pk": raw.batch_id}))


@roles(*WRITE)
@require_POST
def file_exclude(request: HttpRequest, pk: int) -> HttpResponse:
    """Keep a file out of every release, with a reason (audited)."""
    raw = get_object_or_404(files_for(request), pk=pk)
    form = ExcludeForm(request.POST)
    if not form.is_valid():
        messages.error(request, _("A reason (up to 200 characters) is required."))
        return _back(request, raw)
    try:
        services.exclude_file(raw, reason=form.cleaned_data["reason"], acting_user=request.user)
    except ValidationError:
        messages.error(request, _("A reason on one line, up to 200 characters, is required."))
    else:
        messages.success(request, _("File %(id)d excluded from release.") % {"id": raw.pk})
    return _back(request, raw)


@roles(*WRITE)
@require_POST
def file_include(request: HttpRequest, pk: int) -> HttpResponse:
    raw = get_object_or_404(files_for(request), pk=pk)
    services.include_file(raw, acting_user=request.user)
    messages.success(request, _("File %(id)d may be released again.") % {"id": raw.pk})
    return _back(request, raw)


# --- dashboard -------------------------------------------------------------------------------


@roles(*READ)
@require_GET
def dashboard(request: HttpRequest) -> HttpResponse:
    """Charts of volume by type, source and consent status (rendered by a static script)."""
    return render(
        request,
        "inventory/dashboard.html",
        {
            "data": services.dashboard_data(),
            "sources": DataSource.objects.count(),
            "generated": timezone.now(),
        },
    )


@roles(*READ)
@require_GET
def dashboard_json(request: HttpRequest) -> JsonResponse:
    return JsonResponse(services.dashboard_data())
