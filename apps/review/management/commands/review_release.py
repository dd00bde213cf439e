"""``manage.py review_release <run_id> --user <name>``: release a de-id run through the gate."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.core.context import bound_context
from apps.deid.models import DeidRun
from apps.review import services


class Command(BaseCommand):
    help = (
        "Release a de-identification run for dataset packing. Refused (exit status 1, every "
        "reason listed) unless its review batch passes the gate: all items reviewed, no "
        "unresolved finding, and the pass rate's lower bound at or above the threshold."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("run_id", type=int)
        parser.add_argument(
            "--user",
            required=True,
            help="the data steward or privacy officer releasing it (recorded in the audit trail)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            user = get_user_model().objects.get(username=options["user"], is_active=True)
        except get_user_model().DoesNotExist:
            raise CommandError(f"no active user {options['user']!r}") from None
        try:
            run = DeidRun.objects.get(pk=options["run_id"])
        except DeidRun.DoesNotExist:
            raise CommandError(f"no de-id run {options['run_id']}") from None
        with bound_context():
            try:
                run = services.release_run(run, acting_user=user)
            except services.GateClosed as exc:
                raise CommandError(
                    "release refused by the review gate:\n  - " + "\n  - ".join(exc.reasons)
                ) from None
            except PermissionError as exc:
                raise CommandError(str(exc)) from None
        self.stdout.write(f"de-id run {run.pk} released at {run.released_at.isoformat()}")
