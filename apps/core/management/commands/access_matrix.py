from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from apps.core.access import matrix_markdown


class Command(BaseCommand):
    help = "Print (or --write) the role x endpoint table generated from view declarations."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--write", metavar="PATH", help="write the table to this file")

    def handle(self, *args: Any, write: str | None, **options: Any) -> None:
        table = matrix_markdown()
        if write:
            Path(write).write_text(table, encoding="utf-8")
            self.stdout.write(f"wrote {write}")
        else:
            self.stdout.write(table)
