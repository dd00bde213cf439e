"""The one API router (STYLE.md 8) and the OpenAPI schema."""

from __future__ import annotations

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView
from rest_framework.routers import DefaultRouter

from apps.accounts.api import ApiTokenViewSet, MeView
from apps.core.access import ANY_ROLE


class SchemaView(SpectacularAPIView):
    allowed_roles = ANY_ROLE


router = DefaultRouter()
router.include_root_view = False
router.register("tokens", ApiTokenViewSet, basename="apitoken")
try:
    from apps.audit.api import AuditEventViewSet

    router.register("audit/events", AuditEventViewSet, basename="auditevent")
except ImportError:
    pass

urlpatterns = [
    path("me/", MeView.as_view(), name="api-me"),
    path("schema/", SchemaView.as_view(), name="api-schema"),
    path("", include(router.urls)),
]
