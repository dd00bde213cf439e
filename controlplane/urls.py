"""URL configuration. Every view here declares its roles (apps/core/access.py)."""

from __future__ import annotations

from django.urls import include, path

from controlplane.api import urlpatterns as api_urlpatterns

urlpatterns = [
    path("", include("apps.core.urls")),
    path("accounts/", include("apps.accounts.urls")),
    path("api/", include(api_urlpatterns)),
]
try:  # the audit app lands its pages in parallel with this file
    import apps.audit.urls  # noqa: F401

    urlpatterns.append(path("audit/", include("apps.audit.urls")))
except ImportError:
    pass
