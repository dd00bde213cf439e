from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class DeidConfig(AppConfig):
    name = "apps.deid"
    label = "deid"

    def ready(self) -> None:
        from apps.core import navigation
        from apps.core.roles import AUDITOR, PRIVACY, STEWARD
        from apps.deid import services

        navigation.register(
            "deid",
            _("De-identification"),
            "deid:runs",
            {STEWARD, PRIVACY, AUDITOR},
            order=30,
            summary=services.overview,
        )
        navigation.register("deid_reveal", _("Re-identify"), "deid:reveal", {PRIVACY}, order=31)
