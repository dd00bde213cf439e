"""``manage.py scan_source <source>``: scan a source's raw root here, with a progress bar.

The same service the Celery task runs; a new IngestBatch is opened (audited) and scanned in
this process. Ctrl-C cancels the batch (files registered so far stay; a re-scan skips them).
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from apps.core.context import bound_context
from apps.inventory import services
from apps.inventory.models import DataSource


class Command(BaseCommand):
    help = "Scan a data source's raw root: register files with their hashes, then run data QA."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("source", help="the source's name, or its id")
        parser.add_argument("--user", help="username recorded as the actor (default: system)")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def handle(self, *args: Any, **options: Any) -> None:
        name = options["source"]
        source = DataSource.objects.filter(source=name).first()
        if source is None and name.isdigit():
            source = DataSource.objects.filter(pk=int(name)).first()
        if source is None:
            raise CommandError(f"no data source named {name!r}")
        actor = None
        if options["user"]:
            actor = get_user_model().objects.filter(username=options["user"]).first()
            if actor is None:
                raise CommandError(f"no user {options['user']!r}")
        with bound_context():
            try:
                batch = services.start_scan(source, acting_user=actor, enqueue=False)
            except services.ScanError as exc:
                raise CommandError(str(exc)) from None
            bar = tqdm(total=0, unit="file", disable=options["no_progress"], file=self.stderr._out)

            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.n = done
                bar.refresh()

            try:
                batch = services.scan_source(batch.pk, progress=progress)
            except KeyboardInterrupt:
                services.cancel_scan(batch, acting_user=actor)
                bar.close()
                raise CommandError(f"batch {batch.pk} cancelled") from None
            bar.close()
        self.stdout.write(
            f"batch {batch.pk}: {batch.status}; {batch.files_done}/{batch.files_total} files, "
            f"{batch.files_skipped} already registered, {batch.files_refused} refused, "
            f"{batch.bytes_total} new bytes"
        )
        if batch.status == batch.Status.FAILED:
            raise CommandError(batch.error)
