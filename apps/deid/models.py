"""De-identification runs over an ingest batch: one result row per raw file, nothing lost.

A file the engine cannot de-identify safely is quarantined with a PHI-free reason and is
never released; it is never dropped either (its row stays, pointing at the raw file). The
pure engine is ``apps.deid.engine``; this app runs it over batches and keeps the results.
"""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _

from apps.core.models import TrackedWork
from apps.inventory.models import IngestBatch, RawFile


class ProfileVersion(models.Model):
    """One saved version of a named de-identification profile (``DeidProfile.to_dict``).

    Versions are append-only: saving a changed profile adds ``version + 1``; a run records the
    version it used and its fingerprint, so every output names the exact settings behind it.
    """

    name = models.SlugField(max_length=60)
    version = models.PositiveIntegerField()
    data = models.JSONField()
    fingerprint = models.CharField(max_length=120)
    note = models.CharField(max_length=300, blank=True)
    created_by_id = models.BigIntegerField(null=True, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["name", "version"], name="deid_profile_version_once")
        ]

    def __str__(self) -> str:
        return f"{self.name} v{self.version}"


class DeidRun(TrackedWork):
    """One pass of the engine with one profile over one ingest batch.

    Resumable and idempotent: re-running skips files whose result for the same input hash
    and profile fingerprint is already stored. ``released_at`` is set only by
    ``apps.review.services`` when the review gate passes; datasets pack only released runs.
    """

    batch = models.ForeignKey(IngestBatch, on_delete=models.PROTECT, related_name="deid_runs")
    profile = models.JSONField(default=dict)  # the engine profile's canonical settings
    profile_fingerprint = models.CharField(max_length=120, blank=True)
    # The saved version the profile came from (None for an ad-hoc profile).
    profile_version = models.ForeignKey(
        ProfileVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="runs"
    )
    # Findings by type, files by kind and the flagged count, totalled when the run stops so
    # the run page never re-reads millions of result rows.
    summary = models.JSONField(default=dict, blank=True)
    # The OCR engine the workers ran with ("auto", "off", "custom"; "mixed" when chunks
    # differed): outputs are reused across runs only when it matches.
    ocr_mode = models.CharField(max_length=10, blank=True)
    # ProjectKey.fingerprint(): outputs of two runs are interchangeable only under one key.
    key_fingerprint = models.CharField(max_length=32, blank=True)
    files_total = models.IntegerField(default=0)
    files_done = models.IntegerField(default=0)
    files_ok = models.IntegerField(default=0)
    files_quarantined = models.IntegerField(default=0)
    files_error = models.IntegerField(default=0)
    output_root = models.CharField(max_length=500, blank=True)
    cancel_requested = models.BooleanField(default=False)
    released_at = models.DateTimeField(null=True, blank=True)
    released_by_id = models.BigIntegerField(null=True, blank=True)
    # Touched after every file by the worker holding the run; a RUNNING run whose heartbeat
    # is stale (or cleared between chunks) may be claimed by the next worker (resume).
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # The raw file the (sequential) worker holds right now. A worker that dies twice on the
    # same file (out of memory, a crash in a library) must not stall the run forever: the
    # second takeover records that file as an error and goes on.
    inflight_raw_file_id = models.BigIntegerField(null=True, blank=True)
    suspect_raw_file_id = models.BigIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"de-id run {self.pk}"

    @property
    def files_remaining(self) -> int:
        return max(self.files_total - self.files_done, 0)

    @property
    def percent(self) -> int:
        return int(100 * self.files_done / self.files_total) if self.files_total else 0

    @property
    def is_active(self) -> bool:
        return self.status in (self.Status.PENDING, self.Status.RUNNING)

    @property
    def is_released(self) -> bool:
        return self.released_at is not None


class DeidFileResult(models.Model):
    """The engine's verdict on one raw file in one run (ids, hashes and counts only)."""

    class Status(models.TextChoices):
        OK = "ok", _("De-identified")
        QUARANTINED = "quarantined", _("Quarantined")
        ERROR = "error", _("Error")

    run = models.ForeignKey(DeidRun, on_delete=models.PROTECT, related_name="results")
    raw_file = models.ForeignKey(RawFile, on_delete=models.PROTECT, related_name="deid_results")
    status = models.CharField(max_length=12, choices=Status.choices)
    reason = models.CharField(max_length=300, blank=True)  # PHI-free code from the engine
    kind = models.CharField(max_length=20)  # dicom, text, edf, wfdb_header, ...
    modality = models.CharField(max_length=16, blank=True)
    input_sha256 = models.CharField(max_length=64)
    # Relative to the run's output_root; pseudonymized path components.
    output_relpath = models.CharField(max_length=1000, blank=True)
    output_sha256 = models.CharField(max_length=64, blank=True)
    extra_outputs = models.JSONField(default=dict, blank=True)  # suffix -> sha256
    findings = models.JSONField(default=dict, blank=True)  # PHI type -> count
    actions = models.JSONField(default=dict, blank=True)  # action -> count
    # Text masks in output coordinates: [{"type", "start", "end"}] (never the original text).
    spans = models.JSONField(default=list, blank=True)
    patient_pseudonym = models.CharField(max_length=80, blank=True, db_index=True)
    study_key = models.CharField(max_length=64, blank=True, db_index=True)
    # Borderline results the review sample must include (OCR boxes found, weak name hits).
    flagged = models.BooleanField(default=False)
    flag_reasons = models.JSONField(default=list, blank=True)  # codes, e.g. "ocr_boxes"
    profile_fingerprint = models.CharField(max_length=120, blank=True)
    processed_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["run_id", "raw_file_id"]
        constraints = [
            models.UniqueConstraint(fields=["run", "raw_file"], name="deid_result_once_per_run")
        ]
        indexes = [models.Index(fields=["run", "status"])]

    def __str__(self) -> str:
        return f"result {self.pk} ({self.status})"

    @property
    def flag_labels(self) -> list[str]:
        """The flag codes as reviewers read them (``services.flag_reasons`` sets the codes)."""
        return [str(FLAG_LABELS.get(code, code)) for code in self.flag_reasons]


# Why the engine flagged a result for review (apps.deid.services.flag_reasons).
FLAG_LABELS = {
    "ocr_boxes": _("text found in the pixels and masked"),
    "ocr_boxes_dismissed": _("text-like marks in the pixels judged anatomy"),
    "ocr_screened": _("pixels screened on a reduced copy"),
    "name_hits": _("person names found in the text"),
}


class VaultRecord(models.Model):
    """One encrypted pseudonym -> original entry (``apps.deid.engine.vault`` format).

    Readable only through ``apps.deid.services.reveal_pseudonym``: privacy officers, with a
    reason, audited.
    """

    slot = models.CharField(max_length=200, unique=True)  # "<kind>:<pseudonym>"
    blob = models.BinaryField()
    created = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"vault record {self.pk}"


class RevealLog(models.Model):
    """One re-identification by a privacy officer: who, when, why, for which pseudonym.

    The audit event carries only hashes; the stated reason lives here so auditors can read it.
    The revealed original is never stored.
    """

    actor_id = models.BigIntegerField()
    pseudonym_sha256 = models.CharField(max_length=64, db_index=True)
    kind = models.CharField(max_length=40, default="patient_id")
    reason = models.TextField()
    found = models.BooleanField(default=False)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"reveal {self.pk}"
