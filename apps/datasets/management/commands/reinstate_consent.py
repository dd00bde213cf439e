"""``manage.py reinstate_consent PSEUDONYM --reference CASE``: end a patient's consent
withdrawal (they consented again, or it named the wrong patient); later versions pack them
again. Prints the patient's report afterwards."""

from __future__ import annotations

from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.core.context import bound_context
from apps.datasets import services


class Command(BaseCommand):
    help = "Record a patient's renewed consent; their withdrawal stops applying."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("pseudonym", help="the patient's pseudonym (see manage.py lineage)")
        parser.add_argument(
            "--reference", required=True, help="the new consent's (or correction's) case number"
        )

    def handle(self, *args: Any, **opts: Any) -> None:
        with bound_context():
            try:
                row = services.reinstate_consent(
                    opts["pseudonym"], reference=opts["reference"], acting_user=None
                )
            except services.DatasetError as exc:
                raise CommandError(str(exc)) from None
        when = row.recorded_at.isoformat(timespec="seconds")
        pseudonym = row.withdrawal.patient_pseudonym
        self.stdout.write(f"patient {pseudonym}: consent reinstated at {when}")
        call_command("lineage", patient=pseudonym, stdout=self.stdout._out)
