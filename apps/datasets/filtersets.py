"""The one filter for dataset versions, shared by the list page and the API."""

from __future__ import annotations

from django import forms
from django.db.models import QuerySet
from django.utils.translation import gettext_lazy as _

from apps.datasets.models import DatasetVersion


class VersionFilterForm(forms.Form):
    name = forms.SlugField(label=_("Name"), required=False, max_length=80)
    status = forms.ChoiceField(
        label=_("Status"),
        required=False,
        choices=[("", _("Any")), *DatasetVersion.Status.choices],
    )

    def filter(self, qs: QuerySet[DatasetVersion]) -> QuerySet[DatasetVersion]:
        """Apply the cleaned filters; call only when the form is valid."""
        if name := self.cleaned_data.get("name"):
            qs = qs.filter(name=name)
        if status := self.cleaned_data.get("status"):
            qs = qs.filter(status=status)
        return qs
