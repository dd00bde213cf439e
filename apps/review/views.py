"""The review pages: batches and their dashboards, the one-item review screen, the gate.

Views only declare roles, read, and call services (STYLE.md 2, 6); every item is fetched
through ``services.visible_items`` so a clinician can open only what is leased to them or
what they judged themselves.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from django.contrib import messages
from django.db.models import Count, Q
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
)
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_GET

from apps.core.access import roles, roles_of
from apps.core.roles import AUDITOR, CLINICIAN, PRIVACY, STEWARD
from apps.review import rendering, services
from apps.review.forms import BatchCreateForm, OriginalForm, ResolveForm, VerdictForm
from apps.review.models import Category, Finding, ReviewBatch, ReviewItem, Verdict

READERS = (CLINICIAN, STEWARD, PRIVACY, AUDITOR)
RELEASERS = {STEWARD, PRIVACY}
GRANTS = "review_original_grants"
# rendering.py stays free of Django; the preset names are translated here.
PRESET_LABELS = {
    "soft": gettext_lazy("Soft tissue"),
    "lung": gettext_lazy("Lung"),
    "bone": gettext_lazy("Bone"),
    "brain": gettext_lazy("Brain"),
    "liver": gettext_lazy("Liver"),
    "suv": gettext_lazy("SUV 0–10"),
    "auto": gettext_lazy("Auto"),
}


def _batch(pk: int) -> ReviewBatch:
    return get_object_or_404(ReviewBatch.objects.select_related("run"), pk=pk)


def _item(request: HttpRequest, pk: int) -> ReviewItem:
    return get_object_or_404(services.visible_items(request.user), pk=pk)


def _post_only(request: HttpRequest) -> HttpResponse | None:
    return None if request.method == "POST" else HttpResponseNotAllowed(["POST"])


# --- batches ---------------------------------------------------------------------------------


@roles(*READERS)
@require_GET
def batch_list(request: HttpRequest) -> HttpResponse:
    """Every batch with its progress bar; clinicians start reviewing from here."""
    batches = ReviewBatch.objects.select_related("run").annotate(
        done=Count("items", filter=Q(items__status=ReviewItem.Status.DONE), distinct=True),
        fails=Count("findings", filter=Q(findings__status=Finding.Status.OPEN), distinct=True),
    )
    rows = [
        {"batch": b, "percent": round(100 * b.done / b.items_total) if b.items_total else 0}
        for b in batches
    ]
    user_roles = roles_of(request.user)
    return render(
        request,
        "review/batch_list.html",
        {
            "rows": rows,
            "can_create": bool(user_roles & RELEASERS),
            "is_clinician": CLINICIAN in user_roles,
        },
    )


@roles(STEWARD, PRIVACY)
def batch_create(request: HttpRequest) -> HttpResponse:
    """Draw a new sample from a finished run."""
    form = BatchCreateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        d = form.cleaned_data
        try:
            batch = services.create_batch(
                d["run"],
                acting_user=request.user,
                fraction=d["fraction"],
                min_per_stratum=d["min_per_stratum"],
                threshold=d["threshold"],
                double_review_fraction=d["double_review_fraction"],
                seed=d["seed"],
            )
        except services.ReviewError as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(
                request, _("Review batch drawn: %(n)d items.") % {"n": batch.items_total}
            )
            return HttpResponseRedirect(reverse("review:batch", args=[batch.pk]))
    return render(
        request, "review/batch_create.html", {"form": form}, status=400 if form.errors else 200
    )


def _gate_context(request: HttpRequest, batch: ReviewBatch) -> dict[str, Any]:
    user_roles = roles_of(request.user)
    g = services.gate(batch)
    return {
        "batch": batch,
        "gate": g,
        "progress": services.progress(batch),
        "can_release": bool(user_roles & RELEASERS)
        and batch.status == ReviewBatch.Status.OPEN
        and batch.run.released_at is None,
    }


@roles(*READERS)
@require_GET
def batch_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """The dashboard: progress, gate, strata, reviewers, failures by category, findings."""
    batch = _batch(pk)
    context = _gate_context(request, batch)
    user_roles = roles_of(request.user)
    failures = services.failures_by_category(batch)
    labels = dict(Category.choices)
    context.update(
        {
            "reviewers": services.reviewer_stats(batch),
            "failures": failures,
            "failure_chart": {
                "x": [str(labels[c]) for c in failures],
                "y": list(failures.values()),
                "title": _("Failures by category"),
            },
            "findings": batch.findings.select_related("item", "item__result").all()[:200],
            "can_resolve": bool(user_roles & RELEASERS),
            "resolve_form": ResolveForm(),
            "is_clinician": CLINICIAN in user_roles,
        }
    )
    return render(request, "review/batch_detail.html", context)


@roles(STEWARD, PRIVACY)
def release(request: HttpRequest, pk: int) -> HttpResponse:
    """The release button: the same gate as the API and ``manage.py review_release``."""
    batch = _batch(pk)
    if (refused := _post_only(request)) is not None:
        return refused
    try:
        services.release_run(batch.run, acting_user=request.user)
    except services.GateClosed as exc:
        for reason in exc.reasons:
            messages.error(request, reason)
        response = HttpResponseRedirect(reverse("review:batch", args=[batch.pk]))
        return response
    messages.success(request, _("De-id run %(run)d released.") % {"run": batch.run_id})
    return HttpResponseRedirect(reverse("review:batch", args=[batch.pk]))


@roles(STEWARD, PRIVACY)
def resolve(request: HttpRequest, pk: int) -> HttpResponse:
    finding = get_object_or_404(Finding, pk=pk)
    if (refused := _post_only(request)) is not None:
        return refused
    form = ResolveForm(request.POST)
    if form.is_valid():
        try:
            services.resolve_finding(
                finding,
                acting_user=request.user,
                resolution=form.cleaned_data["resolution"],
                scope=form.cleaned_data["scope"],
            )
            messages.success(request, _("Finding %(id)d resolved.") % {"id": finding.pk})
        except services.ReviewError as exc:
            messages.error(request, str(exc))
    else:
        messages.error(request, _("Choose a resolution."))
    return HttpResponseRedirect(reverse("review:batch", args=[finding.batch_id]))


# --- the review screen -----------------------------------------------------------------------


def _item_context(request: HttpRequest, item: ReviewItem, *, live: bool) -> dict[str, Any]:
    result = item.result
    kind = rendering.view_kind(result.kind, result.output_relpath)
    ctx: dict[str, Any] = {
        "item": item,
        "batch": item.batch,
        "result": result,
        "kind": kind,
        "live": live,
        "categories": [
            {"key": i + 1, "value": v, "label": label}
            for i, (v, label) in enumerate(Category.choices)
        ],
        "work_url": reverse("review:work", args=[item.batch_id]),
        "error": None,
    }
    mine = Verdict.objects.filter(item__batch_id=item.batch_id, reviewer_id=request.user.pk)
    prev = mine.exclude(item_id=item.pk).order_by("-created").values_list("item_id", flat=True)
    if not live:
        # "Previous" from a past item walks further back in this reviewer's own history.
        own = mine.filter(item_id=item.pk).first()
        if own is not None:
            prev = prev.filter(created__lt=own.created)
        ctx["my_verdict"] = own
    prev_id = prev.first()
    ctx["prev_url"] = reverse("review:item", args=[prev_id]) if prev_id else ""
    ctx["progress"] = services.progress(item.batch)
    ctx["can_original"] = PRIVACY in roles_of(request.user)
    try:
        path = services.output_path(item)
        if kind == "dicom":
            image = rendering.load_image(path)
            ctx["image"] = {
                "frames": image.frames,
                "rows": image.rows,
                "cols": image.cols,
                "color": image.is_color,
                "presets": [
                    {**p, "label": str(PRESET_LABELS.get(p["key"], p["label"]))}
                    for p in rendering.presets_for(image)
                ],
            }
            ctx["header"] = rendering.header_rows(path)
            ctx["boxes"] = [
                {
                    **b,
                    "left": round(100 * b["x0"] / image.cols, 3),
                    "top": round(100 * b["y0"] / image.rows, 3),
                    "width": round(100 * (b["x1"] - b["x0"]) / image.cols, 3),
                    "height": round(100 * (b["y1"] - b["y0"]) / image.rows, 3),
                }
                for b in rendering.masked_boxes(result)
            ]
        elif kind == "text":
            ctx["segments"] = rendering.text_segments(rendering.read_text(path), result.spans)
        elif kind == "waveform":
            wave = rendering.read_waveform(path, result.kind)
            ctx["wave_header"] = wave["header"]
            ctx["wave_signals"] = wave["signals"]
        else:
            ctx["error"] = _("This kind of file (%(kind)s) has no viewer.") % {"kind": result.kind}
    except services.Withdrawn as exc:
        ctx.update(withdrawn=str(exc), live=False, can_original=False)
    except (services.ReviewError, rendering.RenderError) as exc:
        ctx["error"] = str(exc)
    return ctx


@roles(CLINICIAN)
@require_GET
def work(request: HttpRequest, pk: int) -> HttpResponse:
    """The reviewer's current item (leased now, or the next one); the gate when none is left."""
    batch = _batch(pk)
    item = services.next_item(batch, request.user)
    if item is None:
        context = _gate_context(request, batch)
        context["can_release"] = False
        return render(request, "review/done.html", context)
    item = services.visible_items(request.user).get(pk=item.pk)
    return render(request, "review/item.html", _item_context(request, item, live=True))


@roles(CLINICIAN, STEWARD, PRIVACY)
@require_GET
def item_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """One item, read-only (a past verdict, or a steward looking at a finding)."""
    item = _item(request, pk)
    live = item.lease_user_id == request.user.pk and item.status == ReviewItem.Status.PENDING
    return render(request, "review/item.html", _item_context(request, item, live=live))


@roles(CLINICIAN)
def verdict(request: HttpRequest, pk: int) -> HttpResponse:
    """Record pass/fail and go straight to the next item."""
    if (refused := _post_only(request)) is not None:
        get_object_or_404(ReviewItem, pk=pk)
        return refused
    try:
        item = services.visible_items(request.user).get(pk=pk)
    except ReviewItem.DoesNotExist:
        # Called away, the lease expired and someone else took the item: say so and go on
        # with the queue rather than a bare 404 (no content of that item is shown).
        batch_id = get_object_or_404(ReviewItem, pk=pk).batch_id
        messages.error(request, _("This item is no longer leased to you; here is your next one."))
        return HttpResponseRedirect(reverse("review:work", args=[batch_id]))
    form = VerdictForm(request.POST)
    if not form.is_valid():
        for errors in form.errors.values():
            for e in errors:
                messages.error(request, e)
        return HttpResponseRedirect(reverse("review:work", args=[item.batch_id]))
    try:
        services.submit_verdict(
            item,
            request.user,
            decision=form.cleaned_data["decision"],
            category=form.cleaned_data["category"],
            region=form.cleaned_data["region"],
        )
    except services.ReviewError as exc:
        messages.error(request, str(exc))
    return HttpResponseRedirect(reverse("review:work", args=[item.batch_id]))


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value not in (None, "") else default
    except ValueError:
        return default


def _float(value: str | None) -> float | None:
    try:
        number = float(value) if value not in (None, "") else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) else None


def _text(message: str, status: int) -> HttpResponse:
    return HttpResponse(message, status=status, content_type="text/plain; charset=utf-8")


def _png(request: HttpRequest, locate: Callable[[], Any]) -> HttpResponse:
    """One windowed frame of the file ``locate()`` finds: 410 when the patient withdrew
    consent, 422 when the file cannot be found or rendered."""
    try:
        path = locate()
        image = rendering.load_image(path)
        data = rendering.render_png(
            image,
            frame=_int(request.GET.get("frame"), 0),
            center=_float(request.GET.get("c")),
            width=_float(request.GET.get("w")),
        )
    except services.Withdrawn as exc:
        return _text(str(exc), 410)
    except (services.ReviewError, rendering.RenderError) as exc:
        return _text(str(exc), 422)
    response = HttpResponse(data, content_type="image/png")
    response["Cache-Control"] = "private, no-store"  # de-identified is still sensitive
    return response


@roles(CLINICIAN, STEWARD, PRIVACY)
@require_GET
def image(request: HttpRequest, pk: int) -> HttpResponse:
    """The de-identified pixels of one frame, windowed server-side."""
    item = _item(request, pk)
    return _png(request, lambda: services.output_path(item))


# --- the original, for privacy officers only --------------------------------------------------


def _granted(request: HttpRequest, item: ReviewItem) -> bool:
    grants = request.session.get(GRANTS, {})
    return grants.get(str(item.pk), 0) > time.time()


@roles(PRIVACY)
def original(request: HttpRequest, pk: int) -> HttpResponse:
    """Ask for a reason (GET), then show the original beside the de-identified copy (POST)."""
    item = _item(request, pk)
    form = OriginalForm(request.POST or None)
    context = _item_context(request, item, live=False)
    context["form"] = form
    if request.method == "POST" and form.is_valid():
        try:
            path = services.open_original(
                item,
                acting_user=request.user,
                reason=form.cleaned_data["reason"],
                ticket=form.cleaned_data["ticket"],
            )
        except services.ReviewError as exc:
            form.add_error(None, str(exc))
        else:
            grants = {k: v for k, v in request.session.get(GRANTS, {}).items() if v > time.time()}
            grants[str(item.pk)] = time.time() + services.policy("ORIGINAL_GRANT_SECONDS")
            request.session[GRANTS] = grants
            context["opened"] = True
            try:
                if context["kind"] == "text":
                    context["original_text"] = rendering.read_text(path)
                elif context["kind"] == "dicom":
                    context["original_header"] = rendering.header_rows(path)
                elif context["kind"] == "waveform":
                    context["original_wave_header"] = rendering.read_waveform(
                        path, item.result.kind
                    )["header"]
            except rendering.RenderError as exc:
                context["original_error"] = str(exc)
    return render(request, "review/original.html", context, status=400 if form.errors else 200)


@roles(PRIVACY)
@require_GET
def original_image(request: HttpRequest, pk: int) -> HttpResponse:
    """The original pixels, only within the audited grant of ``original``."""
    item = _item(request, pk)
    if not _granted(request, item):
        raise Http404("no audited opening of this original is active")
    return _png(request, lambda: services.original_path(item))
