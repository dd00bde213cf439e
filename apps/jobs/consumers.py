"""Live run updates over WebSocket: state changes and the log tail of the current attempt.

The reconciler pushes ``run.state`` and ``log.tail`` messages to the group ``jobs.run.<pk>``
(services.run_group) after its transaction commits; each watcher also gets the current tail
when it connects, so a page opened mid-run is never blank.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync

from apps.core.consumers import RoleConsumer
from apps.jobs.access import READ_ROLES


class RunConsumer(RoleConsumer):
    """``ws/jobs/runs/<pk>/``: read roles only; unknown runs are closed with 4404."""

    allowed_roles = READ_ROLES

    accepted = False

    def accept(self, *args: Any, **kwargs: Any) -> None:
        super().accept(*args, **kwargs)
        self.accepted = True

    def connect(self) -> None:
        super().connect()  # accepts, or closes with 4403 for a role that may not read runs
        if not self.accepted:
            return
        from apps.jobs import services
        from apps.jobs.models import TrainingRun

        run_id = int(self.scope["url_route"]["kwargs"]["pk"])
        run = TrainingRun.objects.filter(pk=run_id).first()
        if run is None:
            self.close(code=4404)
            return
        self.run_id = run_id
        services.touch_watch(run_id)
        self.group = services.run_group(run_id)
        async_to_sync(self.channel_layer.group_add)(self.group, self.channel_name)
        attempt = services.current_attempt(run)
        self.send_json({"type": "run.state", "state": run.state})
        if attempt is not None:
            self.send_json(
                {"type": "log.tail", "attempt": attempt.number, "text": services.log_tail(attempt)}
            )

    def disconnect(self, code: int) -> None:
        group = getattr(self, "group", None)
        if group:
            async_to_sync(self.channel_layer.group_discard)(group, self.channel_name)

    def receive_json(self, content: Any, **kwargs: Any) -> None:
        """The page pings every 30 s while it is open: keep the run marked as watched."""
        if (
            isinstance(content, dict)
            and content.get("type") == "ping"
            and getattr(self, "run_id", None)
        ):
            from apps.jobs import services

            services.touch_watch(self.run_id)

    def run_state(self, event: dict[str, Any]) -> None:
        self.send_json({k: v for k, v in event.items()})

    def log_tail(self, event: dict[str, Any]) -> None:
        self.send_json({k: v for k, v in event.items()})
