"""``manage.py inventory_csv export [FILE]`` / ``import FILE``: data_inventory.csv from the shell.

The same services as the pages: an import is all or nothing and audited; errors name lines.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.core.context import bound_context
from apps.inventory import csvfile, services


class Command(BaseCommand):
    help = "Export or import the data map as data_inventory.csv (seed 2.1 columns)."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        export = sub.add_parser("export", help="write the CSV to FILE, or to stdout")
        export.add_argument("file", nargs="?", help="output path (default: stdout)")
        imp = sub.add_parser("import", help="create or update sources from FILE")
        imp.add_argument("file", help="input path")
        imp.add_argument("--encoding", choices=csvfile.ENCODINGS, default="auto")
        imp.add_argument("--user", help="username recorded as the actor (default: system)")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["action"] == "export":
            data = services.export_inventory_csv()
            if options["file"]:
                Path(options["file"]).write_bytes(data)
            else:
                sys.stdout.buffer.write(data)
            return
        actor = None
        if options["user"]:
            actor = get_user_model().objects.filter(username=options["user"]).first()
            if actor is None:
                raise CommandError(f"no user {options['user']!r}")
        path = Path(options["file"])
        if not path.is_file():
            raise CommandError(f"no file {str(path)!r}")
        with bound_context(), path.open("rb") as fh:
            try:
                result = services.import_inventory_csv(
                    fh, acting_user=actor, encoding=options["encoding"]
                )
            except csvfile.InventoryCSVError as exc:
                for error in exc.errors:
                    self.stderr.write(str(error))
                raise CommandError(f"refused: {exc.total} problem(s); nothing imported") from None
        self.stdout.write(
            f"imported: {len(result.created)} added, {len(result.updated)} updated, "
            f"{result.unchanged} unchanged"
        )
