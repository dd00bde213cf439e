"""Page forms. They validate input for display; saving goes through services."""

from __future__ import annotations

from django import forms
from django.utils.translation import gettext_lazy as _

from apps.core.roles import ROLE_LABELS
from apps.inventory.models import DataSource


class DataSourceForm(forms.ModelForm):
    """The data-map row: the seed's seven columns, storage per tier, roles and legal basis."""

    allowed_roles = forms.MultipleChoiceField(
        label=_("Roles allowed to access the data"),
        required=False,
        choices=sorted(ROLE_LABELS.items()),
        widget=forms.CheckboxSelectMultiple,
        help_text=_("Empty: every role that may see the inventory."),
    )

    class Meta:
        model = DataSource
        fields = [
            "source",
            "type",
            "avg_size_mb",
            "estimated_count",
            "owner",
            "consent_status",
            "notes",
            "legal_basis",
            "raw_root",
            "deid_root",
            "working_root",
            "allowed_roles",
        ]
        widgets = {"notes": forms.Textarea(attrs={"rows": 3})}


class CSVImportForm(forms.Form):
    file = forms.FileField(
        label=_("data_inventory.csv"),
        help_text=_("UTF-8 or GB18030, at most 5 MB, the columns shown above."),
    )
    encoding = forms.ChoiceField(
        label=_("Encoding"),
        choices=[
            ("auto", _("UTF-8 (with or without BOM)")),
            ("gb18030", _("GB18030 (Excel on Chinese Windows)")),
        ],
        initial="auto",
    )


class ExcludeForm(forms.Form):
    reason = forms.CharField(label=_("Reason"), max_length=200)
