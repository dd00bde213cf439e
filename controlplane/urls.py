"""URL configuration. Every view here declares its roles (apps/core/access.py)."""

from __future__ import annotations

from django.urls import include, path

from controlplane.api import urlpatterns as api_urlpatterns

# Each app owns its pages under one prefix.
APP_PAGES = ["accounts", "audit", "inventory", "deid", "review", "datasets", "jobs"]

urlpatterns = [
    path("", include("apps.core.urls")),
    *[path(f"{app}/", include(f"apps.{app}.urls")) for app in APP_PAGES],
    path("api/", include(api_urlpatterns)),
]
