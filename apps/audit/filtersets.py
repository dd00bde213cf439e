"""The one filter for audit events, shared by the auditor page, the CSV export and the API."""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.validators import RegexValidator
from django.db.models import QuerySet
from django.utils.translation import gettext_lazy as _

from apps.audit.models import AuditEvent

_action_chars = RegexValidator(
    r"^[a-z0-9_.]+$", _("Use lowercase letters, digits, '_' and '.' (e.g. accounts.login).")
)
_resource_chars = RegexValidator(
    r"^[A-Za-z0-9_.:/@+-]+$", _("Use a resource like accounts.user:17 (no spaces).")
)
_request_chars = RegexValidator(
    r"^[A-Za-z0-9._-]+$", _("A request id has letters, digits, '.', '_' and '-' only.")
)


class AuditEventFilterForm(forms.Form):
    """GET filters. Every field is optional and validated; bad values become form errors."""

    user_id = forms.IntegerField(
        label=_("User id"), required=False, min_value=0, max_value=2**63 - 1
    )
    action = forms.CharField(
        label=_("Action"),
        required=False,
        max_length=100,
        validators=[_action_chars],
        help_text=_("Exact action, or a prefix ending in '.'"),
    )
    resource = forms.CharField(
        label=_("Resource"),
        required=False,
        max_length=200,
        validators=[_resource_chars],
        help_text=_("Exact resource, or a prefix like accounts.user"),
    )
    request_id = forms.CharField(
        label=_("Request id"), required=False, max_length=64, validators=[_request_chars]
    )
    since = forms.DateTimeField(
        label=_("From"),
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
    )
    until = forms.DateTimeField(
        label=_("Until"),
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        since, until = data.get("since"), data.get("until")
        if since and until and since > until:
            raise forms.ValidationError(_("'From' must be before 'Until'."))
        return data

    def filter(self, qs: QuerySet[AuditEvent]) -> QuerySet[AuditEvent]:
        """Apply the cleaned filters; call only when the form is valid."""
        data = self.cleaned_data
        if data.get("user_id") is not None:
            qs = qs.filter(user_id=data["user_id"])
        if action := data.get("action"):
            qs = (
                qs.filter(action__startswith=action)
                if action.endswith(".")
                else qs.filter(action=action)
            )
        if resource := data.get("resource"):
            # "accounts.user" names every user; "accounts.user:17" just one.
            qs = (
                qs.filter(resource=resource)
                if ":" in resource
                else qs.filter(resource__startswith=f"{resource}:")
            )
        if request_id := data.get("request_id"):
            qs = qs.filter(request_id=request_id)
        if since := data.get("since"):
            qs = qs.filter(timestamp__gte=since)
        if until := data.get("until"):
            qs = qs.filter(timestamp__lte=until)
        return qs

    @property
    def is_filtered(self) -> bool:
        return self.is_valid() and any(v not in (None, "") for v in self.cleaned_data.values())
