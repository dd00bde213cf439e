"""The audit trail's operations: append, verify, seal the day. The only write path.

Every other app records its state changes with :func:`record`, inside the same
``transaction.atomic()`` block as the change, so the event commits or rolls back with it.

The chain: event ``n`` stores ``prev_digest`` (the digest of event ``n - 1``, or 64 zeros for
the first) and ``digest = sha256(message)``, where ``message`` joins a version tag and every
field with the unit separator ``\\x1f``. Every field is validated to contain no control
characters (the details are canonical JSON, which escapes them), so the encoding is
unambiguous, and it is cheap to rebuild: verifying a million events is a loop over tuples,
with no JSON parsing.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import DEFAULT_DB_ALIAS, connections, router, transaction
from django.utils import timezone

from apps.audit.models import (
    EVENT_COLUMNS,
    EVENT_FIELDS,
    GENESIS_DIGEST,
    AuditEvent,
    ChainCheck,
)
from apps.core import context

if TYPE_CHECKING:
    from apps.accounts.models import User
    from apps.audit.stores import DigestStore

logger = logging.getLogger(__name__)

ACTION_RE = re.compile(r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_.]*$")
# "<app>.<model>" optionally followed by ":<id>"; ids only, so no spaces and no free text.
RESOURCE_RE = re.compile(r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*(?::[A-Za-z0-9._:/@+-]{1,150})?$")
DETAIL_KEY_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")

MAX_ACTION_LEN = 100
MAX_DETAIL_VALUE_LEN = 200
MAX_DETAIL_ITEMS = 50
MAX_DETAILS_LEN = 4000

# Domain separation: a digest of this chain can never be mistaken for any other sha256.
MESSAGE_VERSION = "medctl-audit-v1"
SEP = "\x1f"
# pg_advisory_xact_lock key: "medctl audit chain" (any constant works; it only has to be shared).
CHAIN_LOCK_KEY = 0x6D6564_617564
DIGEST_FORMAT = "medctl-audit-digest/1"

# The columns verification needs, in message order.
VERIFY_COLUMNS = EVENT_COLUMNS


class AuditError(ValueError):
    """A caller broke the contract of :func:`record` (bad input, or no transaction)."""


# --- hashing ---------------------------------------------------------------------------------


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, ASCII only: one text per value, whatever the dict order."""
    return json.dumps(
        value,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
        allow_nan=False,
        cls=DjangoJSONEncoder,
    )


def state_hash(state: object) -> str:
    """SHA-256 of a resource state's canonical JSON; ``""`` for no state (created/deleted)."""
    if state is None:
        return ""
    try:
        text = canonical_json(state)
    except (TypeError, ValueError) as exc:
        raise AuditError(f"state is not JSON-serializable: {exc}") from None
    return hashlib.sha256(text.encode()).hexdigest()


def timestamp_text(ts: datetime) -> str:
    """The timestamp as it enters the digest: UTC, ISO 8601, always with microseconds."""
    if ts.utcoffset():
        ts = ts.astimezone(UTC)
    return ts.isoformat(timespec="microseconds")


def event_message(
    seq: int,
    prev_digest: str,
    ts: datetime,
    user_id: int | None,
    action: str,
    resource: str,
    pre_hash: str,
    post_hash: str,
    request_id: str,
    client_ip: str,
    details_json: str,
) -> bytes:
    """The exact bytes an event's digest is the SHA-256 of (see the module docstring)."""
    return (
        f"{MESSAGE_VERSION}{SEP}{seq}{SEP}{prev_digest}{SEP}{timestamp_text(ts)}{SEP}"
        f"{'' if user_id is None else user_id}{SEP}{action}{SEP}{resource}{SEP}{pre_hash}{SEP}"
        f"{post_hash}{SEP}{request_id}{SEP}{client_ip}{SEP}{details_json}"
    ).encode()


def compute_digest(**fields: Any) -> str:
    return hashlib.sha256(event_message(**fields)).hexdigest()


# --- append ----------------------------------------------------------------------------------


def _actor_id(actor: User | int | None) -> int | None:
    if actor is None:
        return None
    if isinstance(actor, bool):
        raise AuditError(f"actor must be a user, a user id or None, not {actor!r}")
    if isinstance(actor, int):
        return actor
    if getattr(actor, "is_anonymous", False):
        return None
    pk = getattr(actor, "pk", None)
    if not isinstance(pk, int):
        raise AuditError(f"actor must be a saved user, a user id or None, not {actor!r}")
    return pk


def _check_scalar(key: str, value: Any) -> None:
    if value is None or isinstance(value, bool | int):
        return
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise AuditError(f"details[{key!r}] is not a finite number")
        return
    if isinstance(value, str):
        if len(value) > MAX_DETAIL_VALUE_LEN:
            raise AuditError(
                f"details[{key!r}] is {len(value)} characters; audit details carry ids, hashes "
                f"and counts (at most {MAX_DETAIL_VALUE_LEN}), never free text"
            )
        if _CONTROL_RE.search(value):
            raise AuditError(f"details[{key!r}] contains control characters")
        return
    raise AuditError(
        f"details[{key!r}] must be a string, number, bool or None, not {type(value).__name__}"
    )


def details_text(details: dict[str, Any] | None) -> str:
    """Validate ``details`` and return its canonical JSON.

    Details are a small flat dict of ids, hashes and counts: keys like ``dataset_id``; values
    strings (at most 200 characters), numbers, booleans, None, or lists of those (at most 50).
    Anything longer looks like free text, which could carry PHI, so it is refused.
    """
    if details is None:
        return "{}"
    if not isinstance(details, dict):
        raise AuditError(f"details must be a dict, not {type(details).__name__}")
    for key, value in details.items():
        if not isinstance(key, str) or not DETAIL_KEY_RE.fullmatch(key):
            raise AuditError(f"details key {key!r} must match {DETAIL_KEY_RE.pattern}")
        if isinstance(value, list | tuple):
            if len(value) > MAX_DETAIL_ITEMS:
                raise AuditError(
                    f"details[{key!r}] has {len(value)} items (at most {MAX_DETAIL_ITEMS})"
                )
            for item in value:
                _check_scalar(key, item)
        else:
            _check_scalar(key, value)
    text = canonical_json(details)
    if len(text) > MAX_DETAILS_LEN:
        raise AuditError(f"details are {len(text)} characters (at most {MAX_DETAILS_LEN})")
    return text


def _validated_context() -> tuple[str, str]:
    ctx = context.current()
    request_id = ctx.request_id
    if not _REQUEST_ID_RE.fullmatch(request_id or ""):
        raise AuditError(f"request id {request_id!r} is malformed")
    client_ip = ""
    if ctx.client_ip:
        try:
            client_ip = str(ipaddress.ip_address(ctx.client_ip))
        except ValueError:
            raise AuditError(f"client address {ctx.client_ip!r} is not an IP address") from None
    return request_id, client_ip


_HEAD_SQL = "SELECT seq, digest, timestamp FROM audit_auditevent ORDER BY seq DESC LIMIT 1"


def _sqlite_head(alias: str) -> tuple[int, str, datetime] | None:
    """The chain's head: (seq, digest, timestamp), or None when it is empty.

    SQLite only: the settings open every write transaction with BEGIN IMMEDIATE, which holds
    the database's write lock from the start, so no other writer can read the same head. The
    unique ``seq`` is the backstop.
    """
    with connections[alias].cursor() as cursor:
        cursor.execute(_HEAD_SQL)
        row = cursor.fetchone()
    if row is None:
        return None
    seq, digest, ts = row
    # SQLite through a raw cursor gives Django's naive UTC (or its text form).
    if isinstance(ts, str):
        ts = datetime.fromisoformat(ts)
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return seq, digest, ts


# PostgreSQL: the event waits in the caller's transaction and is chained during its COMMIT by
# a deferred constraint trigger (migration 0003_seal_at_commit): the trigger takes the chain
# lock (pg_advisory_xact_lock(CHAIN_LOCK_KEY)), reads the head, inserts the event with
# seq + 1 and its digest, and deletes the pending row. The lock is held only for the seal and
# the commit's WAL flush, never across a round trip to the application.
_PG_PENDING_SQL = (
    "INSERT INTO audit_pendingevent (timestamp, user_id, action, resource, pre_hash, "
    "post_hash, request_id, client_ip, details) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
)


# The event fields record() takes from its caller, stored and hashed as they are: the exported
# fields less those the chain computes (seq, timestamp, digests) and the JSON details.
_GIVEN_FIELDS = tuple(
    f for f in EVENT_FIELDS if f not in {"seq", "timestamp", "details", "prev_digest", "digest"}
)


def _chained_event(seq: int, prev_digest: str, ts: datetime, p: dict[str, Any]) -> AuditEvent:
    """The event at ``seq`` after ``prev_digest``, its digest computed from every field."""
    given = {name: p[name] for name in _GIVEN_FIELDS}
    digest = compute_digest(
        seq=seq, prev_digest=prev_digest, ts=ts, details_json=p["details"], **given
    )
    return AuditEvent(
        seq=seq,
        timestamp=ts,
        details_json=p["details"],
        prev_digest=prev_digest,
        digest=digest,
        **given,
    )


def record(
    action: str,
    resource: str,
    *,
    actor: User | int | None,
    pre: object = None,
    post: object = None,
    details: dict | None = None,
) -> None:
    """Append one event to the audit chain, in the caller's transaction.

    ``action`` names what happened (``"accounts.role_granted"``), ``resource`` what it happened
    to, by id (``"accounts.user:17"``). ``pre``/``post`` are the resource's state before and
    after (JSON-serializable, or None); only their SHA-256 is stored, never the state. The
    request id and client address come from the request context.

    Raises ``AuditError`` when called outside ``transaction.atomic()``: an event committed on
    its own could describe a change that then rolled back, or be lost while the change stays.

    Where it is called in the transaction does not matter. On PostgreSQL the event is chained
    (given its ``seq`` and digest) while the transaction commits, so concurrent writers queue
    only for their commits; read it back from ``AuditEvent`` after the commit. On SQLite it
    is chained at once (the write transaction already holds the database's lock).
    """
    alias = router.db_for_write(AuditEvent) or DEFAULT_DB_ALIAS
    if not connections[alias].in_atomic_block:
        raise AuditError(
            f"record({action!r}, ...) must run inside transaction.atomic() with the change it "
            "records"
        )
    if (
        not isinstance(action, str)
        or len(action) > MAX_ACTION_LEN
        or not ACTION_RE.fullmatch(action)
    ):
        raise AuditError(f"action {action!r} must match {ACTION_RE.pattern}")
    if not isinstance(resource, str) or not RESOURCE_RE.fullmatch(resource):
        raise AuditError(f"resource {resource!r} must look like 'app.model:id' (ids only)")
    user_id = _actor_id(actor)
    details_json = details_text(details)
    pre_hash, post_hash = state_hash(pre), state_hash(post)
    request_id, client_ip = _validated_context()
    fields = {
        "user_id": user_id,
        "action": action,
        "resource": resource,
        "pre_hash": pre_hash,
        "post_hash": post_hash,
        "request_id": request_id,
        "client_ip": client_ip,
        "details": details_json,
    }
    now = timezone.now()
    if connections[alias].vendor == "postgresql":
        with connections[alias].cursor() as cursor:
            cursor.execute(_PG_PENDING_SQL, [now, *fields.values()])
        return
    head = _sqlite_head(alias)
    seq, prev_digest, ts = 1, GENESIS_DIGEST, now
    if head is not None:
        seq, prev_digest = head[0] + 1, head[1]
        # Time never runs backwards along the chain (clock steps), so "the day's head" for
        # the daily digest is well defined.
        ts = max(ts, head[2])
    _chained_event(seq, prev_digest, ts, fields).save(force_insert=True, using=alias)


# --- verify ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DigestAnchor:
    """A signed daily digest read back from the write-once store."""

    name: str
    day: str
    head_seq: int
    head_digest: str
    signature_ok: bool


@dataclass
class VerifyResult:
    """What ``verify_chain`` found. ``broken_seq`` is the first sequence number that fails."""

    ok: bool
    events_checked: int
    head_seq: int
    head_digest: str
    digests_checked: int = 0
    broken_seq: int | None = None
    reason: str = ""
    seconds: float = 0.0
    started_at: datetime = field(default_factory=timezone.now)

    def summary(self) -> str:
        if self.ok:
            return (
                f"OK: {self.events_checked} events, head #{self.head_seq} "
                f"{self.head_digest[:16]}, {self.digests_checked} daily digests match"
            )
        return f"BROKEN at #{self.broken_seq}: {self.reason}"


ProgressCallback = Callable[[int, int], None]


def read_anchors(store: DigestStore) -> list[DigestAnchor]:
    """Every digest in the store, with its HMAC checked against AUDIT_DIGEST_KEY."""
    anchors = []
    for name, data in store.items():
        try:
            doc = json.loads(data)
            payload = {k: v for k, v in doc.items() if k != "signature"}
            head_seq, head_digest = int(doc["head_seq"]), str(doc["head_digest"])
            signature_ok = hmac.compare_digest(str(doc.get("signature", "")), sign(payload))
            day = str(doc["day"])
        except (ValueError, KeyError, TypeError, AttributeError):
            anchors.append(DigestAnchor(name, "?", 0, "", signature_ok=False))
            continue
        anchors.append(DigestAnchor(name, day, head_seq, head_digest, signature_ok))
    return anchors


# PostgreSQL builds each event's message itself (the same encoding as event_message(), which
# tests/audit/test_tamper.py checks row for row): a million rows then cross the socket as one
# text column each instead of twelve, and the timestamps are never parsed into datetimes.
PG_MESSAGE_SQL = (
    "concat_ws(E'\\x1f', '" + MESSAGE_VERSION + "', seq::text, prev_digest, "
    "to_char(timestamp AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"'), "
    "coalesce(user_id::text, ''), action, resource, pre_hash, post_hash, request_id, "
    "client_ip, details)"
)


def _chain_chunks(alias: str, chunk_size: int) -> Iterator[list[tuple[int, str, str, str]]]:
    """Lists of (seq, prev_digest, message text, digest) in seq order, streamed in chunks."""
    conn = connections[alias]
    if conn.vendor == "postgresql":
        # A plain server-side cursor: Django's row-by-row iterator layers cost more than the
        # sha256 at a million rows. The SQL is a constant; nothing to inject.
        with conn.chunked_cursor() as cursor:
            cursor.execute(
                f"SELECT seq, prev_digest, {PG_MESSAGE_SQL}, digest "  # noqa: S608
                "FROM audit_auditevent ORDER BY seq"
            )
            while rows := cursor.fetchmany(chunk_size):
                yield rows
        return
    qs = AuditEvent.objects.using(alias).order_by("seq").values_list(*VERIFY_COLUMNS)
    chunk: list[tuple[int, str, str, str]] = []
    for seq, ts, uid, action, resource, pre, post, rid, ip, details, prev_d, digest in qs.iterator(
        chunk_size=chunk_size
    ):
        message = event_message(seq, prev_d, ts, uid, action, resource, pre, post, rid, ip, details)
        chunk.append((seq, prev_d, message.decode(), digest))
        if len(chunk) >= chunk_size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def verify_chain(
    *,
    anchors: Iterable[DigestAnchor] | None = None,
    chunk_size: int = 20_000,
    progress: ProgressCallback | None = None,
    using: str | None = None,
) -> VerifyResult:
    """Recompute the whole chain in seq order and stop at the first broken event.

    Streams only the needed columns as tuples (a server-side cursor on PostgreSQL), calling
    ``progress(done, total)`` after each chunk. Checks, per
    event: the sequence has no gap, ``prev_digest`` links to the event before, and ``digest``
    matches the recomputed one. ``anchors`` (the signed daily digests, see
    :func:`read_anchors`) must each be correctly signed and name an event that exists with
    exactly that digest; a truncated tail shows as the first missing sequence number.
    """
    started, t0 = timezone.now(), time.perf_counter()
    alias = using or router.db_for_read(AuditEvent) or DEFAULT_DB_ALIAS
    by_seq: dict[int, list[DigestAnchor]] = {}
    failures: list[tuple[int, str]] = []
    n_anchors = 0
    for anchor in anchors or ():
        n_anchors += 1
        if not anchor.signature_ok:
            failures.append(
                (max(anchor.head_seq, 1), f"daily digest {anchor.name} has an invalid signature")
            )
        by_seq.setdefault(anchor.head_seq, []).append(anchor)
    # A digest sealed an empty chain: nothing to compare.
    for anchor in by_seq.pop(0, []):
        if anchor.head_digest != GENESIS_DIGEST and anchor.signature_ok:
            failures.append((1, f"daily digest for {anchor.day} names seq 0 with a digest"))

    total = AuditEvent.objects.using(alias).count() if progress else 0
    expected, prev = 1, GENESIS_DIGEST
    broken: tuple[int, str] | None = None
    sha256 = hashlib.sha256
    for chunk in _chain_chunks(alias, chunk_size):
        # The hot loop: per event two comparisons and one sha256.
        for seq, prev_d, message, digest in chunk:
            if seq != expected:
                broken = (expected, f"event #{expected} is missing (the next event is #{seq})")
                break
            if prev_d != prev:
                broken = (
                    seq,
                    f"event #{seq} does not link to event #{seq - 1} "
                    "(prev_digest differs: deleted, inserted or reordered events)",
                )
                break
            if sha256(message.encode()).hexdigest() != digest:
                broken = (seq, f"event #{seq} does not match its digest (a field was edited)")
                break
            if seq in by_seq:
                for anchor in by_seq.pop(seq):
                    if anchor.head_digest != digest:
                        broken = (
                            seq,
                            f"event #{seq} differs from the daily digest for "
                            f"{anchor.day} ({anchor.name})",
                        )
                if broken:
                    break
            prev, expected = digest, seq + 1
        if broken:
            break
        if progress:
            progress(expected - 1, total)
    checked = expected - 1  # gapless from 1, so the count is the last good seq
    if broken is None and by_seq:
        # Digests that name events past the end: the tail was cut off (or rewritten shorter).
        missing = min(by_seq)
        days = ", ".join(a.day for a in by_seq[missing])
        broken = (
            expected,
            f"the chain ends at #{expected - 1} but the daily digest for {days} "
            f"seals event #{missing}",
        )
    if broken is not None:
        failures.append(broken)
    if progress and broken:
        progress(checked, total)
    result = VerifyResult(
        ok=not failures,
        events_checked=checked,
        head_seq=expected - 1,
        head_digest=prev,
        digests_checked=n_anchors,
        seconds=time.perf_counter() - t0,
        started_at=started,
    )
    if failures:
        result.broken_seq, result.reason = min(failures)
    return result


def check_chain(
    *,
    store: DigestStore | None = None,
    with_digests: bool = True,
    save: bool = True,
    actor: User | int | None = None,
    progress: ProgressCallback | None = None,
) -> VerifyResult:
    """Verify the chain (and the stored daily digests), keep the outcome for the status panel
    and record it as an ``audit.chain_verified`` event."""
    from apps.audit.stores import get_store

    anchors = read_anchors(store or get_store()) if with_digests else None
    result = verify_chain(anchors=anchors, progress=progress)
    if result.ok:
        logger.info("audit chain %s", result.summary())
    else:
        logger.error("audit chain %s", result.summary())
    if save:
        with transaction.atomic():
            check = ChainCheck.objects.create(
                started_at=result.started_at,
                finished_at=timezone.now(),
                ok=result.ok,
                events_checked=result.events_checked,
                head_seq=result.head_seq,
                head_digest=result.head_digest,
                digests_checked=result.digests_checked,
                broken_seq=result.broken_seq,
                reason=result.reason[:300],
            )
            record(
                "audit.chain_verified",
                f"audit.chaincheck:{check.pk}",
                actor=actor,
                details={
                    "ok": result.ok,
                    "events": result.events_checked,
                    "head_seq": result.head_seq,
                    "broken_seq": result.broken_seq,
                    "digests": result.digests_checked,
                },
            )
    return result


def last_check() -> ChainCheck | None:
    return ChainCheck.objects.order_by("-finished_at", "-pk").first()


def overview() -> list[tuple[str, Any]]:
    """The audit trail's card on the overview page: its length and the last chain check."""
    from django.utils.translation import gettext as _

    check = last_check()
    if check is None:
        verdict = _("not verified yet")
    elif check.ok:
        verdict = _("intact up to #%(seq)s") % {"seq": check.head_seq}
    else:
        verdict = _("BROKEN at #%(seq)s") % {"seq": check.broken_seq}
    head = AuditEvent.objects.order_by("-seq").values_list("seq", flat=True).first() or 0
    return [(_("events"), head), (_("last chain check"), verdict)]


# --- daily digest ----------------------------------------------------------------------------


def sign(payload: dict[str, Any]) -> str:
    """HMAC-SHA256 of the payload's canonical JSON under AUDIT_DIGEST_KEY."""
    key = settings.AUDIT_DIGEST_KEY
    key_bytes = key.encode() if isinstance(key, str) else bytes(key)
    return hmac.new(key_bytes, canonical_json(payload).encode(), hashlib.sha256).hexdigest()


def key_id() -> str:
    """Names the signing key without revealing it, so a rotated key is recognisable."""
    key = settings.AUDIT_DIGEST_KEY
    key_bytes = key.encode() if isinstance(key, str) else bytes(key)
    return hashlib.sha256(b"medctl-audit-key-id" + key_bytes).hexdigest()[:16]


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """[start, end) of a calendar day in settings.TIME_ZONE, as aware datetimes."""
    tz = timezone.get_default_timezone()
    start = datetime.combine(day, datetime.min.time(), tzinfo=tz)
    end = datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=tz)
    return start, end


@dataclass(frozen=True)
class DigestResult:
    day: date
    name: str
    head_seq: int
    head_digest: str
    created: bool
    location: str


def digest_name(day: date) -> str:
    return f"{day.isoformat()}.json"


def write_daily_digest(
    day: date | None = None, *, store: DigestStore | None = None, actor: User | int | None = None
) -> DigestResult:
    """Seal a day: sign the chain head as of the end of ``day`` (default: yesterday, site time)
    and write it once to the write-once store; the write is itself audited.

    Idempotent: the document is deterministic, so a retried task finds the identical file and
    does nothing; a different document for a day already sealed is refused
    (``DigestConflict``), since that means the chain changed underneath the seal.
    """
    from apps.audit.stores import get_store

    store = store or get_store()
    if day is None:
        day = timezone.localdate() - timedelta(days=1)
    if day >= timezone.localdate():
        raise AuditError(f"{day} is not over yet in {settings.TIME_ZONE}; seal only past days")
    _, end = day_bounds(day)
    name = digest_name(day)
    with transaction.atomic():
        head = (
            AuditEvent.objects.filter(timestamp__lt=end)
            .order_by("-seq")
            .values_list("seq", "digest")
            .first()
        )
        head_seq, head_digest = head if head else (0, GENESIS_DIGEST)
        payload = {
            "format": DIGEST_FORMAT,
            "day": day.isoformat(),
            "time_zone": settings.TIME_ZONE,
            "head_seq": head_seq,
            "head_digest": head_digest,
            "algorithm": "HMAC-SHA256",
            "key_id": key_id(),
        }
        doc = dict(payload, signature=sign(payload))
        data = (json.dumps(doc, sort_keys=True, indent=2) + "\n").encode()
        resource = f"audit.digest:{day.isoformat()}"
        # Record first: if the store refuses, the event rolls back with everything else. A
        # crash between the store write and the commit leaves the file; the retry finds it
        # identical and records the missing event then.
        already = AuditEvent.objects.filter(
            action="audit.digest_written", resource=resource
        ).exists()
        if not already:
            record(
                "audit.digest_written",
                resource,
                actor=actor,
                details={
                    "head_seq": head_seq,
                    "head_digest": head_digest,
                    "store": store.kind,
                    "name": name,
                },
            )
        created, location = store.put(name, data)
        if not created and already:
            logger.info("audit digest for %s already written (%s)", day, location)
    return DigestResult(day, name, head_seq, head_digest, created, location)
