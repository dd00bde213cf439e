"""The datasets pages: versions, build, verify, lineage, label sets. Views stay thin."""

from __future__ import annotations

import csv
from collections.abc import Callable
from itertools import chain
from typing import Any
from urllib.parse import urlencode

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from apps.core.access import roles
from apps.core.htmx import is_htmx, render_page
from apps.datasets import registry, reports, services, tokenizers
from apps.datasets.access import (
    BUILD,
    LABELS_READ,
    LABELS_WRITE,
    LINEAGE,
    READ,
    TOKENIZE,
    VERIFY,
    WITHDRAW,
)
from apps.datasets.filtersets import VersionFilterForm
from apps.datasets.forms import (
    AnnotationForm,
    BuildForm,
    ConsentForm,
    LineageSearchForm,
    ReinstatementForm,
    TokenizerForm,
    WithdrawalForm,
)
from apps.datasets.models import AnnotationSet, DatasetVersion

PAGE_SIZE = 50


def get_version(pk: int) -> DatasetVersion:
    """The one lookup of a version for the pages (404 when it does not exist)."""
    return get_object_or_404(DatasetVersion, pk=pk)


@roles(*READ)
@require_GET
def version_list(request: HttpRequest) -> HttpResponse:
    form = VersionFilterForm(request.GET or None)
    qs = DatasetVersion.objects.select_related("created_by").order_by("name", "-number")
    if form.is_bound:
        qs = form.filter(qs) if form.is_valid() else qs.none()
    page = Paginator(qs, PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    return render_page(
        request,
        "datasets/version_list.html",
        "datasets/partials/version_table.html",
        {
            "form": form,
            "page": page,
            "query": query.urlencode(),
            "can_build": _can(request, BUILD),
            "withdrawn_ids": services.versions_holding_withdrawn([v.pk for v in page]),
        },
    )


def _can(request: HttpRequest, names: tuple[str, ...]) -> bool:
    from apps.core.access import roles_of

    return bool(roles_of(request.user) & set(names))


@roles(*READ)
@require_GET
def version_detail(request: HttpRequest, pk: int) -> HttpResponse:
    version = get_version(pk)
    lineage = Paginator(services.lineage_of_version(version), PAGE_SIZE).get_page(1)
    uses = [
        (
            use,
            registry.consumer_kind(use.consumer_kind).label,
            registry.consumer_url(use.consumer_kind, use.consumer_id),
        )
        for use in services.uses_of({version.pk: version})
    ]
    return render(
        request,
        "datasets/version_detail.html",
        {
            "version": version,
            "runs": version.runs.order_by("pk"),
            "lineage": lineage,
            "page_url": reverse("datasets:version_lineage", args=[version.pk]),
            "check": version.checks.first(),
            "uses": uses,
            "label_sets": version.annotation_sets.select_related("author")[:10],
            "withdrawn": services.withdrawn_samples(version) if version.is_ready else 0,
            "can_verify": _can(request, VERIFY),
            "can_cancel": _can(request, BUILD),
            **_tokenizers(request, version),
            "tokenizer_form": TokenizerForm(),
        },
    )


@roles(*TOKENIZE)
@require_POST
def tokenizer_new(request: HttpRequest, pk: int) -> HttpResponse:
    """Queue a tokenizer build on the version's text; the panel then follows it."""
    version = get_version(pk)
    form = TokenizerForm(request.POST)
    if not form.is_valid():
        for errors in form.errors.values():
            for e in errors:
                messages.error(request, e)
        return redirect(f"{reverse('datasets:detail', args=[pk])}#tokenizers")
    try:
        _row, created = tokenizers.request_tokenizer(
            version,
            vocab_size=form.cleaned_data["vocab_size"],
            max_mb=form.cleaned_data["max_mb"],
            acting_user=request.user,
        )
    except services.DatasetError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(
            request,
            _("Tokenizer queued; this page shows its progress.")
            if created
            else _("This tokenizer was already asked for; here it is."),
        )
    return redirect(f"{reverse('datasets:detail', args=[pk])}#tokenizers")


@roles(*READ)
@require_GET
def tokenizer_status(request: HttpRequest, pk: int) -> HttpResponse:
    """The tokenizers table; htmx polls it while one is queued or training."""
    version = get_version(pk)
    return render(request, "datasets/partials/tokenizers.html", _tokenizers(request, version))


@roles(*TOKENIZE)
@require_POST
def tokenizer_cancel(request: HttpRequest, pk: int, tokenizer_id: int) -> HttpResponse:
    """Stop a queued or training tokenizer of the version."""
    version = get_version(pk)
    row = get_object_or_404(version.tokenizers, pk=tokenizer_id)
    try:
        tokenizers.cancel_tokenizer(row, acting_user=request.user)
    except services.DatasetError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, _("Cancellation requested."))
    return redirect(f"{reverse('datasets:detail', args=[pk])}#tokenizers")


def _tokenizers(request: HttpRequest, version: DatasetVersion) -> dict[str, Any]:
    rows = list(version.tokenizers.all()[:20])
    return {
        "version": version,
        "tokenizers": rows,
        "polling": any(t.unfinished for t in rows),
        "can_tokenize": _can(request, TOKENIZE) and version.is_ready,
    }


@roles(*READ)
@require_GET
def version_status(request: HttpRequest, pk: int) -> HttpResponse:
    """The status panel; htmx polls it while the version is building."""
    return render(request, "datasets/partials/status.html", {"version": get_version(pk)})


@roles(*READ)
@require_GET
def version_lineage(request: HttpRequest, pk: int) -> HttpResponse:
    version = get_version(pk)
    page = Paginator(services.lineage_of_version(version), PAGE_SIZE).get_page(
        request.GET.get("page")
    )
    return render_page(
        request,
        "datasets/lineage_page.html",
        "datasets/partials/lineage_table.html",
        {
            "version": version,
            "lineage": page,
            "page_url": reverse("datasets:version_lineage", args=[version.pk]),
        },
    )


def _consumer_versions(kind: str, consumer_id: str) -> list[DatasetVersion]:
    """The versions a training run (or another consumer) read; 404 when it read none."""
    if not registry.KIND_PATTERN.match(kind) or not registry.ID_PATTERN.match(consumer_id):
        raise Http404("no such consumer")
    versions = services.consumer_versions(kind, consumer_id)
    if not versions:
        raise Http404("no dataset version was read by this consumer")
    return versions


@roles(*READ)
@require_GET
def consumer_lineage(request: HttpRequest, kind: str, consumer_id: str) -> HttpResponse:
    """Every raw file behind a training run: the versions it read, then each packed file
    with its source, ingest batch and de-id run (paginated; CSV for all of them)."""
    versions = _consumer_versions(kind, consumer_id)
    page = Paginator(services.lineage_of_consumer(kind, consumer_id), PAGE_SIZE).get_page(
        request.GET.get("page")
    )
    return render_page(
        request,
        "datasets/consumer_lineage.html",
        "datasets/partials/lineage_table.html",
        {
            "kind_label": registry.consumer_kind(kind).label,
            "consumer_id": consumer_id,
            "consumer_url": registry.consumer_url(kind, consumer_id),
            "versions": versions,
            "lineage": page,
            "page_url": request.path,
            "show_version": len(versions) > 1,
            "csv_url": reverse("datasets:consumer_lineage_csv", args=[kind, consumer_id]),
        },
    )


class _Echo:
    """csv.writer's file: hands each row back instead of buffering it (streamed CSV)."""

    def write(self, value: str) -> str:
        return value


@roles(*READ)
@require_GET
def consumer_lineage_csv(request: HttpRequest, kind: str, consumer_id: str) -> HttpResponse:
    """The same, every row, as CSV (ids and hashes only), streamed: a 70B run's versions
    hold millions of files."""
    _consumer_versions(kind, consumer_id)
    writer = csv.writer(_Echo())
    rows = (writer.writerow(row) for row in reports.consumer_rows(kind, consumer_id))
    header = writer.writerow(reports.CONSUMER_HEADER)
    response = StreamingHttpResponse(chain([header], rows), content_type="text/csv; charset=utf-8")
    name = f"{kind}-{consumer_id}".replace(".", "-")
    response["Content-Disposition"] = f'attachment; filename="files-behind-{name}.csv"'
    return response


@roles(*VERIFY)
@require_POST
def version_verify(request: HttpRequest, pk: int) -> HttpResponse:
    """Queue a re-hash on a worker; the panel then polls ``verify_status``."""
    version = get_version(pk)
    try:
        check = services.request_verify(version, acting_user=request.user)
    except services.DatasetError as exc:
        if is_htmx(request):
            return render(
                request, "datasets/partials/verify_result.html", {"error": str(exc)}, status=409
            )
        messages.error(request, str(exc))
        return redirect("datasets:detail", pk=pk)
    if is_htmx(request):
        return render(
            request, "datasets/partials/verify_result.html", {"version": version, "check": check}
        )
    messages.info(request, _("Verification queued; this page shows its progress."))
    return redirect("datasets:detail", pk=pk)


@roles(*READ)
@require_GET
def verify_status(request: HttpRequest, pk: int) -> HttpResponse:
    """The verification panel; htmx polls it while a check is queued or running."""
    version = get_version(pk)
    return render(
        request,
        "datasets/partials/verify_result.html",
        {"version": version, "check": version.checks.first()},
    )


@roles(*BUILD)
@require_POST
def version_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    version = get_version(pk)
    try:
        services.cancel_build(version, acting_user=request.user)
    except services.DatasetError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, _("Cancellation requested."))
    return redirect("datasets:detail", pk=pk)


@roles(*BUILD)
@require_http_methods(["GET", "POST"])
def build(request: HttpRequest) -> HttpResponse:
    """The data steward's build form: only released runs can be chosen."""
    form = BuildForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            version = services.request_build(
                form.cleaned_data["name"],
                form.cleaned_data["runs"],
                target_shard_mb=form.cleaned_data["target_shard_mb"],
                acting_user=request.user,
            )
        except services.DatasetError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, _("%(label)s is being built.") % {"label": version.label})
            return redirect("datasets:detail", pk=version.pk)
    status = 400 if request.method == "POST" else 200
    return render(request, "datasets/build.html", {"form": form}, status=status)


def _reports(form: LineageSearchForm) -> list[services.Reach]:
    return reports.search(form.cleaned_data["q"], form.cleaned_data.get("kind") or "auto")


@roles(*LINEAGE)
@require_GET
def lineage_search(request: HttpRequest) -> HttpResponse:
    """From a raw file (id or SHA-256) or a patient pseudonym to every version and consumer
    it reached: the consent-withdrawal report."""
    form = LineageSearchForm(request.GET or None)
    found = _reports(form) if form.is_bound and form.is_valid() else []
    for report in found:
        report.use_rows = [  # type: ignore[attr-defined]
            (
                use,
                registry.consumer_kind(use.consumer_kind).label,
                registry.consumer_url(use.consumer_kind, use.consumer_id),
            )
            for use in report.uses
        ]
    return render_page(
        request,
        "datasets/lineage_search.html",
        "datasets/partials/reach.html",
        {
            "form": form,
            "reports": found,
            "searched": form.is_bound and form.is_valid(),
            "can_withdraw": _can(request, WITHDRAW),
        },
    )


def _record_consent(
    request: HttpRequest, form: ConsentForm, record: Callable[..., str], invalid: str
) -> HttpResponse:
    """The consent forms' one path: check the form, let ``record(pseudonym, reference=,
    acting_user=)`` call the service and name what it did, then show the report again."""
    if not form.is_valid():
        messages.error(request, invalid)
        pseudonym = str(request.POST.get("pseudonym", ""))[:80]
    else:
        pseudonym = form.cleaned_data["pseudonym"]
        try:
            done = record(
                pseudonym, reference=form.cleaned_data["reference"], acting_user=request.user
            )
        except services.DatasetError as exc:
            messages.error(request, str(exc))
        else:
            messages.success(request, done)
    query = urlencode({"q": pseudonym, "kind": "patient"})
    return redirect(f"{reverse('datasets:lineage')}?{query}")


@roles(*WITHDRAW)
@require_POST
def consent_withdraw(request: HttpRequest) -> HttpResponse:
    """Record a patient's consent withdrawal from their lineage report, then show it again."""

    def record(pseudonym: str, **kwargs: Any) -> str:
        _row, created = services.withdraw_consent(pseudonym, **kwargs)
        return (
            _("Consent withdrawal recorded: no later version packs this patient's data.")
            if created
            else _("This patient's withdrawal was already recorded.")
        )

    return _record_consent(
        request,
        WithdrawalForm(request.POST),
        record,
        _("Tick the confirmation to record a withdrawal."),
    )


@roles(*WITHDRAW)
@require_POST
def consent_reinstate(request: HttpRequest) -> HttpResponse:
    """Record a patient's renewed consent from their lineage report, then show it again."""

    def record(pseudonym: str, **kwargs: Any) -> str:
        services.reinstate_consent(pseudonym, **kwargs)
        return _("Re-consent recorded: versions built from now on may pack this data.")

    return _record_consent(
        request,
        ReinstatementForm(request.POST),
        record,
        _("Give the case number and tick the confirmation to record re-consent."),
    )


@roles(*LINEAGE)
@require_GET
def lineage_csv(request: HttpRequest) -> HttpResponse:
    """The same report as CSV, one row per packed file and per consumer (ids only)."""
    form = LineageSearchForm(request.GET or None)
    if not (form.is_bound and form.is_valid()):
        return HttpResponse("give ?q=", status=400, content_type="text/plain; charset=utf-8")
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = 'attachment; filename="data-reach.csv"'
    writer = csv.writer(response)
    writer.writerow(reports.REACH_HEADER)
    writer.writerows(reports.reach_rows(_reports(form)))
    return response


@roles(*LABELS_READ)
@require_GET
def annotation_list(request: HttpRequest, pk: int) -> HttpResponse:
    version = get_version(pk)
    sets = AnnotationSet.objects.filter(version=version).select_related("author")
    return render(
        request,
        "datasets/annotation_list.html",
        {"version": version, "sets": sets, "can_label": _can(request, LABELS_WRITE)},
    )


@roles(*LABELS_WRITE)
@require_http_methods(["GET", "POST"])
def annotation_new(request: HttpRequest, pk: int) -> HttpResponse:
    """Upload a new version of a label set; earlier versions are never touched."""
    version = get_version(pk)
    form = AnnotationForm(request.POST or None, request.FILES or None)
    errors: list[str] = []
    if request.method == "POST" and form.is_valid():
        upload = form.cleaned_data["file"]
        try:
            created = services.add_annotation_set(
                version,
                name=form.cleaned_data["name"],
                data=upload.read(services.MAX_ANNOTATION_BYTES + 1),
                filename=upload.name,
                quality_score=form.cleaned_data["quality_score"],
                notes=form.cleaned_data["notes"],
                acting_user=request.user,
            )
        except services.AnnotationError as exc:
            errors = exc.errors
        except services.DatasetError as exc:
            errors = [str(exc)]
        else:
            messages.success(
                request,
                _("Label set %(name)s v%(n)s stored.")
                % {"name": created.name, "n": created.number},
            )
            return redirect("datasets:annotations", pk=pk)
    status = 400 if request.method == "POST" else 200
    return render(
        request,
        "datasets/annotation_form.html",
        {"version": version, "form": form, "errors": errors},
        status=status,
    )
