"""Clinician spot-check of a de-identification run (seed 2.2 "人工抽检 1%–5%") and its gate.

A ``ReviewBatch`` is a reproducible, stratified random sample of one finished ``DeidRun``'s
de-identified files (plus every file the engine flagged as borderline). Its ``ReviewItem`` rows
are leased to one clinician at a time; each ``Verdict`` is kept forever (one per item and
reviewer, enforced by the database). A failing verdict opens a ``Finding`` the data steward
must resolve. The run is released only through ``apps.review.services.release_run``.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _
from django.utils.translation import pgettext_lazy

from apps.core.models import TimeStampedModel
from apps.deid.models import DeidFileResult, DeidRun


class Category(models.TextChoices):
    """What a failing verdict found; the order is the keyboard order (1–8)."""

    NAME = "name", pgettext_lazy("PHI category", "Name")  # a person's name: 姓名, not 名称
    ID_NUMBER = "id_number", _("ID number")
    PHONE = "phone", _("Phone")
    ADDRESS = "address", _("Address")
    DATE = "date", _("Date")
    FACE = "face", _("Face")
    BURNED_IN_TEXT = "burned_in_text", _("Burned-in text")
    OTHER = "other", _("Other")


class ReviewBatch(TimeStampedModel):
    """The sample of one de-identification run that clinicians review before release."""

    class Status(models.TextChoices):
        OPEN = "open", _("Open")
        RELEASED = "released", _("Released")
        SUPERSEDED = "superseded", _("Superseded by a re-run")

    run = models.ForeignKey(DeidRun, on_delete=models.PROTECT, related_name="review_batches")
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.OPEN)
    fraction = models.FloatField()  # 0.01–0.05 of each stratum
    min_per_stratum = models.PositiveIntegerField()
    seed = models.BigIntegerField()  # the draw is reproducible from this alone
    threshold = models.FloatField()  # the Clopper–Pearson lower bound must reach it
    double_review_fraction = models.FloatField()
    lease_seconds = models.PositiveIntegerField()
    items_total = models.PositiveIntegerField(default=0)
    results_ok = models.PositiveIntegerField(default=0)  # population the sample came from
    created_by_id = models.BigIntegerField(null=True, blank=True)
    released_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]
        constraints = [
            # One live sample per run: a second one could be drawn until it happened to pass.
            models.UniqueConstraint(
                fields=["run"],
                condition=Q(status__in=["open", "released"]),
                name="review_one_live_batch_per_run",
            )
        ]

    def __str__(self) -> str:
        return f"review batch {self.pk}"


class ReviewItem(models.Model):
    """One sampled de-identified file; leased to one reviewer at a time."""

    class Status(models.TextChoices):
        PENDING = "pending", _("Waiting for review")
        DONE = "done", _("Reviewed")

    class Outcome(models.TextChoices):
        NONE = "", _("Not yet")
        PASS = "pass", _("Pass")
        FAIL = "fail", _("Fail")

    batch = models.ForeignKey(ReviewBatch, on_delete=models.PROTECT, related_name="items")
    result = models.ForeignKey(DeidFileResult, on_delete=models.PROTECT, related_name="+")
    stratum = models.CharField(max_length=120)  # "kind|modality|source id"
    flagged = models.BooleanField(default=False)  # included because the engine flagged it
    position = models.PositiveIntegerField()  # random queue order, drawn from the seed
    needs_reviews = models.PositiveSmallIntegerField(default=1)  # 2 = double-reviewed
    round = models.PositiveSmallIntegerField(default=1)  # +1 each time a fix re-queues it
    reviews_done = models.PositiveSmallIntegerField(default=0)  # in the current round
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.PENDING)
    outcome = models.CharField(max_length=4, choices=Outcome.choices, blank=True, default="")
    lease_user_id = models.BigIntegerField(null=True, blank=True)
    leased_at = models.DateTimeField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["batch_id", "position"]
        constraints = [
            models.UniqueConstraint(fields=["batch", "result"], name="review_item_once"),
        ]
        indexes = [models.Index(fields=["batch", "status", "position"])]

    def __str__(self) -> str:
        return f"review item {self.pk}"


class Verdict(models.Model):
    """A clinician's judgement of one item; never edited, never deleted."""

    class Decision(models.TextChoices):
        PASS = "pass", _("Pass")
        FAIL = "fail", _("Fail")

    item = models.ForeignKey(ReviewItem, on_delete=models.PROTECT, related_name="verdicts")
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    round = models.PositiveSmallIntegerField()
    decision = models.CharField(max_length=4, choices=Decision.choices)
    category = models.CharField(max_length=16, choices=Category.choices, blank=True)
    # {"frame", "x0", "y0", "x1", "y1"} in pixels, or {"start", "end"} in the text; no content.
    region = models.JSONField(null=True, blank=True)
    seconds = models.FloatField()  # measured by the server from the lease, not reported
    output_sha256 = models.CharField(max_length=64)  # what exactly was looked at
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created", "pk"]
        constraints = [
            # "No item is ever reviewed twice by the same person", held by the database.
            models.UniqueConstraint(fields=["item", "reviewer"], name="review_verdict_once"),
            models.CheckConstraint(
                condition=Q(decision="pass", category="") | Q(decision="fail") & ~Q(category=""),
                name="review_fail_has_category",
            ),
        ]

    def __str__(self) -> str:
        return f"verdict {self.pk} ({self.decision})"


class Finding(TimeStampedModel):
    """A failed item, open until the data steward fixes the rule or re-runs."""

    class Status(models.TextChoices):
        OPEN = "open", _("Open")
        RESOLVED = "resolved", _("Resolved")

    class Resolution(models.TextChoices):
        FIXED = "fixed", _("Rule fixed, outputs regenerated: re-review")
        RERUN = "rerun", _("Superseded by a new de-identification run")

    batch = models.ForeignKey(ReviewBatch, on_delete=models.PROTECT, related_name="findings")
    item = models.ForeignKey(ReviewItem, on_delete=models.PROTECT, related_name="findings")
    round = models.PositiveSmallIntegerField()
    category = models.CharField(max_length=16, choices=Category.choices)
    opened_by = models.ForeignKey(Verdict, on_delete=models.PROTECT, related_name="+")
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.OPEN)
    resolution = models.CharField(max_length=8, choices=Resolution.choices, blank=True)
    resolved_by_id = models.BigIntegerField(null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    requeued = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-created"]
        constraints = [
            models.UniqueConstraint(fields=["item", "round"], name="review_finding_once_a_round")
        ]

    def __str__(self) -> str:
        return f"finding {self.pk} ({self.status})"
