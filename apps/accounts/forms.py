from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.utils.translation import gettext_lazy as _

from apps.core.roles import ROLE_LABELS


class TotpForm(forms.Form):
    code = forms.RegexField(
        regex=r"^\s*\d{6}\s*$",
        label=_("Six-digit code"),
        widget=forms.TextInput(
            attrs={"autocomplete": "one-time-code", "inputmode": "numeric", "autofocus": True}
        ),
        error_messages={"invalid": _("Enter the six digits your authenticator shows.")},
    )


class TokenForm(forms.Form):
    name = forms.CharField(max_length=80, label=_("Name"))
    hours = forms.IntegerField(
        min_value=1, label=_("Lifetime (hours)"), initial=settings.API_TOKEN_DEFAULT_HOURS
    )
    scopes = forms.MultipleChoiceField(
        choices=(), widget=forms.CheckboxSelectMultiple, label=_("Scopes")
    )

    def __init__(self, *args: Any, roles: frozenset[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["hours"].max_value = settings.API_TOKEN_MAX_HOURS
        self.fields["hours"].validators.append(
            forms.IntegerField(max_value=settings.API_TOKEN_MAX_HOURS).validators[-1]
        )
        self.fields["scopes"].choices = [(r, ROLE_LABELS[r]) for r in sorted(roles)]
        self.fields["scopes"].initial = sorted(roles)


class RolesForm(forms.Form):
    roles = forms.MultipleChoiceField(
        choices=sorted(ROLE_LABELS.items()),
        widget=forms.CheckboxSelectMultiple,
        required=False,
        label=_("Roles"),
    )


class NewUserForm(RolesForm):
    username = forms.RegexField(regex=r"^[A-Za-z0-9_.-]{3,40}$", label=_("Username"))
    password = forms.CharField(
        widget=forms.PasswordInput, label=_("Initial password"), min_length=12
    )
