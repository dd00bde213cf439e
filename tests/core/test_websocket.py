"""The ASGI app routes WebSockets through Channels and applies the role declarations."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser

from apps.core.consumers import PingConsumer

pytestmark = pytest.mark.django_db(transaction=True)


def run(coro_fn, *args):
    """Run on a fresh thread: Playwright's session fixtures keep an event loop in this one."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(async_to_sync(coro_fn), *args).result(timeout=60)


async def talk(user):
    communicator = WebsocketCommunicator(PingConsumer.as_asgi(), "/ws/ping/")
    communicator.scope["user"] = user
    connected, code = await communicator.connect(timeout=10)
    reply = None
    if connected:
        await communicator.send_json_to({"n": 1})
        reply = await communicator.receive_json_from(timeout=10)
    await communicator.disconnect()
    return connected, code, reply


def test_a_signed_in_role_gets_an_echo(cast):
    connected, _, reply = run(talk, cast["auditor"])
    assert connected and reply == {"pong": {"n": 1}}


def test_anonymous_sockets_are_closed():
    connected, code, _ = run(talk, AnonymousUser())
    assert not connected and code == 4403
