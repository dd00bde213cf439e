"""The inventory app: the data map, scans of raw roots into ingest batches, and data QA."""

from __future__ import annotations

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class InventoryConfig(AppConfig):
    name = "apps.inventory"
    label = "inventory"
    verbose_name = _("Data inventory")

    def ready(self) -> None:
        from apps.core import navigation
        from apps.core.roles import AUDITOR, PM, PRIVACY, STEWARD
        from apps.inventory import services

        navigation.register(
            "inventory",
            _("Data map"),
            "inventory:sources",
            {STEWARD, PRIVACY, PM, AUDITOR},
            order=20,
            summary=services.overview,
        )
        navigation.register(
            "inventory_dashboard",
            _("Data volumes"),
            "inventory:dashboard",
            {STEWARD, PRIVACY, PM, AUDITOR},
            order=21,
            summary=services.volume_overview,
        )
