"""URL configuration. Every view here declares its roles (apps/core/access.py)."""

from __future__ import annotations

from django.urls import include, path

from controlplane.api import urlpatterns as api_urlpatterns

urlpatterns = [
    path("", include("apps.core.urls")),
    path("accounts/", include("apps.accounts.urls")),
    path("audit/", include("apps.audit.urls")),
    path("api/", include(api_urlpatterns)),
]
