"""Reachability checks for /healthz: database, broker, channel layer."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import connection


def check_database() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return connection.vendor


def check_broker() -> str:
    from controlplane.celery import app

    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
        return (
            conn.transport_cls
            if isinstance(conn.transport_cls, str)
            else conn.transport.driver_type
        )


def check_channel_layer() -> str:
    layer = get_channel_layer()
    if layer is None:
        raise RuntimeError("no channel layer configured")
    channel = f"healthz.{uuid.uuid4().hex}"
    payload = {"type": "healthz.ping", "nonce": uuid.uuid4().hex}
    async_to_sync(layer.send)(channel, payload)
    received = async_to_sync(layer.receive)(channel)
    if received.get("nonce") != payload["nonce"]:
        raise RuntimeError("channel layer returned a different message")
    return type(layer).__name__


CHECKS: dict[str, Callable[[], str]] = {
    "database": check_database,
    "broker": check_broker,
    "channel_layer": check_channel_layer,
}


def run_checks() -> dict[str, dict[str, object]]:
    """Each check's status, backend and latency; errors are reported by type, not raised."""
    results: dict[str, dict[str, object]] = {}
    for name, check in CHECKS.items():
        started = time.perf_counter()
        try:
            backend = check()
            results[name] = {"ok": True, "backend": backend}
        except Exception as exc:  # any failure is the answer, not a crash
            results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:200]}
        results[name]["ms"] = round((time.perf_counter() - started) * 1000, 1)
    return results
