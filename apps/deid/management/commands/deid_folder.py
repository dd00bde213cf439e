"""`manage.py deid_folder IN_DIR OUT_DIR --report REPORT.json`: de-identify a whole tree."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from apps.deid import config
from apps.deid.folder import deid_folder, iter_folders
from apps.deid.services import profile_from_data


class Command(BaseCommand):
    help = (
        "De-identify every file under IN_DIR into OUT_DIR (same relative paths, pseudonymized "
        "where a path carries an identifier) and write a JSON report. Uses all cores."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("in_dir", type=Path)
        parser.add_argument("out_dir", type=Path)
        parser.add_argument("--report", type=Path, required=True)
        parser.add_argument("--profile", type=Path, help="a profile JSON file (default profile)")
        parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
        parser.add_argument("--no-ocr", action="store_true", help="skip burned-in text OCR")
        parser.add_argument(
            "--vault",
            action="store_true",
            help="keep the encrypted re-identification map (needs the database)",
        )
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args: Any, **opts: Any) -> None:
        in_dir: Path = opts["in_dir"]
        if not in_dir.is_dir():
            raise CommandError(f"{in_dir} is not a folder")
        try:
            data = json.loads(opts["profile"].read_text()) if opts["profile"] else None
            profile = profile_from_data(data)
        except (OSError, ValueError, TypeError) as exc:
            raise CommandError(f"profile: {exc}") from exc
        total = sum(len(rels) for rels in iter_folders(in_dir))
        bar = tqdm(total=total, unit="file", disable=opts["no_progress"], file=self.stderr._out)
        try:
            report = deid_folder(
                in_dir,
                opts["out_dir"],
                key_secret=config.project_key().secret,
                profile=profile,
                ocr=None if opts["no_ocr"] else config.ocr_mode(),
                workers=opts["workers"],
                vault=opts["vault"],
                progress=bar.update,
            )
        except (FileNotFoundError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        finally:
            bar.close()
        report_path: Path = opts["report"]
        report_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = report_path.with_name(report_path.name + ".tmp")
        tmp.write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")
        os.replace(tmp, report_path)
        s = report["summary"]
        self.stdout.write(
            f"{s['files']} files: {s['ok']} de-identified, {s['quarantined']} quarantined, "
            f"{s['error']} errors in {s['seconds']} s -> {report_path}"
        )
