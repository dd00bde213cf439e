"""``manage.py deid_run BATCH_ID [--profile FILE.json]``: a de-identification run, in-process.

Starts a run over an ingest batch (or continues one with ``--resume RUN_ID``) and processes it
in this process with a progress bar; Ctrl-C requests a cancel, which stops between files.
Prints ids and counts only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.core.context import bound_context
from apps.deid import services
from apps.deid.models import DeidRun
from apps.inventory.models import IngestBatch


class Command(BaseCommand):
    help = "De-identify an ingest batch in-process, with a progress bar."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("batch_id", type=int, nargs="?", help="ingest batch to process")
        parser.add_argument("--profile", type=Path, help="profile JSON (DeidProfile.to_dict)")
        parser.add_argument("--resume", type=int, metavar="RUN_ID", help="continue this run")
        parser.add_argument("--user", help="username recorded as the actor (default: system)")
        parser.add_argument("--no-ocr", action="store_true", help="switch burned-in text OCR off")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")
        parser.add_argument(
            "--workers",
            type=int,
            default=1,
            help="engine processes (default 1; e.g. the number of cores)",
        )

    def handle(self, *args: Any, **opts: Any) -> None:
        user = None
        if opts["user"]:
            user = get_user_model().objects.filter(username=opts["user"]).first()
            if user is None:
                raise CommandError(f"no user {opts['user']!r}")
        with bound_context():
            run = self._run(opts, user)
            total = run.files_total
            bar = None
            if not opts["no_progress"]:
                from tqdm import tqdm

                bar = tqdm(total=total, initial=run.files_done, unit="file", desc=f"run {run.pk}")
            counts: dict[str, int] = {}

            def tick(status: str) -> None:
                counts[status] = counts.get(status, 0) + 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(counts, refresh=False)

            ocr = None if opts["no_ocr"] else services.CONFIGURED_OCR
            try:
                outcome = services.process_run(
                    run.pk, progress=tick, ocr=ocr, workers=max(1, opts["workers"])
                )
            except KeyboardInterrupt:
                # process_run released the run, so the cancel is immediate; the files done so
                # far keep their rows and `--resume RUN_ID` continues from there.
                services.cancel_run(DeidRun.objects.get(pk=run.pk), acting_user=user)
                outcome = services.RunOutcome(run.pk, claimed=True, status="cancelled")
            finally:
                if bar is not None:
                    bar.close()
        run.refresh_from_db()
        if not outcome.claimed:
            raise CommandError(f"run {run.pk} is {outcome.status} and held by another worker")
        self.stdout.write(
            f"run {run.pk} {run.status}: {run.files_done}/{run.files_total} files: "
            f"{run.files_ok} ok, {run.files_quarantined} quarantined, {run.files_error} error; "
            f"output root {run.output_root}"
        )
        if run.files_done != run.files_ok + run.files_quarantined + run.files_error:
            raise CommandError("counts do not add up; inspect the run")

    def _run(self, opts: dict[str, Any], user: Any) -> DeidRun:
        if opts["resume"]:
            run = DeidRun.objects.filter(pk=opts["resume"]).first()
            if run is None:
                raise CommandError(f"no de-id run {opts['resume']}")
            if run.status in (DeidRun.Status.CANCELLED, DeidRun.Status.FAILED):
                services.resume_run(run, acting_user=user, enqueue=False)
            return run
        if opts["batch_id"] is None:
            raise CommandError("give a batch id, or --resume RUN_ID")
        batch = IngestBatch.objects.filter(pk=opts["batch_id"]).select_related("source").first()
        if batch is None:
            raise CommandError(f"no ingest batch {opts['batch_id']}")
        profile = None
        if opts["profile"]:
            try:
                data = json.loads(opts["profile"].read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise CommandError(f"cannot read profile {opts['profile']}: {exc}") from None
            try:
                profile = services.profile_from_data(data)
            except services.DeidServiceError as exc:
                raise CommandError(str(exc)) from None
        try:
            return services.start_run(batch, profile=profile, acting_user=user, enqueue=False)
        except services.DeidServiceError as exc:
            raise CommandError(str(exc)) from None
