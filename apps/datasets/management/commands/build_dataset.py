"""``manage.py build_dataset NAME --run 3 --run 4 [--target-shard-mb 512] [--as USER]``."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from apps.core.context import bound_context
from apps.datasets import services


class Command(BaseCommand):
    help = "Pack released de-id runs into a new immutable dataset version (with progress)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="dataset name (a slug); the version number is next")
        parser.add_argument(
            "--run",
            type=int,
            action="append",
            required=True,
            dest="runs",
            help="a released de-id run id (repeat for several)",
        )
        parser.add_argument("--target-shard-mb", type=float, default=512.0)
        parser.add_argument("--root", default=None, help="output folder (default DATASETS_ROOT)")
        parser.add_argument(
            "--as",
            dest="username",
            default=None,
            help="the user the audit trail names (default: system)",
        )

    def handle(self, *args: Any, **opts: Any) -> None:
        user = None
        if opts["username"]:
            user = get_user_model().objects.filter(username=opts["username"]).first()
            if user is None:
                raise CommandError(f"no user {opts['username']!r}")
        bar = tqdm(total=0, unit="sample", disable=opts["verbosity"] == 0, file=self.stderr)

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        with bound_context():
            try:
                version = services.build_version(
                    opts["name"],
                    opts["runs"],
                    target_shard_mb=opts["target_shard_mb"],
                    acting_user=user,
                    root=opts["root"],
                    progress=progress,
                )
            except services.DatasetError as exc:
                raise CommandError(str(exc)) from None
            finally:
                bar.close()
        if version.status != version.Status.READY:
            raise CommandError(f"{version.label} failed: {version.error}")
        self.stdout.write(
            f"{version.label} ready: {version.sample_count} samples in {version.shard_count} "
            f"shards, manifest sha256 {version.manifest_sha256} at {version.root}"
        )
