"""`manage.py demo`: demo users for every role (TOTP pre-enrolled), then the main job.

The main job runs through the real Celery worker: today it verifies the audit chain and
seals yesterday's digest; each capability that lands extends it (synthetic data through
de-identification, review, release and training).

The passwords and TOTP secrets are generated once into var/demo-logins.json and printed
each run, so a trial keeps working across restarts. Never run this on a real site.
"""

from __future__ import annotations

import base64
import json
import secrets
import string
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django_otp.plugins.otp_totp.models import TOTPDevice
from tqdm import tqdm

from apps.accounts import services
from apps.core.context import bound_context
from apps.core.roles import ALL_ROLES, ROLE_LABELS
from apps.demo import synthetic


def _password() -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(14))


DEMO_SOURCE = "Demo hospital (synthetic)"


def _password() -> str:
    """Letters and digits only, so it can be typed and pasted without quoting."""
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(14))


def fields(done: str, total: str) -> Callable[[Any], tuple[int, int | None]]:
    """Progress read from two fields of the row the worker updates."""
    return lambda row: (getattr(row, done), getattr(row, total) or None)


class Command(BaseCommand):
    help = "Create demo users for every role and print the logins (demo only)."
    review_url = dataset_url = run_url = ""

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--url", default="http://127.0.0.1:8000")

    def handle(self, *args: Any, url: str, **options: Any) -> None:
        if not settings.DEBUG:
            raise CommandError("The demo runs only with DEBUG=1 (it creates known logins).")
        store = Path(settings.VAR_DIR) / "demo-logins.json"
        logins: dict[str, dict[str, str]] = json.loads(store.read_text()) if store.exists() else {}
        services.ensure_role_groups()
        with bound_context() as ctx, transaction.atomic():
            for role in sorted(ALL_ROLES):
                username = f"demo_{role}"
                entry = logins.setdefault(role, {"username": username, "password": _password()})
                User = get_user_model()
                user = User.objects.filter(username=username).first()
                if user is None:
                    user = services.create_user(
                        username, roles={role}, acting_user=None, password=entry["password"]
                    )
                device = TOTPDevice.objects.filter(user=user, confirmed=True).first()
                if device is None:
                    device = TOTPDevice.objects.create(user=user, name="demo", confirmed=True)
                entry["totp_secret"] = base64.b32encode(device.bin_key).decode().rstrip("=")
            store.write_text(json.dumps(logins, indent=2))
            store.chmod(0o600)
        self.run_main_job()
        self.stdout.write(f"\nMedCtl demo is up: {url}/  (request {ctx.request_id})\n")
        self.stdout.write(f"{'role':<22} {'username':<26} {'password':<14} TOTP secret\n")
        for role in sorted(ALL_ROLES):
            e = logins[role]
            mfa = e["totp_secret"] if role in settings.MFA_REQUIRED_ROLES else "(optional)"
            self.stdout.write(
                f"{ROLE_LABELS[role]!s:<22} {e['username']:<26} {e['password']:<14} {mfa}\n"
            )
        self.stdout.write(
            f"Next: sign in as demo_clinician_reviewer and review {url}{self.review_url} "
            "(keys: p pass, f fail, ? help); the data steward releases the run once the gate "
            "passes.\n"
        )
        if self.run_url:
            self.stdout.write(
                f"Then: the released dataset {url}{self.dataset_url} (lineage, verify, tokenizers) "
                f"and the training run {url}{self.run_url} (attempts, script, log, checkpoints, "
                "metrics), "
                "as demo_data_steward and demo_operator.\n"
                f"Privacy: {url}/deid/reveal/#lookup turns a hospital patient ID (the cohort's are "
                f"MRN100000 to MRN{100000 + synthetic.COHORT_SIZE - 1}) into its pseudonym, and "
                f"{url}/datasets/lineage/ shows where that patient's data went and records a "
                "consent withdrawal, as demo_privacy_officer.\n"
            )
        self.stdout.write(
            "Add a TOTP secret to any authenticator app (or `oathtool --totp -b "
            "SECRET`) for the roles that require it.\n"
        )

    def run_main_job(self) -> None:
        """Synthetic cohort → scan → de-identification, each step on the real worker."""
        from apps.deid.models import DeidRun
        from apps.inventory import services as inventory
        from apps.inventory.models import DataSource, IngestBatch

        steward = get_user_model().objects.get(username="demo_data_steward")
        raw_root = Path(settings.VAR_DIR) / "demo-data" / "raw"
        files = synthetic.write_cohort(raw_root)
        self.stdout.write(f"main job: synthetic cohort of {files} files with planted fake PHI")

        source = DataSource.objects.filter(source=DEMO_SOURCE).first()
        if source is None:
            with bound_context():
                source = inventory.create_source(
                    {
                        "source": DEMO_SOURCE,
                        "type": "MIXED",
                        "owner": "Radiology (demo)",
                        "consent_status": "waived",
                        "raw_root": str(raw_root),
                        "deid_root": str(Path(settings.VAR_DIR) / "demo-data" / "deid"),
                        "notes": "synthetic demo cohort",
                    },
                    acting_user=steward,
                )
        batch = source.batches.filter(status=IngestBatch.Status.DONE).order_by("-pk").first()
        if batch is None:
            with bound_context():
                batch = inventory.start_scan(source, acting_user=steward)
            batch = self.wait(
                IngestBatch,
                batch.pk,
                "scan",
                fields("files_done", "files_total"),
                done={"done", "failed", "cancelled"},
            )
        # The first finished run is the one left for a person to review (the second is the
        # scripted reviewer's: flow.py).
        run = batch.deid_runs.filter(status=DeidRun.Status.DONE).order_by("pk").first()
        run = run or self.deidentify(batch, steward, "de-identify")
        self.stdout.write(
            f"de-identification run {run.pk}: {run.files_ok} de-identified, "
            f"{run.files_quarantined} quarantined, {run.files_error} errors"
        )
        review = run.review_batches.order_by("-pk").first()
        if review is None:
            from apps.review import services as review_services

            with bound_context():
                review = review_services.create_batch(run, acting_user=steward, fraction=0.05)
        self.review_url = f"/review/batches/{review.pk}/"
        self.stdout.write(
            f"review batch {review.pk}: {review.items.count()} items sampled (seed {review.seed})"
        )
        self.release_and_train(batch, first_run=run, steward=steward)
        self.verify_audit_chain()

    def release_and_train(self, batch: Any, *, first_run: Any, steward: Any) -> None:
        """A second de-id run of the scan, reviewed by the scripted reviewer, released, packed,
        verified and trained on (apps/demo/flow.py)."""
        from apps.datasets.models import DatasetTokenizer, DatasetVersion, VerifyCheck
        from apps.deid.models import DeidRun
        from apps.demo import flow
        from apps.jobs.models import TrainingRun

        users = get_user_model().objects
        clinician = users.get(username="demo_clinician_reviewer")
        operator = users.get(username="demo_operator")
        run = (
            batch.deid_runs.filter(status=DeidRun.Status.DONE)
            .exclude(pk=first_run.pk)
            .order_by("-pk")
            .first()
        )
        run = run or self.deidentify(batch, steward, "de-identify (2nd run)")
        review = flow.review_batch(run, steward)
        already = run.released_at is not None
        passed, failed = flow.scripted_review(review, clinician)
        if passed + failed:
            self.stdout.write(
                f"review batch {review.pk} of run {run.pk}: the scripted reviewer judged "
                f"{passed + failed} files against the planted PHI ({passed} pass, {failed} fail)"
            )
        reasons = flow.release(run, review, steward)
        if reasons:
            self.stdout.write("release gate closed: " + " ".join(reasons))
            return
        self.stdout.write(
            f"de-identification run {run.pk} "
            + ("was released earlier" if already else "released through the gate")
        )
        version = flow.dataset_version(run, steward)
        version = self.wait(
            DatasetVersion,
            version.pk,
            "pack",
            fields("progress_done", "progress_total"),
            done={"ready", "failed"},
            ok="ready",
            unit="sample",
        )
        self.stdout.write(
            f"dataset {version.label}: {version.sample_count} samples in "
            f"{version.shard_count} shards, manifest {version.manifest_sha256[:12]}…"
        )
        self.dataset_url = f"/datasets/{version.pk}/"
        with bound_context():
            check = flow.datasets.request_verify(version, acting_user=steward)
        check = self.wait(
            VerifyCheck,
            check.pk,
            "verify",
            fields("bytes_done", "bytes_total"),
            done={"done", "failed"},
            unit="B",
        )
        self.stdout.write(
            f"verify: {check.files_checked} files, "
            + ("all match the manifest" if check.ok else f"{len(check.problems)} differences")
        )
        row = flow.tokenizer_for(version, operator)
        row = self.wait(
            DatasetTokenizer,
            row.pk,
            "tokenizer",
            fields("merges_done", "merges_total"),
            done={"ready", "failed"},
            ok="ready",
            unit="merge",
        )
        self.stdout.write(
            f"tokenizer trained on the version's text: {row.ids} ids, "
            f"fingerprint {row.fingerprint[:12]}"
        )
        training = flow.training_run(version, operator, Path(row.path))
        self.run_url = f"/jobs/runs/{training.pk}/"
        training = self.wait(
            TrainingRun,
            training.pk,
            "train (tiny, CPU)",
            lambda row: (flow.last_step(row), flow.RUN_STEPS),
            done={"completed", "failed", "cancelled", "lost"},
            ok="completed",
            status_field="state",
            unit="step",
            timeout=900,
        )
        from apps.jobs import services as jobs

        losses = flow.losses(training)
        checkpoints = jobs.run_checkpoints(training)
        self.stdout.write(
            f"training run {training.pk}: {training.state} after {len(losses)} steps, loss "
            f"{losses[0]:.3f} → {losses[-1]:.3f}, {len(checkpoints)} checkpoint(s)"
            if losses
            else f"training run {training.pk}: {training.state}, no metrics written"
        )

    def deidentify(self, batch: Any, steward: Any, label: str) -> Any:
        """A de-identification run of ``batch`` on the worker, followed to its end."""
        from apps.deid import services as deid
        from apps.deid.models import DeidRun

        with bound_context():
            run = deid.start_run(batch, acting_user=steward)
        return self.wait(
            DeidRun,
            run.pk,
            label,
            fields("files_done", "files_total"),
            done={"done", "failed", "cancelled"},
        )

    def wait(
        self,
        model: Any,
        pk: int,
        label: str,
        progress: Callable[[Any], tuple[int, int | None]] | None,
        *,
        done: set[str],
        ok: str = "done",
        status_field: str = "status",
        unit: str = "file",
        timeout: float = 600,
    ) -> Any:
        """Follow a row the worker updates, with a progress bar, until its status is final."""
        deadline = time.monotonic() + timeout
        scale = unit == "B"
        with tqdm(desc=label, unit=unit, unit_scale=scale, file=self.stdout._out) as bar:
            while time.monotonic() < deadline:
                row = model.objects.get(pk=pk)
                status = getattr(row, status_field)
                if progress is not None:
                    bar.n, bar.total = progress(row)
                    if bar.total and bar.n >= bar.total and status not in done:
                        # The work is counted; the rest is the last write and the exit.
                        bar.set_postfix_str("finishing", refresh=False)
                bar.refresh()
                if status in done:
                    if status != ok:
                        why = getattr(row, "error", "") or getattr(row, "reason", "")
                        raise CommandError(f"{label} ended {status}: {why}")
                    return row
                time.sleep(0.5)
        raise CommandError(f"{label} did not finish in {timeout:.0f} s; see var/log/worker.log")

    def verify_audit_chain(self) -> None:
        """Verify the audit chain through the worker and wait for its result row."""
        from apps.audit.models import ChainCheck
        from apps.audit.tasks import verify_chain

        before = ChainCheck.objects.count()
        verify_chain.delay()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            check = ChainCheck.objects.order_by("-pk").first()
            if ChainCheck.objects.count() > before and check is not None:
                verdict = "intact" if check.ok else f"BROKEN at seq {check.broken_seq}"
                self.stdout.write(f"audit chain: {check.events_checked} events, {verdict}")
                return
            time.sleep(0.5)
        raise CommandError("the worker did not verify the audit chain in 120 s")
