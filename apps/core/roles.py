"""The roles of the control plane (DESIGN.md "Who uses it").

Roles are Django groups named by these slugs. They live in core because every app declares
which roles may use its views, and core imports no other app.
"""

from __future__ import annotations

from django.utils.translation import gettext_lazy as _

CLINICIAN = "clinician_reviewer"
STEWARD = "data_steward"
PRIVACY = "privacy_officer"
OPERATOR = "operator"
PM = "project_manager"
AUDITOR = "auditor"
ADMIN = "admin"

ROLE_LABELS = {
    CLINICIAN: _("Clinician reviewer"),
    STEWARD: _("Data steward"),
    PRIVACY: _("Privacy officer"),
    OPERATOR: _("Operator"),
    PM: _("Project manager"),
    AUDITOR: _("Auditor"),
    ADMIN: _("Administrator"),
}
ALL_ROLES: frozenset[str] = frozenset(ROLE_LABELS)
