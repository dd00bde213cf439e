"""``manage.py train_tokenizer ID [--vocab-size N] [--max-mb MB]`` (or ``NAME --number N``):
train a byte-level BPE tokenizer on a ready version's text here and now, with a progress bar
of merges, and print the file to give the launch form (docs/datasets.md "Tokenizers")."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from apps.core.context import bound_context
from apps.datasets import services, tokenizers


class Command(BaseCommand):
    help = "Train a tokenizer on a dataset version's text; prints its file and fingerprint."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("version", help="version id, or dataset name with --number")
        parser.add_argument("--number", dest="number", type=int, default=None)
        parser.add_argument("--vocab-size", dest="vocab_size", type=int, default=32_000)
        parser.add_argument("--max-mb", dest="max_mb", type=float, default=256.0)

    def handle(self, *args: Any, **opts: Any) -> None:
        ref = opts["version"]
        version = services.version_by_ref(ref, opts["number"])
        if version is None:
            raise CommandError(f"no dataset version {ref!r}")
        bar = tqdm(desc="merges", unit="merge", disable=opts["verbosity"] == 0, file=self.stderr)

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        with bound_context():
            try:
                row = tokenizers.train_tokenizer(
                    version,
                    vocab_size=opts["vocab_size"],
                    max_mb=opts["max_mb"],
                    acting_user=None,
                    progress=progress,
                )
            except services.DatasetError as exc:
                raise CommandError(str(exc)) from None
            finally:
                bar.close()
        self.stdout.write(
            f"{version.label}: tokenizer {row.pk}, {row.ids} ids, "
            f"fingerprint {row.fingerprint[:12]}: {row.path}"
        )
