"""WebSocket routes; each app adds its consumers here (live progress, log tails)."""

from __future__ import annotations

from django.urls import path

from apps.core.consumers import PingConsumer
from apps.jobs.consumers import RunConsumer

websocket_urlpatterns = [
    path("ws/ping/", PingConsumer.as_asgi()),
    path("ws/jobs/runs/<int:pk>/", RunConsumer.as_asgi()),
]
