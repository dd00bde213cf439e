"""The ASGI app routes WebSockets through Channels and applies the role declarations."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser

from apps.core.consumers import PingConsumer

pytestmark = pytest.mark.django_db(transaction=True)


async def talk(user):
    communicator = WebsocketCommunicator(PingConsumer.as_asgi(), "/ws/ping/")
    communicator.scope["user"] = user
    connected, code = await communicator.connect()
    reply = None
    if connected:
        await communicator.send_json_to({"n": 1})
        reply = await communicator.receive_json_from()
    await communicator.disconnect()
    return connected, code, reply


def test_a_signed_in_role_gets_an_echo(cast):
    connected, _, reply = async_to_sync(talk)(cast["auditor"])
    assert connected and reply == {"pong": {"n": 1}}


def test_anonymous_sockets_are_closed():
    connected, code, _ = async_to_sync(talk)(AnonymousUser())
    assert not connected and code == 4403
