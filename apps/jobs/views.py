"""Pages: runs list, launch (form → preview → launch), run detail with actions, cluster.

Operators and administrators act; project managers and auditors read (apps/jobs/access.py).
Every action is a POST to a service; the detail page's log pane is fed over a WebSocket
(consumers.py) and works without it (a reload shows the latest tail).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.contrib import messages
from django.contrib.staticfiles import finders
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.defaultfilters import filesizeformat
from django.urls import reverse
from django.utils import timezone
from django.utils.formats import date_format, number_format
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from apps.core.access import roles, roles_of
from apps.core.htmx import render_page
from apps.datasets.access import READ as DATASET_READ
from apps.jobs import reasons, services
from apps.jobs.access import READ_ROLES, WRITE_ROLES
from apps.jobs.filtersets import RunFilterForm, owners
from apps.jobs.forms import RunForm
from apps.jobs.models import Attempt, AttemptState, TrainingRun
from apps.jobs.schedulers import SchedulerError

PAGE_SIZE = 50

PLOTLY = "vendor/plotly/plotly.min.js"


def get_run(pk: int) -> TrainingRun:
    """The one way views load a run (404 for an unknown id)."""
    return get_object_or_404(
        TrainingRun.objects.select_related("dataset_version", "created_by"), pk=pk
    )


def _can_write(request: HttpRequest) -> bool:
    return bool(roles_of(request.user) & WRITE_ROLES)


def _data_links(request: HttpRequest, run: TrainingRun) -> dict[str, str] | None:
    """Links to the run's dataset version and to every raw file behind the run, for the
    roles the datasets pages admit (operators and auditors; not project managers)."""
    if not roles_of(request.user) & set(DATASET_READ):
        return None
    return {
        "version": reverse("datasets:detail", args=[run.dataset_version_id]),
        "files": reverse("datasets:consumer_lineage", args=["jobs.trainingrun", run.pk]),
    }


@roles(*READ_ROLES)
@require_GET
def run_list(request: HttpRequest) -> HttpResponse:
    """Runs, newest first, filtered by state, owner and dataset version."""
    form = RunFilterForm(request.GET or None)
    qs = TrainingRun.objects.select_related("dataset_version", "created_by").order_by(
        "-created", "-pk"
    )
    if form.is_bound:
        qs = form.filter(qs) if form.is_valid() else qs.none()
    page = Paginator(qs, PAGE_SIZE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    context = {
        "form": form,
        "page": page,
        "runs": page.object_list,
        "owners": owners(),
        "query": query.urlencode(),
        "can_write": _can_write(request),
    }
    response = render_page(request, "jobs/run_list.html", "jobs/partials/run_table.html", context)
    if form.is_bound and form.errors:
        response.status_code = 400
    return response


@roles(*WRITE_ROLES)
@require_http_methods(["GET", "POST"])
def run_new(request: HttpRequest) -> HttpResponse:
    """Launch in two steps: the form, then a preview (memory estimate, warnings and the
    exact batch script), then the launch. Nothing is created before the second POST."""
    preview = None
    if request.method == "POST":
        form = RunForm(request.POST)
        if form.is_valid():
            spec = form.spec()
            if "launch" in request.POST:
                try:
                    run = services.launch_run(spec, acting_user=request.user)
                except services.LaunchRefused as exc:
                    form.add_error(None, str(exc))
                else:
                    messages.success(request, _("Run launched; it is being submitted."))
                    return redirect("jobs:run_detail", pk=run.pk)
            else:
                plan, script = services.preview_run(spec)
                preview = {"plan": plan, "script": script}
        status = 200 if form.is_valid() else 400
    else:
        form = RunForm()
        status = 200
    plan = form.plan or (preview or {}).get("plan")
    return render(
        request,
        "jobs/run_new.html",
        {
            "form": form,
            "preview": preview,
            "plan": plan,
            "tokenizers": services.tokenizer_choices(),
        },
        status=status,
    )


@roles(*READ_ROLES)
@require_GET
def run_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """Spec, attempts (with scripts), state and reason in plain words, checkpoints, latest
    metrics and the live log tail."""
    run = get_run(pk)
    attempts = list(run.attempts.select_related("created_by").order_by("-number"))
    current = attempts[0] if attempts else None
    context = {
        "run": run,
        "attempts": attempts,
        "current": current,
        "explanation": reasons.explain(current.reason)
        if current and current.state in (AttemptState.PENDING, AttemptState.REQUEUED)
        else None,
        "checkpoints": services.run_checkpoints(run),
        "metrics": _readable(services.run_metrics(run)),
        "plotly": bool(finders.find(PLOTLY)),
        "chart": _chart(run),
        "log": services.log_tail(current) if current else "",
        "can_write": _can_write(request),
        "data_links": _data_links(request, run),
        "withdrawn": services.withdrawn_in_run(run),
        "can_cancel": run.is_active,
        "can_requeue": bool(
            current
            and current.job_id
            and current.state
            in (
                AttemptState.PENDING,
                AttemptState.RUNNING,
                AttemptState.REQUEUED,
                AttemptState.COMPLETING,
            )
        ),
        "can_resume": not run.is_active,
        "timeline": _timeline(services.run_timeline(run, attempts)),
    }
    return render_page(request, "jobs/run_detail.html", "jobs/partials/run_state.html", context)


_EVENTS = {
    "jobs.run_launched": gettext_lazy("Run launched"),
    "jobs.attempt_submitted": gettext_lazy("Attempt submitted to the scheduler"),
    "jobs.attempt_submit_failed": gettext_lazy("The scheduler refused the attempt"),
    "jobs.attempt_state_changed": gettext_lazy("Attempt state"),
    "jobs.run_state_changed": gettext_lazy("Run state follows its attempt"),
    "jobs.attempt_restarted": gettext_lazy("The scheduler restarted the attempt"),
    "jobs.attempt_lost": gettext_lazy("The scheduler no longer knows the attempt"),
    "jobs.run_auto_requeued": gettext_lazy("Requeued automatically"),
    "jobs.run_cancel_requested": gettext_lazy("Cancel requested"),
    "jobs.run_requeue_requested": gettext_lazy("Requeue requested"),
    "jobs.run_resumed": gettext_lazy("Resumed from a checkpoint"),
}
_STATE_KEYS = ("attempt_state", "after_state")
_DETAIL_LABELS = {
    "attempt_id": gettext_lazy("attempt"),
    "job_id": gettext_lazy("job"),
    "exit_code": gettext_lazy("exit code"),
    "reason": gettext_lazy("reason"),
    "restarts": gettext_lazy("restarts"),
    "checkpoint_step": gettext_lazy("checkpoint step"),
    "preset": gettext_lazy("preset"),
    "nodes": gettext_lazy("nodes"),
    "scheduler": gettext_lazy("scheduler"),
}


def _timeline(events: list[Any]) -> list[dict[str, Any]]:
    """The run's audit events as people read them: what happened, the state it reached, the
    few details that matter, and who did it (by name). The raw event stays a click away on
    the audit trail; the action name is kept as the row's title."""
    from django.contrib.auth import get_user_model

    names = dict(
        get_user_model()
        .objects.filter(pk__in={e.user_id for e in events if e.user_id})
        .values_list("pk", "username")
    )
    states = dict(AttemptState.choices)
    rows = []
    for e in events:
        details = e.details
        state = next((details[k] for k in _STATE_KEYS if details.get(k)), None)
        shown = [
            f"{label} {details[key]}"
            for key, label in _DETAIL_LABELS.items()
            if details.get(key) not in (None, "", [], {})
        ]
        rows.append(
            {
                "timestamp": e.timestamp,
                "action": e.action,
                "label": str(_EVENTS.get(e.action, e.action)),
                "state": str(states.get(state, state)) if state else "",
                "summary": " · ".join(shown),
                "who": names.get(e.user_id, ""),
            }
        )
    return rows


def _seconds(value: float) -> str:
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def _count(value: float) -> str:
    return number_format(round(value), force_grouping=True)


def _float(value: float) -> str:
    return f"{value:.4g}"


# The trainer's metric names (docs/trainer.md), as people read them, and how to show the value.
_METRICS: dict[str, tuple[Any, Any]] = {
    "step": (gettext_lazy("Step"), _count),
    "training_loss": (gettext_lazy("Loss"), _float),
    "training_gradient_norm": (gettext_lazy("Gradient norm"), _float),
    "training_learning_rate": (gettext_lazy("Learning rate"), lambda v: f"{v:.3e}"),
    "training_tokens_per_second": (gettext_lazy("Tokens per second"), _count),
    "training_step_seconds": (gettext_lazy("Step time"), _seconds),
    "data_wait_seconds": (gettext_lazy("Waiting for data"), _seconds),
    "training_dataloader_queue_depth": (gettext_lazy("Loader queue depth"), _count),
    "training_tokens_seen_total": (gettext_lazy("Tokens seen"), _count),
    "training_iterations_total": (gettext_lazy("Iterations"), _count),
    "training_device_memory_bytes": (gettext_lazy("Device memory"), filesizeformat),
    "training_allreduce_seconds": (gettext_lazy("All-reduce time"), _seconds),
    "training_checkpoint_seconds": (gettext_lazy("Last checkpoint took"), _seconds),
}


def _readable(record: dict[str, Any] | None) -> list[dict[str, str]]:
    """A metrics record as label, text and metric name (kept for Prometheus queries): the
    time as a local date, counts grouped, durations in ms or s, memory in MiB/GiB; names the
    page does not know are shown as they are, numbers to 4 digits."""
    if not record:
        return []
    out = []
    for key, value in record.items():
        label, show = _METRICS.get(key, (key, _float))
        if key == "time" and isinstance(value, int | float):
            label = _("Logged at")
            text = date_format(
                timezone.localtime(datetime.fromtimestamp(value, tz=UTC)), "DATETIME_FORMAT"
            )
        elif isinstance(value, int | float) and not isinstance(value, bool):
            text = str(show(value))
        else:
            text = str(value)
        out.append({"label": str(label), "text": text, "name": key})
    return out


def _chart(run: TrainingRun) -> dict[str, Any]:
    return {
        "series": services.run_metric_series(run),
        "url": reverse("jobs:run_metrics", args=[run.pk]),
        "live": run.is_active,
        "titles": {
            "loss": _("Loss and gradient norm"),
            "speed": _("Tokens per second and learning rate"),
            "step": _("step"),
            "training_loss": _("loss"),
            "training_gradient_norm": _("gradient norm"),
            "training_tokens_per_second": _("tokens/s"),
            "training_learning_rate": _("learning rate"),
        },
    }


@roles(*READ_ROLES)
@require_GET
def run_metrics(request: HttpRequest, pk: int) -> JsonResponse:
    """The run's per-step series as JSON (the charts poll it while the run is active)."""
    run = get_run(pk)
    return JsonResponse({"series": services.run_metric_series(run), "live": run.is_active})


def _act(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    run = get_run(pk)
    operation = {
        "cancel": services.cancel_run,
        "requeue": services.requeue_run,
        "resume": services.resume_run,
    }[action]
    try:
        operation(run, acting_user=request.user)
    except services.JobsError as exc:
        messages.error(request, str(exc))
    else:
        done = {
            "cancel": _("Cancel requested."),
            "requeue": _("Requeue requested."),
            "resume": _("A new attempt is being submitted."),
        }
        messages.success(request, done[action])
    return redirect("jobs:run_detail", pk=run.pk)


@roles(*WRITE_ROLES)
@require_POST
def run_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    return _act(request, pk, "cancel")


@roles(*WRITE_ROLES)
@require_POST
def run_requeue(request: HttpRequest, pk: int) -> HttpResponse:
    return _act(request, pk, "requeue")


@roles(*WRITE_ROLES)
@require_POST
def run_resume(request: HttpRequest, pk: int) -> HttpResponse:
    return _act(request, pk, "resume")


@roles(*READ_ROLES)
@require_GET
def attempt_script(request: HttpRequest, pk: int) -> HttpResponse:
    """The exact script an attempt ran, as plain text (for diffing and for the record)."""
    attempt = get_object_or_404(Attempt, pk=pk)
    response = HttpResponse(attempt.script, content_type="text/plain; charset=utf-8")
    response["Content-Disposition"] = f'inline; filename="attempt-{attempt.pk}.sh"'
    return response


@roles(*READ_ROLES)
@require_GET
def cluster(request: HttpRequest) -> HttpResponse:
    """Partitions, nodes and GPU availability from the configured scheduler."""
    context: dict[str, Any] = {"scheduler": services.default_scheduler()}
    try:
        context["info"] = services.cluster_info()
    except SchedulerError as exc:
        context["error"] = exc.message
    return render(request, "jobs/cluster.html", context)
