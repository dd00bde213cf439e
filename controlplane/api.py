"""The one API router (STYLE.md 8) and the OpenAPI schema.

Each app's ``api.py`` lists its ``routes`` as (prefix, viewset, basename); they are all
registered here, so adding an endpoint never touches this file.
"""

from __future__ import annotations

from importlib import import_module

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView
from rest_framework.routers import DefaultRouter

from apps.accounts.api import MeView
from apps.core.access import ANY_ROLE, DeclaredRolesPermission

API_APPS = ["accounts", "audit", "inventory", "deid", "review", "datasets", "jobs"]


class SchemaView(SpectacularAPIView):
    allowed_roles = ANY_ROLE
    # drf-spectacular serves its schema to anyone by default; ours follows the declaration.
    permission_classes = [DeclaredRolesPermission]


router = DefaultRouter()
router.include_root_view = False
router.include_format_suffixes = False
for app in API_APPS:
    for prefix, viewset, basename in import_module(f"apps.{app}.api").routes:
        router.register(prefix, viewset, basename=basename)

urlpatterns = [
    path("me/", MeView.as_view(), name="api-me"),
    path("schema/", SchemaView.as_view(), name="api-schema"),
    path("", include(router.urls)),
]
