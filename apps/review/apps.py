"""The review app: clinician spot-check of de-identified data and the release gate."""

from __future__ import annotations

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class ReviewConfig(AppConfig):
    name = "apps.review"
    label = "review"
    verbose_name = _("De-identification review")

    def ready(self) -> None:
        from apps.core import navigation
        from apps.core.roles import AUDITOR, CLINICIAN, PRIVACY, STEWARD
        from apps.review import services

        navigation.register(
            "review",
            _("Review"),
            "review:batches",
            {CLINICIAN, STEWARD, PRIVACY, AUDITOR},
            order=300,
            summary=services.overview,
        )
