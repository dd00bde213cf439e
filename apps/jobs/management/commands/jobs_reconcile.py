"""``manage.py jobs_reconcile [--every SECONDS]``: one reconcile pass, or a loop without beat."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand

from apps.core.context import bound_context
from apps.jobs import services


class Command(BaseCommand):
    help = "Bring training-run attempts in line with the scheduler (what Celery beat runs)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--every", type=float, default=0, help="repeat every N seconds (0 = once)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        while True:
            with bound_context():
                result = services.reconcile()
            self.stdout.write(
                f"polled {result.polled}, changed {result.changed}, lost {result.lost}, "
                f"resubmitted {result.resubmitted}"
                + (f", errors: {'; '.join(result.errors)}" if result.errors else "")
            )
            if not options["every"]:
                return
            time.sleep(options["every"])
