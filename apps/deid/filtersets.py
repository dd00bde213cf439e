"""The one filter for per-file results, shared by the run's results page and the API."""

from __future__ import annotations

from django import forms
from django.db.models import QuerySet
from django.utils.translation import gettext_lazy as _

from apps.deid.models import DeidFileResult


class ResultFilterForm(forms.Form):
    """GET filters; every field optional and validated."""

    run = forms.IntegerField(label=_("Run"), required=False, min_value=1)
    status = forms.ChoiceField(
        label=_("Status"),
        required=False,
        choices=[("", _("Any")), *DeidFileResult.Status.choices],
    )
    kind = forms.RegexField(label=_("Kind"), required=False, max_length=20, regex=r"^[a-z_]+$")
    flagged = forms.NullBooleanField(
        label=_("Flagged for review"),
        required=False,
        widget=forms.Select(choices=[("", _("Any")), ("true", _("Yes")), ("false", _("No"))]),
    )

    def filter(self, qs: QuerySet[DeidFileResult]) -> QuerySet[DeidFileResult]:
        """Apply the cleaned filters; call only when the form is valid."""
        data = self.cleaned_data
        if data.get("run"):
            qs = qs.filter(run_id=data["run"])
        if data.get("status"):
            qs = qs.filter(status=data["status"])
        if data.get("kind"):
            qs = qs.filter(kind=data["kind"])
        if data.get("flagged") is not None:
            qs = qs.filter(flagged=data["flagged"])
        return qs
