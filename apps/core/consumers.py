"""Base consumer: WebSockets follow the same role declarations as views."""

from __future__ import annotations

from typing import Any, ClassVar

from channels.generic.websocket import JsonWebsocketConsumer

from apps.core import access


class RoleConsumer(JsonWebsocketConsumer):
    """Closes the socket unless the session user holds a declared role and passed MFA."""

    allowed_roles: ClassVar[frozenset[str]] = frozenset()

    def connect(self) -> None:
        user = self.scope.get("user")
        if (
            user is None
            or not user.is_authenticated
            or not access.allowed(self.allowed_roles, access.roles_of(user))
        ):
            self.close(code=4403)
            return
        self.accept()


class PingConsumer(RoleConsumer):
    """Echo for checking the WebSocket path end to end."""

    allowed_roles = access.ANY_ROLE

    def receive_json(self, content: Any, **kwargs: Any) -> None:
        self.send_json({"pong": content})
