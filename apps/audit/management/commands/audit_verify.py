"""``manage.py audit_verify``: check the whole audit chain and the stored daily digests."""

from __future__ import annotations

import sys
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.audit import services
from apps.core.context import bound_context


class Command(BaseCommand):
    help = (
        "Recompute every audit digest in sequence order, check the chain against the signed "
        "daily digests, and name the first broken sequence number (exit status 1)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--no-digests",
            action="store_true",
            help="check the chain only, not the stored daily digests",
        )
        parser.add_argument(
            "--no-save",
            action="store_true",
            help="do not record the result (e.g. on a read-only replica)",
        )
        parser.add_argument("--quiet", action="store_true", help="no progress output")

    def handle(self, *args: Any, **options: Any) -> None:
        started = time.perf_counter()
        show = not options["quiet"]

        def progress(done: int, total: int) -> None:
            if show and total:
                rate = done / max(time.perf_counter() - started, 1e-6)
                sys.stderr.write(f"\r  {done:,}/{total:,} events ({rate:,.0f}/s)")
                sys.stderr.flush()

        with bound_context():
            result = services.check_chain(
                with_digests=not options["no_digests"],
                save=not options["no_save"],
                progress=progress,
            )
        if show:
            sys.stderr.write("\n")
        if not result.ok:
            raise CommandError(f"{result.summary()} ({result.seconds:.2f}s)", returncode=1)
        self.stdout.write(self.style.SUCCESS(f"{result.summary()} ({result.seconds:.2f}s)"))
