"""Forms of the review pages; validation of values, the rules live in the services."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.utils.translation import gettext_lazy as _

from apps.deid.models import DeidRun
from apps.review.models import Category, Finding, ReviewBatch, Verdict
from apps.review.services import ORIGINAL_REASONS, policy


class BatchCreateForm(forms.Form):
    run = forms.ModelChoiceField(
        label=_("De-identification run"), queryset=DeidRun.objects.none(), empty_label=None
    )
    fraction = forms.FloatField(
        label=_("Sample fraction"),
        initial=0.01,
        help_text=_("Between 1% and 5% of each stratum (seed 2.2)."),
    )
    min_per_stratum = forms.IntegerField(label=_("Minimum per stratum"), min_value=1)
    threshold = forms.FloatField(label=_("Pass-rate threshold (lower bound)"))
    double_review_fraction = forms.FloatField(
        label=_("Fraction reviewed twice"), min_value=0, max_value=1
    )
    seed = forms.IntegerField(
        label=_("Random seed"), required=False, help_text=_("Leave empty for a fresh one.")
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        live = ReviewBatch.objects.filter(
            status__in=[ReviewBatch.Status.OPEN, ReviewBatch.Status.RELEASED]
        ).values("run_id")
        self.fields["run"].queryset = DeidRun.objects.filter(
            status=DeidRun.Status.DONE, released_at__isnull=True
        ).exclude(pk__in=live)
        self.fields["min_per_stratum"].initial = policy("MIN_PER_STRATUM")
        self.fields["threshold"].initial = policy("THRESHOLD")
        self.fields["double_review_fraction"].initial = policy("DOUBLE_REVIEW_FRACTION")


class VerdictForm(forms.Form):
    decision = forms.ChoiceField(choices=Verdict.Decision.choices)
    category = forms.ChoiceField(choices=[("", "—"), *Category.choices], required=False)
    region = forms.CharField(required=False, max_length=200)

    def clean_region(self) -> dict[str, int] | None:
        raw = self.cleaned_data.get("region") or ""
        if not raw:
            return None
        try:
            value = json.loads(raw)
        except ValueError:
            raise forms.ValidationError(_("The region is not valid JSON.")) from None
        return value

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if data.get("decision") == Verdict.Decision.FAIL and not data.get("category"):
            self.add_error("category", _("A fail needs a category."))
        return data


class ResolveForm(forms.Form):
    resolution = forms.ChoiceField(label=_("Resolution"), choices=Finding.Resolution.choices)
    scope = forms.ChoiceField(
        label=_("Re-review"),
        choices=[("item", _("this item")), ("stratum", _("its whole stratum"))],
        initial="item",
    )


class OriginalForm(forms.Form):
    reason = forms.ChoiceField(label=_("Reason"), choices=[(k, k) for k in ORIGINAL_REASONS])
    ticket = forms.RegexField(
        label=_("Ticket reference"),
        regex=r"^[A-Za-z0-9._-]{0,40}$",
        required=False,
        help_text=_("Letters, digits, '.', '_' and '-' only: it goes into the audit trail."),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        labels = {
            "dispute": _("A reviewer's verdict is disputed"),
            "incident": _("Suspected privacy incident"),
            "quality": _("Quality assurance of the rules"),
            "legal": _("Legal or ethics board request"),
        }
        self.fields["reason"].choices = [(k, labels.get(k, k)) for k in ORIGINAL_REASONS]
