"""The inventory's filters, shared by the HTML lists and the API (STYLE.md 8).

Each is a plain form: every field optional and validated; ``filter(qs)`` applies the cleaned
values. Invalid filters show as form errors on pages and as 400 in the API.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.validators import RegexValidator
from django.db.models import Q, QuerySet
from django.utils.translation import gettext_lazy as _

from apps.inventory.models import (
    ConsentStatus,
    DataKind,
    IngestBatch,
    QACheck,
    QAResult,
    QASeverity,
    RawFile,
)

_hex = RegexValidator(r"^[0-9a-f]{1,64}$", _("Lowercase hexadecimal, up to 64 characters."))


def _choices(choices: Any) -> list[tuple[str, Any]]:
    return [("", "—"), *choices]


class FilterForm(forms.Form):
    """Base: ``filter`` maps cleaned fields to lookups; empty values are skipped."""

    lookups: dict[str, str] = {}

    def filter(self, qs: QuerySet[Any]) -> QuerySet[Any]:
        """Apply the cleaned filters; call only when the form is valid."""
        for name, lookup in self.lookups.items():
            value = self.cleaned_data.get(name)
            if value not in (None, ""):
                qs = qs.filter(**{lookup: value})
        return qs

    @classmethod
    def from_params(cls, params: Any) -> FilterForm:
        """Bind only the known fields (the API's pagination parameters are not filters)."""
        return cls({k: v for k, v in params.items() if k in cls.base_fields})


class SourceFilterForm(FilterForm):
    q = forms.CharField(label=_("Search"), required=False, max_length=120)
    type = forms.ChoiceField(label=_("Type"), required=False, choices=_choices(DataKind.choices))
    consent_status = forms.ChoiceField(
        label=_("Consent status"), required=False, choices=_choices(ConsentStatus.choices)
    )
    lookups = {"type": "type", "consent_status": "consent_status"}

    def filter(self, qs: QuerySet[Any]) -> QuerySet[Any]:
        qs = super().filter(qs)
        if q := self.cleaned_data.get("q"):
            qs = qs.filter(Q(source__icontains=q) | Q(owner__icontains=q))
        return qs


class BatchFilterForm(FilterForm):
    source = forms.IntegerField(label=_("Source id"), required=False, min_value=1)
    status = forms.ChoiceField(
        label=_("Status"), required=False, choices=_choices(IngestBatch.Status.choices)
    )
    lookups = {"source": "source_id", "status": "status"}


class RawFileFilterForm(FilterForm):
    source = forms.IntegerField(label=_("Source id"), required=False, min_value=1)
    batch = forms.IntegerField(label=_("Batch id"), required=False, min_value=1)
    kind = forms.ChoiceField(
        label=_("Kind"), required=False, choices=_choices(RawFile.Kind.choices)
    )
    modality = forms.CharField(label=_("Modality"), required=False, max_length=16)
    excluded = forms.NullBooleanField(
        label=_("Excluded"),
        required=False,
        widget=forms.Select(choices=[("", "—"), ("true", _("Yes")), ("false", _("No"))]),
    )
    sha256 = forms.CharField(
        label=_("SHA-256 prefix"), required=False, max_length=64, validators=[_hex]
    )
    qa_failed = forms.NullBooleanField(
        label=_("Failing QA"),
        required=False,
        widget=forms.Select(choices=[("", "—"), ("true", _("Yes")), ("false", _("No"))]),
    )
    lookups = {
        "source": "source_id",
        "batch": "batch_id",
        "kind": "kind",
        "modality": "modality",
        "excluded": "excluded",
        "sha256": "sha256__startswith",
    }

    def filter(self, qs: QuerySet[Any]) -> QuerySet[Any]:
        qs = super().filter(qs)
        failed = self.cleaned_data.get("qa_failed")
        if failed is not None:
            failing = Q(qa_results__result=QAResult.FAIL)
            qs = (qs.filter(failing) if failed else qs.exclude(failing)).distinct()
        return qs


class QAResultFilterForm(FilterForm):
    source = forms.IntegerField(label=_("Source id"), required=False, min_value=1)
    batch = forms.IntegerField(label=_("Batch id"), required=False, min_value=1)
    check_type = forms.ChoiceField(
        label=_("Check"), required=False, choices=_choices(QACheck.choices)
    )
    result = forms.ChoiceField(
        label=_("Result"), required=False, choices=_choices(QAResult.choices)
    )
    severity = forms.ChoiceField(
        label=_("Severity"), required=False, choices=_choices(QASeverity.choices)
    )
    lookups = {
        "source": "raw_file__source_id",
        "batch": "raw_file__batch_id",
        "check_type": "check_type",
        "result": "result",
        "severity": "severity",
    }
