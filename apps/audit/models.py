"""The audit trail: one row per state change, each chained to the one before by SHA-256.

Rows are written only by ``apps.audit.services.record`` and never changed: a migration installs
database triggers that refuse UPDATE, DELETE (and TRUNCATE on PostgreSQL). The chain makes any
edit that slips past the triggers (a superuser, a restored backup) visible to ``audit_verify``;
the signed daily digests in write-once storage make even a rewritten tail visible.
"""

from __future__ import annotations

import json
from typing import Any

from django.db import models
from django.utils.translation import gettext_lazy as _

# prev_digest of the first event.
GENESIS_DIGEST = "0" * 64

# An event's fields as exported (CSV header, API), in digest-message order.
EVENT_FIELDS = (
    "seq",
    "timestamp",
    "user_id",
    "action",
    "resource",
    "pre_hash",
    "post_hash",
    "request_id",
    "client_ip",
    "details",
    "prev_digest",
    "digest",
)
# The same as database columns (``details`` is stored as its canonical JSON text).
EVENT_COLUMNS = tuple("details_json" if f == "details" else f for f in EVENT_FIELDS)


class AuditEvent(models.Model):
    """One audited state change. Ids and hashes only: never the state itself (no PHI)."""

    # The gapless position in the chain; also the primary key, so "seq 17" names one row.
    seq = models.BigIntegerField(_("sequence"), primary_key=True)
    timestamp = models.DateTimeField(_("time"))
    # A plain integer, not a foreign key: events must outlive the users they name.
    user_id = models.BigIntegerField(_("user id"), null=True, blank=True)
    action = models.CharField(_("action"), max_length=100)
    resource = models.CharField(_("resource"), max_length=200)
    pre_hash = models.CharField(_("state hash before"), max_length=64, blank=True)
    post_hash = models.CharField(_("state hash after"), max_length=64, blank=True)
    request_id = models.CharField(_("request id"), max_length=64)
    client_ip = models.CharField(_("client address"), max_length=45, blank=True)
    # Canonical JSON text, not a JSON column: the bytes that were hashed are the bytes stored,
    # so verification never depends on how a database normalizes JSON.
    details_json = models.TextField(_("details"), db_column="details", default="{}")
    prev_digest = models.CharField(_("previous digest"), max_length=64)
    digest = models.CharField(_("digest"), max_length=64)

    class Meta:
        ordering = ["seq"]
        # One index per filter of the auditor page, and no more: every index is written on
        # every append, inside the serialized section. The pattern opclass (PostgreSQL only)
        # serves both "=" and the prefix filters ("accounts.", "accounts.user:").
        indexes = [
            models.Index(fields=["timestamp"], name="audit_event_time"),
            models.Index(fields=["user_id"], name="audit_event_user"),
            models.Index(
                fields=["action"], name="audit_event_action", opclasses=["varchar_pattern_ops"]
            ),
            models.Index(
                fields=["resource"], name="audit_event_resource", opclasses=["varchar_pattern_ops"]
            ),
            models.Index(fields=["request_id"], name="audit_event_request"),
        ]
        verbose_name = _("audit event")
        verbose_name_plural = _("audit events")
        default_permissions = ("view",)

    def __str__(self) -> str:
        return f"#{self.seq} {self.action} {self.resource}"

    @property
    def details(self) -> dict[str, Any]:
        return json.loads(self.details_json or "{}")


class ChainCheck(models.Model):
    """The outcome of one chain verification, shown in the auditor's status panel.

    Not part of the chain itself (it is ordinary, mutable data); each check is also recorded
    as an ``audit.chain_verified`` event, which is the tamper-evident copy.
    """

    started_at = models.DateTimeField(_("started"))
    finished_at = models.DateTimeField(_("finished"))
    ok = models.BooleanField(_("chain intact"))
    events_checked = models.BigIntegerField(_("events checked"))
    head_seq = models.BigIntegerField(_("head sequence"), default=0)
    head_digest = models.CharField(_("head digest"), max_length=64, blank=True)
    digests_checked = models.IntegerField(_("daily digests checked"), default=0)
    broken_seq = models.BigIntegerField(_("first broken sequence"), null=True, blank=True)
    reason = models.CharField(_("reason"), max_length=300, blank=True)

    class Meta:
        ordering = ["-finished_at", "-pk"]
        get_latest_by = "finished_at"
        verbose_name = _("chain check")
        verbose_name_plural = _("chain checks")

    def __str__(self) -> str:
        return f"chain check {self.finished_at:%Y-%m-%d %H:%M}: {'ok' if self.ok else 'broken'}"
