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
        from django.urls import reverse

        from apps.datasets import registry
        from apps.datasets.tokenizers import CONSUMER_KIND

        def tokenizer_url(pk: str) -> str:
            from apps.datasets.models import DatasetTokenizer

            version_id = DatasetTokenizer.objects.values_list("version_id", flat=True).get(pk=pk)
            return f"{reverse('datasets:detail', args=[version_id])}#tokenizer-{pk}"

        # A tokenizer's merges are statistics of the version's text: lineage must reach it.
        registry.register_consumer(CONSUMER_KIND, _("Tokenizer"), url=tokenizer_url)
