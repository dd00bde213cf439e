"""The one filter for training runs, shared by the runs page and the API."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth import get_user_model
from django.db.models import QuerySet
from django.utils.translation import gettext_lazy as _

from apps.jobs.models import RunState


class RunFilterForm(forms.Form):
    """GET filters: state, owner (user id) and dataset version (id); all optional."""

    state = forms.ChoiceField(
        label=_("State"), required=False, choices=[("", _("Any")), *list(RunState.choices)]
    )
    owner = forms.IntegerField(label=_("Owner (user id)"), required=False, min_value=1)
    dataset = forms.IntegerField(label=_("Dataset version id"), required=False, min_value=1)

    def filter(self, qs: QuerySet[Any]) -> QuerySet[Any]:
        data = self.cleaned_data
        if data.get("state"):
            qs = qs.filter(state=data["state"])
        if data.get("owner"):
            qs = qs.filter(created_by_id=data["owner"])
        if data.get("dataset"):
            qs = qs.filter(dataset_version_id=data["dataset"])
        return qs


def owners() -> QuerySet[Any]:
    return get_user_model().objects.filter(pk__in=_owner_ids()).order_by("username")


def _owner_ids() -> Any:
    from apps.jobs.models import TrainingRun

    return TrainingRun.objects.values("created_by_id").distinct()
