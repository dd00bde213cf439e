"""The audit app: the append-only, hash-chained trail of every state change (seed 5.2)."""

from __future__ import annotations

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class AuditConfig(AppConfig):
    name = "apps.audit"
    label = "audit"
    verbose_name = _("Audit trail")

    def ready(self) -> None:
        from apps.audit import services
        from apps.core import navigation
        from apps.core.roles import AUDITOR, PRIVACY

        navigation.register(
            "audit",
            _("Audit trail"),
            "audit:events",
            {AUDITOR, PRIVACY},
            order=900,
            summary=services.overview,
        )
