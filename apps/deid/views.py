"""De-identification pages: runs, live progress, results and quarantine, re-identification.

Views are thin: they read rows and call :mod:`apps.deid.services` for every change. Nothing
shown here comes from raw data: raw files appear by id, outputs by their pseudonymized path,
quarantine by the engine's reason code.
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib import messages
from django.contrib.staticfiles import finders
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from apps.core.access import roles, roles_of
from apps.core.htmx import render_page
from apps.core.roles import AUDITOR, PRIVACY, STEWARD
from apps.deid import services
from apps.deid.engine import DeidProfile
from apps.deid.filtersets import ResultFilterForm
from apps.deid.forms import LookupForm, ProfileForm, RevealForm, StartRunForm
from apps.deid.models import DeidFileResult, DeidRun, ProfileVersion

# Who may look at runs, and who may change them (start, cancel, resume, retry).
VIEW_ROLES = (STEWARD, PRIVACY, AUDITOR)
RUN_ROLES = (STEWARD, PRIVACY)
PAGE_SIZE = 50
PLOTLY = "vendor/plotly/plotly.min.js"


def get_run(pk: int) -> DeidRun:
    """The one way pages load a run (404 when it does not exist)."""
    return get_object_or_404(DeidRun.objects.select_related("batch__source"), pk=pk)


def _can_run(request: HttpRequest) -> bool:
    return bool(roles_of(request.user) & set(RUN_ROLES))


@roles(*VIEW_ROLES)
@require_GET
def run_list(request: HttpRequest) -> HttpResponse:
    """All runs, newest first."""
    qs = DeidRun.objects.select_related("batch__source").order_by("-created", "-pk")
    page = Paginator(qs, PAGE_SIZE).get_page(request.GET.get("page"))
    return render(
        request,
        "deid/run_list.html",
        {"page": page, "runs": page.object_list, "can_run": _can_run(request)},
    )


@roles(*RUN_ROLES)
@require_http_methods(["GET", "POST"])
def run_start(request: HttpRequest) -> HttpResponse:
    """Start a run over an ingest batch; the worker picks it up after commit."""
    form = StartRunForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            run = services.start_run(
                form.cleaned_data["batch"],
                profile=form.chosen_profile,
                acting_user=request.user,
            )
        except services.DeidServiceError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, _("Run %(id)s started.") % {"id": run.pk})
            return redirect("deid:run", pk=run.pk)
    status = 400 if request.method == "POST" else 200
    return render(request, "deid/run_start.html", {"form": form}, status=status)


def _chart(summary: dict[str, Any]) -> dict[str, Any]:
    return {
        "findings": {"x": list(summary["findings"]), "y": list(summary["findings"].values())},
        "kinds": {"x": list(summary["by_kind"]), "y": list(summary["by_kind"].values())},
        "title_findings": _("Findings by type"),
        "title_kinds": _("Files by kind"),
    }


@roles(*VIEW_ROLES)
@require_GET
def run_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """Progress, counts by status and kind, findings by type, the quarantine list."""
    run = get_run(pk)
    summary = services.run_summary(run)
    quarantined = run.results.filter(status=DeidFileResult.Status.QUARANTINED).order_by(
        "raw_file_id"
    )
    context = {
        "run": run,
        "summary": summary,
        "quarantined": quarantined[:PAGE_SIZE],
        "quarantined_count": summary["by_status"]["quarantined"],
        "errors": run.results.filter(status=DeidFileResult.Status.ERROR).order_by("raw_file_id")[
            :PAGE_SIZE
        ],
        "can_run": _can_run(request),
        "plotly": bool(finders.find(PLOTLY)) and bool(summary["findings"] or summary["by_kind"]),
        "chart": _chart(summary),
    }
    return render(request, "deid/run_detail.html", context)


@roles(*VIEW_ROLES)
@require_GET
@never_cache
def run_progress(request: HttpRequest, pk: int) -> HttpResponse:
    """The progress fragment the detail page polls while the run is active."""
    run = get_run(pk)
    return render_page(
        request,
        "deid/run_progress_page.html",
        "deid/partials/run_progress.html",
        {"run": run},
    )


@roles(*VIEW_ROLES)
@require_GET
def run_results(request: HttpRequest, pk: int) -> HttpResponse:
    """Per-file results of one run, filtered (status, kind, flagged); the quarantine list."""
    run = get_run(pk)
    form = ResultFilterForm(request.GET or None)
    qs = run.results.order_by("raw_file_id")
    if form.is_bound and not form.is_valid():
        qs = qs.none()
    elif form.is_bound:
        qs = form.filter(qs)
    page = Paginator(qs, PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    response = render_page(
        request,
        "deid/run_results.html",
        "deid/partials/result_table.html",
        {
            "run": run,
            "form": form,
            "page": page,
            "results": page.object_list,
            "query": query.urlencode(),
        },
    )
    if form.errors:
        response.status_code = 400
    return response


def _change(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    run = get_run(pk)
    try:
        if action == "cancel":
            services.cancel_run(run, acting_user=request.user)
            messages.success(request, _("Cancel requested for run %(id)s.") % {"id": run.pk})
        elif action == "resume":
            services.resume_run(run, acting_user=request.user)
            messages.success(request, _("Run %(id)s resumed.") % {"id": run.pk})
        else:
            n = services.retry_errors(run, acting_user=request.user)
            messages.success(request, _("%(n)s files in error will be processed again.") % {"n": n})
    except services.DeidServiceError as exc:
        messages.error(request, str(exc))
    return redirect("deid:run", pk=run.pk)


@roles(*RUN_ROLES)
@require_POST
def run_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    return _change(request, pk, "cancel")


@roles(*RUN_ROLES)
@require_POST
def run_resume(request: HttpRequest, pk: int) -> HttpResponse:
    return _change(request, pk, "resume")


@roles(*RUN_ROLES)
@require_POST
def run_retry(request: HttpRequest, pk: int) -> HttpResponse:
    return _change(request, pk, "retry")


@roles(*VIEW_ROLES)
@require_GET
def profile_list(request: HttpRequest) -> HttpResponse:
    """Saved profiles, every version."""
    versions = ProfileVersion.objects.order_by("name", "-version")
    return render(
        request,
        "deid/profile_list.html",
        {"versions": versions, "can_run": _can_run(request)},
    )


@roles(*VIEW_ROLES)
@require_GET
def profile_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """One version: its settings, what changed from the version before, the runs using it."""
    version = get_object_or_404(ProfileVersion, pk=pk)
    return render(
        request,
        "deid/profile_detail.html",
        {
            "version": version,
            "pretty": json.dumps(version.data, indent=2, ensure_ascii=False),
            "changes": services.profile_changes(version),
            "runs": version.runs.order_by("-created")[:PAGE_SIZE],
            "can_run": _can_run(request),
        },
    )


@roles(*RUN_ROLES)
@require_http_methods(["GET", "POST"])
def profile_new(request: HttpRequest) -> HttpResponse:
    """Save a profile as the next version of its name (start from an existing one)."""
    base = None
    if request.method == "GET" and request.GET.get("from", "").isdigit():
        base = ProfileVersion.objects.filter(pk=int(request.GET["from"])).first()
    initial = {
        "name": base.name if base else "",
        "profile": json.dumps(
            base.data if base else DeidProfile().to_dict(), indent=2, ensure_ascii=False
        ),
    }
    form = ProfileForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            version = services.save_profile(
                form.cleaned_data["profile"],
                name=form.cleaned_data["name"],
                note=form.cleaned_data["note"],
                acting_user=request.user,
            )
        except services.DeidServiceError as exc:
            form.add_error("name", str(exc))
        else:
            messages.success(request, _("Saved %(name)s.") % {"name": str(version)})
            return redirect("deid:profile", pk=version.pk)
    status = 400 if request.method == "POST" else 200
    return render(request, "deid/profile_new.html", {"form": form}, status=status)


@roles(PRIVACY)
@require_http_methods(["GET", "POST"])
@never_cache
def reveal(request: HttpRequest) -> HttpResponse:
    """Re-identify one pseudonym: privacy officers, with a reason; shown once, audited."""
    form = RevealForm(request.POST or None)
    original = None
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                original = services.reveal_pseudonym(
                    form.cleaned_data["pseudonym"],
                    reason=form.cleaned_data["reason"],
                    acting_user=request.user,
                )
            except PermissionDenied:
                raise
            except ValidationError as exc:
                form.add_error(None, exc)
            except services.DeidServiceError as exc:
                form.add_error("pseudonym", str(exc))
        if original is None:
            status = 400
    response = render(
        request,
        "deid/reveal.html",
        {
            "form": RevealForm() if original is not None else form,
            "lookup_form": LookupForm(prefix="lookup"),
            "original": original,
            "pseudonym": form.cleaned_data.get("pseudonym", "").upper()
            if original is not None
            else "",
        },
        status=status,
    )
    response["Cache-Control"] = "no-store"
    return response


@roles(PRIVACY)
@require_POST
@never_cache
def lookup(request: HttpRequest) -> HttpResponse:
    """The pseudonym of a hospital patient ID (for a consent withdrawal): privacy officers,
    with a reason; audited like a re-identification. The ID is posted, never in a URL."""
    form = LookupForm(request.POST, prefix="lookup")
    result = None
    if form.is_valid():
        try:
            pseudonym, found = services.pseudonym_of_patient_id(
                form.cleaned_data["patient_id"],
                reason=form.cleaned_data["reason"],
                acting_user=request.user,
            )
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            result = {"pseudonym": pseudonym, "found": found}
    response = render(
        request,
        "deid/reveal.html",
        {
            "form": RevealForm(),
            "lookup_form": LookupForm(prefix="lookup") if result else form,
            "lookup": result,
        },
        status=200 if result else 400,
    )
    response["Cache-Control"] = "no-store"
    return response
