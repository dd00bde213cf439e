"""The one API router (STYLE.md 8) and the OpenAPI schema."""

from __future__ import annotations

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView
from rest_framework.routers import DefaultRouter

from apps.accounts.api import ApiTokenViewSet, MeView
from apps.audit.api import AuditEventViewSet
from apps.core.access import ANY_ROLE, DeclaredRolesPermission


class SchemaView(SpectacularAPIView):
    allowed_roles = ANY_ROLE
    # drf-spectacular serves its schema to anyone by default; ours follows the declaration.
    permission_classes = [DeclaredRolesPermission]


router = DefaultRouter()
router.include_root_view = False
router.include_format_suffixes = False
router.register("tokens", ApiTokenViewSet, basename="apitoken")
router.register("audit/events", AuditEventViewSet, basename="auditevent")

urlpatterns = [
    path("me/", MeView.as_view(), name="api-me"),
    path("schema/", SchemaView.as_view(), name="api-schema"),
    path("", include(router.urls)),
]
