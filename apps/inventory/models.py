"""The data map (seed 2.1): data sources, ingest batches and the raw files they register.

Raw files never leave their source's raw root; a row holds their path relative to that root,
their SHA-256 and what the scanner detected. Lineage (DESIGN.md) starts here: every
de-identified output, dataset sample and checkpoint traces back to RawFile rows.
"""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _

from apps.core.models import TimeStampedModel, TrackedWork


class DataKind(models.TextChoices):
    DICOM = "DICOM", "DICOM"
    WSI = "WSI", "WSI"
    ECG = "ECG", "ECG"
    EEG = "EEG", "EEG"
    TEXT = "TEXT", _("Text")
    AUDIO = "AUDIO", _("Audio")
    VIDEO = "VIDEO", _("Video")
    MIXED = "MIXED", _("Mixed")


class ConsentStatus(models.TextChoices):
    OBTAINED = "obtained", _("Consent obtained")
    WAIVED = "waived", _("Consent waived by ethics board")
    PENDING = "pending", _("Pending")
    WITHDRAWN = "withdrawn", _("Withdrawn")
    UNKNOWN = "unknown", _("Unknown")


class DataSource(TimeStampedModel):
    """One row of the data map; ``data_inventory.csv`` columns are the first seven fields."""

    source = models.CharField(_("source"), max_length=120, unique=True)
    type = models.CharField(_("type"), max_length=10, choices=DataKind.choices)
    avg_size_mb = models.DecimalField(
        _("average size (MB)"), max_digits=12, decimal_places=3, default=0
    )
    estimated_count = models.BigIntegerField(_("estimated count"), default=0)
    owner = models.CharField(_("owner"), max_length=120)
    consent_status = models.CharField(
        _("consent status"),
        max_length=12,
        choices=ConsentStatus.choices,
        default=ConsentStatus.UNKNOWN,
    )
    notes = models.TextField(_("notes"), blank=True)
    # Storage per tier (seed 2.1): where raw, de-identified and training data live.
    raw_root = models.CharField(_("raw root"), max_length=500, blank=True)
    deid_root = models.CharField(_("de-identified root"), max_length=500, blank=True)
    working_root = models.CharField(_("training working set root"), max_length=500, blank=True)
    allowed_roles = models.JSONField(_("roles allowed"), default=list, blank=True)
    legal_basis = models.CharField(_("legal basis"), max_length=200, blank=True)
    # What the scanner found (the CSV's avg_size_MB and estimated_count stay estimates, so the
    # data map can show planned against measured).
    scanned_count = models.BigIntegerField(_("files registered"), default=0)
    scanned_bytes = models.BigIntegerField(_("bytes registered"), default=0)
    last_scanned_at = models.DateTimeField(_("last scanned"), null=True, blank=True)

    class Meta:
        ordering = ["source"]

    def __str__(self) -> str:
        return self.source


class IngestBatch(TrackedWork):
    """One scan of a source's raw root: the files found, with their hashes."""

    source = models.ForeignKey(DataSource, on_delete=models.PROTECT, related_name="batches")
    files_total = models.IntegerField(default=0)
    files_done = models.IntegerField(default=0)
    bytes_total = models.BigIntegerField(default=0)
    # Files already registered with the same hash (re-scan) and paths refused (symlinks out of
    # the root, unreadable directory entries); both count toward files_done.
    files_skipped = models.IntegerField(default=0)
    files_refused = models.IntegerField(default=0)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"batch {self.pk} of {self.source}"


class RawFile(models.Model):
    """A raw file registered by a scan. ``relpath`` is relative to the source's raw root."""

    class Kind(models.TextChoices):
        DICOM = "dicom", "DICOM"
        TEXT = "text", _("Text")
        EDF = "edf", "EDF"
        WFDB = "wfdb", "WFDB"
        WSI = "wsi", "WSI"
        OTHER = "other", _("Other")
        UNREADABLE = "unreadable", _("Unreadable")

    batch = models.ForeignKey(IngestBatch, on_delete=models.PROTECT, related_name="files")
    source = models.ForeignKey(DataSource, on_delete=models.PROTECT, related_name="files")
    relpath = models.CharField(max_length=1000)
    sha256 = models.CharField(max_length=64, db_index=True)
    size = models.BigIntegerField()
    kind = models.CharField(max_length=12, choices=Kind.choices)
    modality = models.CharField(max_length=16, blank=True)  # CT, MR, US, ECG, EEG, ...
    # Keyed hashes (never the raw identifiers) used to group files into samples.
    study_key = models.CharField(max_length=64, blank=True, db_index=True)
    series_key = models.CharField(max_length=64, blank=True)
    # DICOM InstanceNumber: the series-completeness check looks for gaps without re-reading.
    instance_number = models.IntegerField(null=True, blank=True)
    excluded = models.BooleanField(default=False)  # by data QA, with a reason
    excluded_reason = models.CharField(max_length=200, blank=True)
    registered_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["batch_id", "relpath"]
        constraints = [
            models.UniqueConstraint(fields=["batch", "relpath"], name="rawfile_unique_in_batch")
        ]

    def __str__(self) -> str:
        return f"raw file {self.pk} ({self.kind})"


# --- added for the scanner and data QA (migration 0002) --------------------------------------


class QACheck(models.TextChoices):
    """The data QA checks (seed 2.4 and appendix E's ``data_quality`` table)."""

    DICOM_READABLE = "dicom_readable", _("DICOM readable and complete")
    SERIES_COMPLETE = "series_complete", _("No missing instances in the series")
    PIXEL_STATS = "pixel_stats", _("Pixel mean/variance within modality bounds")
    TEXT_NOT_EMPTY = "text_not_empty", _("Note is not empty or near-empty")
    WAVEFORM_READABLE = "waveform_readable", _("Waveform readable")
    WAVEFORM_FLATLINE = "waveform_flatline", _("No flat-line channels")
    WAVEFORM_NAN = "waveform_nan", _("No NaN or invalid samples")
    WAVEFORM_CLIPPING = "waveform_clipping", _("No clipped channels")
    FORMAT_KNOWN = "format_known", _("Content is a known format")


class QAResult(models.TextChoices):
    PASS = "pass", _("Pass")
    FAIL = "fail", _("Fail")


class QASeverity(models.TextChoices):
    INFO = "info", _("Info")
    WARNING = "warning", _("Warning")
    ERROR = "error", _("Error")


class QACheckResult(models.Model):
    """The latest outcome of one QA check on one raw file (seed appendix E ``data_quality``).

    ``notes`` are generated by the checks from numbers (counts, means, channel indexes), never
    copied from file content, so they carry no PHI. Re-running a check replaces its row.
    """

    raw_file = models.ForeignKey(RawFile, on_delete=models.CASCADE, related_name="qa_results")
    # Named as in the seed's table; a field called ``check`` would shadow Model.check().
    check_type = models.CharField(_("check"), max_length=24, choices=QACheck.choices)
    result = models.CharField(_("result"), max_length=4, choices=QAResult.choices)
    severity = models.CharField(_("severity"), max_length=8, choices=QASeverity.choices)
    notes = models.CharField(_("notes"), max_length=300, blank=True)
    checked_at = models.DateTimeField(_("checked at"), db_index=True)

    class Meta:
        ordering = ["raw_file_id", "check_type"]
        constraints = [
            models.UniqueConstraint(
                fields=["raw_file", "check_type"], name="qa_one_result_per_check"
            )
        ]
        indexes = [models.Index(fields=["result", "severity"])]

    def __str__(self) -> str:
        return f"{self.check_type} on raw file {self.raw_file_id}: {self.result}"
