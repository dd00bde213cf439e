"""The datasets app: immutable WebDataset versions from released data, lineage, label sets."""

from __future__ import annotations

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class DatasetsConfig(AppConfig):
    name = "apps.datasets"
    label = "datasets"
    verbose_name = _("Datasets")

    def ready(self) -> None:
        from apps.core import navigation
        from apps.datasets import services
        from apps.datasets.access import LINEAGE, READ

        navigation.register(
            "datasets",
            _("Datasets"),
            "datasets:list",
            set(READ),
            order=400,
            summary=services.overview,
        )
        navigation.register(
            "lineage",
            _("Lineage"),
            "datasets:lineage",
            set(LINEAGE),
            order=410,
            summary=services.lineage_overview,
        )
