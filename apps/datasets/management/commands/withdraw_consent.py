"""``manage.py withdraw_consent PSEUDONYM [--reference CASE]``: record a patient's consent
withdrawal (no later version packs their data), then print where their data already went."""

from __future__ import annotations

from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.core.context import bound_context
from apps.datasets import services


class Command(BaseCommand):
    help = "Record that a patient withdrew consent; later dataset versions leave them out."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("pseudonym", help="the patient's pseudonym (see manage.py lineage)")
        parser.add_argument("--reference", default="", help="the request's case number")

    def handle(self, *args: Any, **opts: Any) -> None:
        with bound_context():
            try:
                row, created = services.withdraw_consent(
                    opts["pseudonym"], reference=opts["reference"], acting_user=None
                )
            except services.DatasetError as exc:
                raise CommandError(str(exc)) from None
        when = row.recorded_at.isoformat(timespec="seconds")
        self.stdout.write(
            f"patient {row.patient_pseudonym}: consent withdrawal recorded at {when}"
            if created
            else f"patient {row.patient_pseudonym}: already withdrawn at {when}"
        )
        call_command("lineage", patient=row.patient_pseudonym, stdout=self.stdout._out)
