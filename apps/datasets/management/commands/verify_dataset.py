"""``manage.py verify_dataset ID`` or ``manage.py verify_dataset NAME --number N``."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from apps.core.context import bound_context
from apps.datasets import services


class Command(BaseCommand):
    help = "Re-hash a dataset version against its manifest; exits non-zero on any difference."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("version", help="version id, or dataset name with --number")
        parser.add_argument("--number", dest="number", type=int, default=None)

    def handle(self, *args: Any, **opts: Any) -> None:
        ref = opts["version"]
        version = services.version_by_ref(ref, opts["number"])
        if version is None:
            raise CommandError(f"no dataset version {ref!r}")
        bar = tqdm(
            total=0,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            disable=opts["verbosity"] == 0,
            file=self.stderr,
        )

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        with bound_context():
            try:
                report = services.verify_version(version, progress=progress)
            except services.DatasetError as exc:
                raise CommandError(str(exc)) from None
            finally:
                bar.close()
        if not report.ok:
            for p in report.problems:
                self.stderr.write(f"{p['file']}: {p['problem']}")
            raise CommandError(f"{version.label}: {report.summary()}")
        self.stdout.write(f"{version.label}: {report.summary()}")
