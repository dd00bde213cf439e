from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class AccountsConfig(AppConfig):
    name = "apps.accounts"
    label = "accounts"

    def ready(self) -> None:
        from apps.core import navigation
        from apps.core.access import ANY_ROLE
        from apps.core.roles import ADMIN

        navigation.register("home", _("Overview"), "core:home", ANY_ROLE, order=0)
        navigation.register("tokens", _("API tokens"), "accounts:tokens", ANY_ROLE, order=900)
        from apps.accounts import schema, signals  # noqa: F401 - registers receivers, schema

        navigation.register("users", _("Users and roles"), "accounts:users", {ADMIN}, order=910)
