"""Dataset versions packed from released de-identified data, their lineage and label sets.

A :class:`DatasetVersion` is a folder of WebDataset shards in the format of
``trainer/data/shards.py`` (DESIGN.md "The shard format"). Once ``ready`` it never changes: the
files are read-only, the manifest's SHA-256 is stored here and a database trigger refuses any
UPDATE of a finished row. :class:`DatasetMember` rows are the lineage: one per de-identified
file packed, pointing at its raw file, run and sample, indexed both ways.
:class:`DatasetUse` is the hook by which training runs and checkpoints record that they read a
version. :class:`AnnotationSet` rows are append-only label sets (seed 2.4).
:class:`ConsentWithdrawal` rows keep a patient who withdrew consent out of every later build.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from apps.deid.models import DeidFileResult, DeidRun
from apps.inventory.models import RawFile


class DatasetVersion(models.Model):
    """One immutable build ``<name> v<number>`` of shards + index + manifest.

    ``root`` is the folder holding ``manifest.json``; ``manifest_sha256`` pins it, and the
    manifest pins every shard and index file, so one hash verifies the whole version.
    """

    class Status(models.TextChoices):
        BUILDING = "building", _("Building")
        READY = "ready", _("Ready")
        FAILED = "failed", _("Failed")

    name = models.SlugField(_("name"), max_length=80)
    number = models.PositiveIntegerField(_("version"))
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.BUILDING)
    runs = models.ManyToManyField(DeidRun, related_name="dataset_versions")
    root = models.CharField(max_length=500, blank=True)
    target_shard_mb = models.FloatField(_("target shard size (MB)"))
    build_settings = models.JSONField(default=dict, blank=True)  # as in the manifest
    manifest_sha256 = models.CharField(max_length=64, blank=True)
    shard_count = models.IntegerField(default=0)
    bytes_total = models.BigIntegerField(default=0)
    sample_count = models.IntegerField(default=0)
    file_count = models.IntegerField(default=0)
    modality_counts = models.JSONField(default=dict, blank=True)  # {text, image, waveform}
    token_estimate = models.BigIntegerField(default=0)
    skipped = models.JSONField(default=dict, blank=True)  # reason -> count (never packed)
    progress_done = models.IntegerField(default=0)
    progress_total = models.IntegerField(default=0)
    error = models.CharField(max_length=300, blank=True)
    # Set by services.cancel_build; the packer polls it between samples.
    cancel_requested = models.BooleanField(default=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created = models.DateTimeField(auto_now_add=True, db_index=True)
    # Set by the worker that claims the build; a stale claim (dead worker) may be re-taken.
    claimed_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["name", "number"], name="dataset_version_unique"),
            models.CheckConstraint(
                condition=models.Q(target_shard_mb__gt=0), name="dataset_shard_size_positive"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} v{self.number}"

    @property
    def label(self) -> str:
        return f"{self.name} v{self.number}"

    @property
    def is_ready(self) -> bool:
        return self.status == self.Status.READY


class DatasetMember(models.Model):
    """One de-identified file packed into one sample of one version (the lineage row).

    ``patient_pseudonym`` is the sample's pseudonym, copied here so the consent-withdrawal
    query is one indexed lookup even for files (WFDB signal files) whose own result has none.
    """

    version = models.ForeignKey(DatasetVersion, on_delete=models.CASCADE, related_name="members")
    deid_result = models.ForeignKey(
        DeidFileResult, on_delete=models.PROTECT, related_name="dataset_members"
    )
    raw_file = models.ForeignKey(RawFile, on_delete=models.PROTECT, related_name="dataset_members")
    run = models.ForeignKey(DeidRun, on_delete=models.PROTECT, related_name="dataset_members")
    sample_key = models.CharField(max_length=64)
    patient_pseudonym = models.CharField(max_length=80, blank=True, db_index=True)
    member = models.CharField(max_length=16)  # which part of the sample: img, txt, wav

    class Meta:
        ordering = ["version_id", "sample_key", "raw_file_id"]
        constraints = [
            models.UniqueConstraint(fields=["version", "raw_file"], name="dataset_member_once"),
        ]
        indexes = [
            models.Index(fields=["version", "sample_key"], name="dataset_member_sample"),
            models.Index(fields=["raw_file", "version"], name="dataset_member_reach"),
        ]

    def __str__(self) -> str:
        return f"member {self.pk} of {self.version_id}"


class DatasetUse(models.Model):
    """A consumer that read a dataset version: the lineage hook for training runs and
    checkpoints (``consumer_kind`` like ``"jobs.trainingrun"`` or
    ``"checkpoints.checkpoint"``). Written only through ``services.record_dataset_use``, by
    the apps that own those consumers; datasets never imports them."""

    version = models.ForeignKey(DatasetVersion, on_delete=models.PROTECT, related_name="uses")
    consumer_kind = models.CharField(max_length=60)
    consumer_id = models.CharField(max_length=64)
    label = models.CharField(max_length=200, blank=True)  # ids only, shown in reports
    recorded_at = models.DateTimeField(auto_now_add=True)
    recorded_by_id = models.BigIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["version_id", "consumer_kind", "consumer_id"]
        constraints = [
            models.UniqueConstraint(
                fields=["version", "consumer_kind", "consumer_id"], name="dataset_use_once"
            )
        ]
        indexes = [models.Index(fields=["consumer_kind", "consumer_id"], name="dataset_use_kind")]

    def __str__(self) -> str:
        return f"{self.consumer_kind}:{self.consumer_id} used {self.version_id}"


class ConsentRecord(models.Model):
    """Who recorded a consent decision, and when (withdrawal or re-consent)."""

    recorded_at = models.DateTimeField(default=timezone.now)
    recorded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
    )

    class Meta:
        abstract = True
        ordering = ["-recorded_at", "-pk"]


class ConsentWithdrawal(ConsentRecord):
    """A patient (by pseudonym) withdrew consent: no version built afterwards packs any of
    their files, whatever run or source they come from.

    Versions built before stay as they are (immutable, and training runs may have read them);
    the pages flag them and the lineage report lists who read them. Written only through
    ``services.withdraw_consent``; append-only (the database refuses UPDATE, the application
    has no delete path). ``reference`` is the request's case number, never free text.

    In force until a :class:`ConsentReinstatement` names it; a patient who withdraws again
    after that gets a new row, so the history reads in order.
    """

    patient_pseudonym = models.CharField(max_length=80, db_index=True)
    reference = models.CharField(max_length=80, blank=True)

    def __str__(self) -> str:
        return f"consent withdrawn: {self.patient_pseudonym}"


class VerifyCheck(models.Model):
    """One re-hash of a version's files; kept as history because versions never change.

    A check from the pages or the API is ``queued`` and a worker re-hashes (``running``, with
    ``bytes_done`` of ``bytes_total`` and a heartbeat), so terabytes never hash inside a
    request; the CLI runs one in its own process. ``ok`` is None until the check is ``done``.
    """

    class Status(models.TextChoices):
        QUEUED = "queued", _("Queued")
        RUNNING = "running", _("Running")
        DONE = "done", _("Done")
        FAILED = "failed", _("Failed")

    version = models.ForeignKey(DatasetVersion, on_delete=models.CASCADE, related_name="checks")
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.QUEUED)
    ok = models.BooleanField(null=True)
    problems = models.JSONField(default=list, blank=True)  # [{"file", "problem"}]
    files_checked = models.IntegerField(default=0)
    bytes_total = models.BigIntegerField(default=0)
    bytes_done = models.BigIntegerField(default=0)
    checked_at = models.DateTimeField(auto_now_add=True)  # when it was asked for
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    error = models.CharField(max_length=300, blank=True)
    checked_by_id = models.BigIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["-checked_at", "-pk"]

    def __str__(self) -> str:
        state = self.status if self.ok is None else ("ok" if self.ok else "broken")
        return f"check {self.pk} of {self.version_id} ({state})"

    @property
    def unfinished(self) -> bool:
        return self.status in (self.Status.QUEUED, self.Status.RUNNING)


class DatasetTokenizer(models.Model):
    """A byte-level BPE tokenizer trained on a ready version's released text, for training runs
    on it (the trainer's ``Tokenizer``; docs/datasets.md "Tokenizers").

    Asked for from the version page or the API (``queued``), trained by a worker (``running``,
    ``merges_done`` of ``merges_total``, a heartbeat), written once next to the version
    (``<name>/v<n>.tokenizers/``, read-only) and pinned by the file's SHA-256 and the ids'
    ``fingerprint`` that checkpoints record. Training is deterministic: the same version,
    vocabulary size and text budget give the same tokenizer, so a second request returns the
    first row. A tokenizer is a consumer of its version in the lineage (``DatasetUse``).
    """

    class Status(models.TextChoices):
        QUEUED = "queued", _("Queued")
        RUNNING = "running", _("Running")
        READY = "ready", _("Ready")
        FAILED = "failed", _("Failed")

    version = models.ForeignKey(DatasetVersion, on_delete=models.PROTECT, related_name="tokenizers")
    vocab_size = models.IntegerField()  # asked for; ``ids`` is what the text allowed
    max_mb = models.FloatField()  # the text budget read from the version, in MiB
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.QUEUED)
    merges_done = models.IntegerField(default=0)
    merges_total = models.IntegerField(default=0)
    ids = models.IntegerField(default=0)
    path = models.CharField(max_length=500, blank=True)
    sha256 = models.CharField(max_length=64, blank=True)
    fingerprint = models.CharField(max_length=64, blank=True)
    requested_at = models.DateTimeField(auto_now_add=True)
    requested_by_id = models.BigIntegerField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    error = models.CharField(max_length=300, blank=True)
    # Set by tokenizers.cancel_tokenizer; the trainer's progress callback polls it.
    cancel_requested = models.BooleanField(default=False)

    class Meta:
        ordering = ["-requested_at", "-pk"]

    def __str__(self) -> str:
        return f"tokenizer {self.pk} of {self.version_id} ({self.vocab_size}, {self.status})"

    @property
    def unfinished(self) -> bool:
        return self.status in (self.Status.QUEUED, self.Status.RUNNING)

    @property
    def percent(self) -> int:
        return round(100 * self.merges_done / self.merges_total) if self.merges_total else 0


class AnnotationSet(models.Model):
    """Version ``number`` of the label set ``name`` on a dataset version (seed 2.4).

    Append-only: a new upload is a new row and a new write-once file; the database refuses
    any UPDATE of a row, so an old label set can never be rewritten.
    """

    version = models.ForeignKey(
        DatasetVersion, on_delete=models.PROTECT, related_name="annotation_sets"
    )
    name = models.SlugField(_("name"), max_length=80)
    number = models.PositiveIntegerField(_("version"))
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.PROTECT, related_name="+"
    )
    created = models.DateTimeField(auto_now_add=True)
    quality_score = models.FloatField(_("quality score"))
    notes = models.CharField(_("notes"), max_length=300, blank=True)
    path = models.CharField(max_length=500)
    sha256 = models.CharField(max_length=64)
    size = models.BigIntegerField()
    format = models.CharField(max_length=8)  # jsonl or csv
    label_count = models.IntegerField(default=0)
    sample_count = models.IntegerField(default=0)

    class Meta:
        ordering = ["version_id", "name", "-number"]
        constraints = [
            models.UniqueConstraint(
                fields=["version", "name", "number"], name="annotation_set_unique"
            ),
            models.CheckConstraint(
                condition=models.Q(quality_score__gte=0) & models.Q(quality_score__lte=1),
                name="annotation_quality_0_1",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} v{self.number} on {self.version_id}"


class ConsentReinstatement(ConsentRecord):
    """The patient consented again, or the withdrawal was recorded against the wrong patient:
    the withdrawal stops applying from now on (later builds pack the patient again, the
    flags on older versions go away, review offers their items again).

    Written only through ``services.reinstate_consent`` by a privacy officer, with the new
    consent's (or the correction's) case number, which is required; append-only like the
    withdrawal it names (the database refuses UPDATE; no delete path).
    """

    withdrawal = models.OneToOneField(
        ConsentWithdrawal, on_delete=models.PROTECT, related_name="reinstatement"
    )
    reference = models.CharField(max_length=80)

    def __str__(self) -> str:
        return f"consent reinstated: {self.withdrawal.patient_pseudonym}"
