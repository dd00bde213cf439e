"""Shared model bases. Core holds no concrete models."""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _


class TimeStampedModel(models.Model):
    created = models.DateTimeField(auto_now_add=True, db_index=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True


class WorkStatus(models.TextChoices):
    """The life of a long operation the worker carries out (a scan, a de-identification run)."""

    PENDING = "pending", _("Pending")
    RUNNING = "running", _("Running")
    DONE = "done", _("Done")
    FAILED = "failed", _("Failed")
    CANCELLED = "cancelled", _("Cancelled")


class TrackedWork(TimeStampedModel):
    """A row that holds the truth about a long operation: status (moved by conditional
    UPDATE), a PHI-free error, who asked for it, and when it ran."""

    Status = WorkStatus

    status = models.CharField(max_length=10, choices=WorkStatus.choices, default=WorkStatus.PENDING)
    error = models.CharField(max_length=300, blank=True)
    created_by_id = models.BigIntegerField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True
