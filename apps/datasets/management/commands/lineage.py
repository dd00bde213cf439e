"""``manage.py lineage``: where raw data went, or what data is behind a training run.

    manage.py lineage --patient P-7F3A   # consent withdrawal: every version, run, checkpoint
    manage.py lineage --raw-file 1234    # or --sha256 <hex>: the same for one raw file
    manage.py lineage --run 5            # every raw file behind training run 5
    manage.py lineage --consumer checkpoints.checkpoint 42-step-100
    ... --csv out.csv                    # every row (ids and hashes only); "-" for stdout

A summary goes to stdout (or stderr with ``--csv -``). Exits 0 whether or not the data reached
anything; the summary says which. Reads only, like the lineage pages.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from contextlib import ExitStack
from typing import Any, TextIO

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from apps.datasets import registry, reports, services


class Command(BaseCommand):
    help = "Where a patient's or raw file's data went, or every raw file behind a training run."

    def add_arguments(self, parser: CommandParser) -> None:
        what = parser.add_mutually_exclusive_group(required=True)
        what.add_argument("--patient", metavar="PSEUDONYM", help="a patient pseudonym")
        what.add_argument("--raw-file", metavar="ID", type=int, help="a raw file id")
        what.add_argument("--sha256", metavar="HEX", help="a raw file's SHA-256")
        what.add_argument("--run", metavar="ID", type=int, help="a training run id")
        what.add_argument(
            "--consumer",
            nargs=2,
            metavar=("KIND", "ID"),
            help="any consumer, e.g. jobs.trainingrun 5",
        )
        parser.add_argument("--csv", metavar="FILE", help='write every row as CSV ("-": stdout)')

    def handle(self, *args: Any, **opts: Any) -> None:
        self.verbosity = opts["verbosity"]
        with ExitStack() as stack:
            out: TextIO | None = None
            if opts["csv"] == "-":
                out, summary = self.stdout, self.stderr
            elif opts["csv"]:
                try:
                    out = stack.enter_context(open(opts["csv"], "w", newline="", encoding="utf-8"))
                except OSError as exc:
                    raise CommandError(f"cannot write {opts['csv']}: {exc.strerror}") from None
                summary = self.stdout
            else:
                summary = self.stdout
            if opts["run"] is not None or opts["consumer"]:
                kind, consumer_id = opts["consumer"] or ("jobs.trainingrun", str(opts["run"]))
                self._consumer(kind, consumer_id, summary, out)
            else:
                self._reach(opts, summary, out)

    def _reach(self, opts: dict[str, Any], summary: Any, out: TextIO | None) -> None:
        if opts["patient"]:
            pseudonym = opts["patient"].strip()
            if not pseudonym or len(pseudonym) > 80:
                raise CommandError("a pseudonym is 1 to 80 characters")
            found = reports.search(pseudonym, "patient")
            subject = f"patient {pseudonym}"
        else:
            ref = str(opts["raw_file"]) if opts["raw_file"] is not None else opts["sha256"]
            if not services.find_raw_files(ref).exists():
                raise CommandError(f"no raw file {ref}")
            found = reports.search(ref, "raw")
            subject = f"raw file {ref}"
        if not found or not any(r.versions for r in found):
            summary.write(f"{subject}: in no dataset version")
        for report in found:
            for w in report.consent_history:
                when = w.recorded_at.isoformat(timespec="seconds")
                summary.write(f"{report.subject}: consent withdrawn at {when}")
                if hasattr(w, "reinstatement"):
                    again = w.reinstatement.recorded_at.isoformat(timespec="seconds")
                    summary.write(f"{report.subject}: consent reinstated at {again}")
            if report.patient and report.unlinked_files:
                summary.write(
                    f"{_n(report.unlinked_files, 'packed file')} name no patient: "
                    "no patient search reaches them"
                )
        for report in found:
            for v in report.versions:
                summary.write(
                    f"{report.subject}: {v.version.label} (id {v.version.pk}): "
                    f"{_n(v.files, 'file')} in {_n(len(v.samples), 'sample')}"
                )
            for use in report.uses:
                label = registry.consumer_kind(use.consumer_kind).label
                summary.write(
                    f"{report.subject}: read by {label} {use.consumer_id} "
                    f"({use.consumer_kind}) through {use.version.label}"
                )
        if out is not None:
            _write(out, reports.REACH_HEADER, reports.reach_rows(found))

    def _consumer(self, kind: str, consumer_id: str, summary: Any, out: TextIO | None) -> None:
        if not registry.KIND_PATTERN.match(kind) or not registry.ID_PATTERN.match(consumer_id):
            raise CommandError("a consumer is KIND ID, e.g. jobs.trainingrun 5")
        versions = services.consumer_versions(kind, consumer_id)
        label = registry.consumer_kind(kind).label
        if not versions:
            raise CommandError(f"{label} {consumer_id} read no dataset version")
        for v in versions:
            summary.write(
                f"{label} {consumer_id}: {v.label} (id {v.pk}): "
                f"{_n(v.file_count, 'file')} in {_n(v.sample_count, 'sample')}"
            )
        if out is not None:
            rows = reports.consumer_rows(kind, consumer_id)
            if out is not self.stdout:  # a file: the rows can be millions; show how far
                total = sum(v.file_count for v in versions)
                rows = tqdm(
                    rows,
                    total=total,
                    unit="row",
                    desc="csv",
                    file=self.stderr,
                    disable=self.verbosity == 0,
                )
            _write(out, reports.CONSUMER_HEADER, rows)


def _write(out: Any, header: Iterable[str], rows: Iterable[list[str | int]]) -> None:
    # A file, or Django's OutputWrapper (which adds no newline to a row ending in one).
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
