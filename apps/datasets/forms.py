"""Forms of the datasets pages. Validation that matters lives in the services; these only
shape input and surface the services' refusals as field errors."""

from __future__ import annotations

from typing import Any

from django import forms
from django.utils.translation import gettext_lazy as _

from apps.datasets import services
from apps.deid.models import DeidRun


class BuildForm(forms.Form):
    """Build a new version. Only released runs are offered; a posted unreleased run id is
    refused with the service's message naming it."""

    name = forms.SlugField(label=_("Dataset name"), max_length=80)
    runs = forms.ModelMultipleChoiceField(
        label=_("Released de-identification runs"),
        queryset=DeidRun.objects.all(),
        widget=forms.CheckboxSelectMultiple,
    )
    target_shard_mb = forms.FloatField(
        label=_("Target shard size (MB)"),
        initial=512,
        min_value=0.001,
        max_value=services.MAX_SHARD_MB,
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        released = DeidRun.objects.filter(released_at__isnull=False).order_by("-released_at")
        self.fields["runs"].widget.choices = [
            (
                run.pk,
                _("run %(id)s · batch %(batch)s · %(ok)s files · released %(when)s")
                % {
                    "id": run.pk,
                    "batch": run.batch_id,
                    "ok": run.files_ok,
                    "when": run.released_at.date().isoformat(),
                },
            )
            for run in released
        ]

    def clean_runs(self) -> list[DeidRun]:
        try:
            return services.check_runs_packable(self.cleaned_data["runs"])
        except services.DatasetError as exc:
            raise forms.ValidationError(str(exc)) from None


class AnnotationForm(forms.Form):
    name = forms.SlugField(label=_("Label set name"), max_length=80)
    file = forms.FileField(
        label=_("Labels (.jsonl or .csv, one row per label with a 'key' column)")
    )
    quality_score = forms.FloatField(label=_("Quality score (0–1)"), min_value=0, max_value=1)
    notes = forms.CharField(label=_("Notes"), max_length=300, required=False)


class LineageSearchForm(forms.Form):
    """One box: a raw file id, a raw file SHA-256, or a patient pseudonym."""

    q = forms.CharField(
        label=_("Raw file id, SHA-256 or patient pseudonym"),
        max_length=120,
        strip=True,
    )
    kind = forms.ChoiceField(
        label=_("Search for"),
        choices=[("auto", _("Detect")), ("raw", _("Raw file")), ("patient", _("Patient"))],
        initial="auto",
        required=False,
    )


class ConsentForm(forms.Form):
    """A privacy officer records a patient's consent decision from their lineage report: the
    pseudonym (hidden), the request's case number and a ticked confirmation (the services
    check the pseudonym and the case number)."""

    pseudonym = forms.CharField(max_length=80, strip=True, widget=forms.HiddenInput)
    reference = forms.CharField(label=_("Case number"), max_length=80, strip=True)
    confirm = forms.BooleanField(required=True)


class WithdrawalForm(ConsentForm):
    """The patient withdrew consent (``services.withdraw_consent``); the case number may be
    left out."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["reference"].required = False
        self.fields["reference"].help_text = _(
            "The withdrawal request's case or ticket number; never a name."
        )
        self.fields["confirm"].label = _(
            "The patient withdrew consent: leave their data out of every later version"
        )


class ReinstatementForm(ConsentForm):
    """The patient consented again (``services.reinstate_consent``); the case number of the
    new consent or of the correction is required."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["reference"].help_text = _(
            "The new consent's (or the correction's) case number; never a name."
        )
        self.fields["confirm"].label = _(
            "The patient consented again: later versions may pack their data"
        )


class TokenizerForm(forms.Form):
    """Train a byte-level BPE tokenizer on a version's text (``tokenizers.request_tokenizer``
    checks the ranges again)."""

    vocab_size = forms.IntegerField(
        label=_("Vocabulary size"),
        min_value=266,
        max_value=262_144,
        initial=32_000,
        help_text=_("Ids the tokenizer may use, specials and the 256 bytes included."),
    )
    max_mb = forms.FloatField(
        label=_("Text budget (MB)"),
        min_value=0.001,
        max_value=4096,
        initial=256,
        help_text=_("How much of the version's text, in sample order, to learn from."),
    )
