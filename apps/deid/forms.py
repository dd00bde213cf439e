"""Forms of the de-identification pages: start a run, re-identify a pseudonym."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.utils.translation import gettext_lazy as _

from apps.deid import services
from apps.deid.engine import DeidProfile
from apps.deid.models import ProfileVersion
from apps.inventory.models import IngestBatch


class BatchChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: IngestBatch) -> str:
        return _("Batch %(id)s · %(source)s · %(n)s files · %(status)s") % {
            "id": obj.pk,
            "source": obj.source.source,
            "n": obj.files_total,
            "status": obj.get_status_display(),
        }


class StartRunForm(forms.Form):
    """Pick an ingest batch and, optionally, a profile (JSON, as ``DeidProfile.to_dict``)."""

    batch = BatchChoiceField(
        label=_("Ingest batch"),
        queryset=IngestBatch.objects.exclude(status=IngestBatch.Status.RUNNING)
        .select_related("source")
        .order_by("-created"),
    )
    saved_profile = forms.ModelChoiceField(
        label=_("Saved profile"),
        required=False,
        queryset=ProfileVersion.objects.order_by("name", "-version"),
        help_text=_("A saved, versioned profile; or paste one below, or leave both empty."),
    )
    profile = forms.CharField(
        label=_("Profile (JSON)"),
        required=False,
        widget=forms.Textarea(attrs={"rows": 8, "class": "mono", "spellcheck": "false"}),
        help_text=_("Leave empty for the default profile. Unknown keys are refused."),
    )

    def clean_profile(self) -> DeidProfile | None:
        text = (self.cleaned_data.get("profile") or "").strip()
        if not text:
            return None
        try:
            data: Any = json.loads(text)
        except ValueError as exc:
            raise forms.ValidationError(_("Not valid JSON: %(err)s") % {"err": exc}) from None
        try:
            return services.profile_from_data(data)
        except services.DeidServiceError as exc:
            raise forms.ValidationError(str(exc)) from None

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if data.get("saved_profile") and data.get("profile"):
            raise forms.ValidationError(_("Choose a saved profile or paste one, not both."))
        return data

    @property
    def chosen_profile(self) -> ProfileVersion | DeidProfile | None:
        return self.cleaned_data.get("saved_profile") or self.cleaned_data.get("profile")


class ProfileForm(forms.Form):
    """Save a profile as the next version of a name."""

    name = forms.SlugField(label=_("Name"), max_length=60)
    profile = forms.CharField(
        label=_("Profile (JSON)"),
        widget=forms.Textarea(attrs={"rows": 16, "class": "mono", "spellcheck": "false"}),
        help_text=_("As DeidProfile.to_dict(); the name and version in it are replaced."),
    )
    note = forms.CharField(label=_("What changed and why"), max_length=300, required=False)

    def clean_name(self) -> str:
        return self.cleaned_data["name"].lower()

    def clean_profile(self) -> DeidProfile:
        try:
            data: Any = json.loads(self.cleaned_data["profile"])
        except ValueError as exc:
            raise forms.ValidationError(_("Not valid JSON: %(err)s") % {"err": exc}) from None
        if not isinstance(data, dict):
            raise forms.ValidationError(_("A profile is a JSON object."))
        data.pop("name", None)
        data.pop("version", None)
        try:
            return services.profile_from_data(data) if data else DeidProfile()
        except services.DeidServiceError as exc:
            raise forms.ValidationError(str(exc)) from None


class RevealForm(forms.Form):
    """A pseudonym and the reason it must be re-identified (kept in the reveal log)."""

    pseudonym = forms.RegexField(
        label=_("Pseudonym"),
        max_length=80,
        regex=r"^[A-Za-z0-9]{4,80}$",
        widget=forms.TextInput(attrs={"autocomplete": "off", "class": "mono"}),
    )
    reason = forms.CharField(
        label=_("Reason"),
        min_length=services.REVEAL_REASON_MIN_LENGTH,
        max_length=2000,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text=_(
            "Why re-identification is necessary (ethics approval, consent withdrawal, "
            "incident number). Recorded with your name; the audit trail keeps its hash."
        ),
    )


class LookupForm(forms.Form):
    """A hospital patient ID and why its pseudonym is needed (kept in the reveal log)."""

    patient_id = forms.CharField(
        label=_("Patient ID"),
        max_length=64,
        widget=forms.TextInput(attrs={"autocomplete": "off", "class": "mono"}),
        help_text=_("As in the hospital's systems and the DICOM Patient ID. Stored nowhere."),
    )
    reason = forms.CharField(
        label=_("Reason"),
        min_length=services.REVEAL_REASON_MIN_LENGTH,
        max_length=2000,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text=_("For example the consent-withdrawal request's case number."),
    )
