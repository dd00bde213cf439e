"""The review domain's operations: sample, lease, judge, resolve, gate, release.

Views, the API, the management command and tasks all call these; none writes a review row
itself. Each write runs in ``transaction.atomic()`` with its audit event (ids, hashes and
counts only: the reviewed content is PHI-adjacent and never enters the trail). States move
by conditional UPDATE, so a retried or concurrent call changes nothing twice.
"""

from __future__ import annotations

import math
import random
import re
import secrets
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from apps.audit.services import record
from apps.core.access import roles_of
from apps.core.roles import CLINICIAN, PRIVACY, STEWARD
from apps.datasets.services import withdrawn_pseudonyms
from apps.deid.models import DeidFileResult, DeidRun
from apps.review.models import Category, Finding, ReviewBatch, ReviewItem, Verdict
from apps.review.stats import clopper_pearson_lower, cohen_kappa, min_clean_sample

if TYPE_CHECKING:
    from apps.accounts.models import User


# --- policy (settings with defaults; the lead wires the environment variables) ---------------


def policy(name: str) -> Any:
    """A review policy value: ``settings.REVIEW_<NAME>`` or the seed's default."""
    defaults = {
        "FRACTION_MIN": 0.01,  # seed 2.2: "按 1%–5% 抽样"
        "FRACTION_MAX": 0.05,
        "MIN_PER_STRATUM": 3,
        "THRESHOLD": 0.99,  # seed: "通过率 ≥ 99%"
        # "可接受阈值视法律/伦理规定调整": a batch may move within this band, never outside it.
        "THRESHOLD_MIN": 0.95,
        "THRESHOLD_MAX": 0.9999,
        "CONFIDENCE": 0.95,  # one-sided
        "DOUBLE_REVIEW_FRACTION": 0.10,
        "LEASE_SECONDS": 600,
        "ORIGINAL_GRANT_SECONDS": 600,
    }
    return getattr(settings, f"REVIEW_{name}", defaults[name])


class ReviewError(ValueError):
    """A caller asked for something the review rules do not allow; the message says why."""


class LeaseLost(ReviewError):
    """The item is no longer leased to this reviewer (expired and taken, or already judged)."""


class Withdrawn(ReviewError):
    """The item's patient withdrew consent: its content is no longer shown or judged."""

    def __init__(self) -> None:
        super().__init__(
            _("The patient withdrew consent: this item is no longer shown, reviewed or released.")
        )


def is_withdrawn(item: ReviewItem) -> bool:
    """Whether the patient behind the item's file withdrew consent (``datasets``)."""
    pseudonym = item.result.patient_pseudonym
    return bool(pseudonym) and pseudonym in withdrawn_pseudonyms()


def _withdrawn_q() -> Q | None:
    """Items of patients who withdrew consent, or None when nobody did. Withdrawals are
    few (patients, not files), so the set goes into the query as a list."""
    withdrawn = withdrawn_pseudonyms()
    return Q(result__patient_pseudonym__in=sorted(withdrawn)) if withdrawn else None


class GateClosed(ReviewError):
    """The release gate refused; ``reasons`` lists every unmet condition."""

    def __init__(self, reasons: list[str]) -> None:
        self.reasons = reasons
        super().__init__("; ".join(reasons))


def _require_role(user: Any, allowed: set[str], what: str) -> None:
    if not roles_of(user) & allowed:
        raise PermissionError(f"user {getattr(user, 'pk', None)} may not {what}")


# --- sampling --------------------------------------------------------------------------------


def stratum_of(kind: str, modality: str, source_id: int) -> str:
    """The stratum key: file kind, modality and data source."""
    return f"{kind}|{modality or '-'}|{source_id}"


@dataclass(frozen=True)
class Draw:
    """One sampled result: which stratum, and whether only the flag brought it in."""

    result_id: int
    stratum: str
    flagged: bool


def draw_sample(
    population: list[tuple[int, str, bool]], *, fraction: float, min_per_stratum: int, seed: int
) -> list[Draw]:
    """Stratified random sample of ``(result_id, stratum, flagged)`` rows, reproducible.

    Each stratum gives ``max(min_per_stratum, ceil(fraction * size))`` of its rows (all of
    them when it is smaller); every flagged row is added on top. Strata and ids are sorted
    before drawing, so the same population and seed give the same sample on any database.
    """
    rng = random.Random(seed)  # noqa: S311 - reproducible sampling, not secrecy
    by_stratum: dict[str, list[int]] = defaultdict(list)
    flagged: dict[int, str] = {}
    for result_id, stratum, is_flagged in population:
        by_stratum[stratum].append(result_id)
        if is_flagged:
            flagged[result_id] = stratum
    chosen: dict[int, Draw] = {}
    for stratum in sorted(by_stratum):
        ids = sorted(by_stratum[stratum])
        k = min(len(ids), max(min_per_stratum, math.ceil(fraction * len(ids))))
        for result_id in rng.sample(ids, k):
            chosen[result_id] = Draw(result_id, stratum, False)
    for result_id in sorted(flagged):
        chosen.setdefault(result_id, Draw(result_id, flagged[result_id], True))
    return [chosen[k] for k in sorted(chosen)]


def create_batch(
    run: DeidRun,
    *,
    acting_user: User,
    fraction: float = 0.01,
    min_per_stratum: int | None = None,
    threshold: float | None = None,
    double_review_fraction: float | None = None,
    lease_seconds: int | None = None,
    seed: int | None = None,
) -> ReviewBatch:
    """Draw the review sample of a finished run: only de-identified (status ok) files."""
    _require_role(acting_user, {STEWARD, PRIVACY}, "create review batches")
    min_per_stratum = policy("MIN_PER_STRATUM") if min_per_stratum is None else min_per_stratum
    threshold = policy("THRESHOLD") if threshold is None else threshold
    double = (
        policy("DOUBLE_REVIEW_FRACTION")
        if double_review_fraction is None
        else double_review_fraction
    )
    lease_seconds = policy("LEASE_SECONDS") if lease_seconds is None else lease_seconds
    lo, hi = policy("FRACTION_MIN"), policy("FRACTION_MAX")
    if not lo <= fraction <= hi:
        raise ReviewError(f"sample fraction {fraction} is outside the policy's {lo}–{hi}")
    tlo, thi = policy("THRESHOLD_MIN"), policy("THRESHOLD_MAX")
    if not tlo <= threshold <= thi:
        raise ReviewError(f"threshold {threshold} is outside the policy's {tlo}–{thi}")
    if not 0.0 <= double <= 1.0:
        raise ReviewError(f"double-review fraction {double} must lie in [0, 1]")
    if min_per_stratum < 1:
        raise ReviewError(f"minimum per stratum {min_per_stratum} must be at least 1")
    if lease_seconds < 30:
        raise ReviewError(f"lease of {lease_seconds} s is too short to review anything")
    seed = secrets.randbits(62) if seed is None else int(seed)

    with transaction.atomic():
        run = DeidRun.objects.select_for_update().get(pk=run.pk)
        if run.status != DeidRun.Status.DONE:
            raise ReviewError(f"de-id run {run.pk} is {run.status}, not done")
        if run.released_at is not None:
            raise ReviewError(f"de-id run {run.pk} is already released")
        if ReviewBatch.objects.filter(
            run=run, status__in=[ReviewBatch.Status.OPEN, ReviewBatch.Status.RELEASED]
        ).exists():
            raise ReviewError(f"de-id run {run.pk} already has a live review batch")
        if ReviewBatch.objects.filter(run=run, status=ReviewBatch.Status.SUPERSEDED).exists():
            # A finding closed as "rerun" condemned this run's output; a fresh sample of the
            # same output must not get a second chance to pass.
            raise ReviewError(f"de-id run {run.pk} was superseded by a re-run")
        ok = DeidFileResult.objects.filter(run=run, status=DeidFileResult.Status.OK)
        results_ok = ok.count()
        # A patient who withdrew consent is not sampled: nobody is to look at their files
        # again, and datasets never packs them, so the gate is about the files that remain.
        withdrawn = withdrawn_pseudonyms()
        if withdrawn:
            ok = ok.exclude(patient_pseudonym__in=sorted(withdrawn))
        population = [
            (pk, stratum_of(kind, modality, source_id), is_flagged)
            for pk, kind, modality, source_id, is_flagged in ok.values_list(
                "pk", "kind", "modality", "raw_file__source_id", "flagged"
            )
        ]
        if not population:
            raise ReviewError(f"de-id run {run.pk} has no de-identified files to review")
        draws = draw_sample(
            population, fraction=fraction, min_per_stratum=min_per_stratum, seed=seed
        )
        # Queue order and the double-reviewed subset come from the same seeded stream.
        rng = random.Random(seed ^ 0x5EED)  # noqa: S311 - reproducible, not secret
        order = list(range(len(draws)))
        rng.shuffle(order)
        n_double = round(double * len(draws))
        double_ids = set(rng.sample(range(len(draws)), n_double)) if n_double else set()
        batch = ReviewBatch.objects.create(
            run=run,
            fraction=fraction,
            min_per_stratum=min_per_stratum,
            seed=seed,
            threshold=threshold,
            double_review_fraction=double,
            lease_seconds=lease_seconds,
            items_total=len(draws),
            results_ok=results_ok,
            created_by_id=acting_user.pk,
        )
        ReviewItem.objects.bulk_create(
            ReviewItem(
                batch=batch,
                result_id=d.result_id,
                stratum=d.stratum,
                flagged=d.flagged,
                position=order[i],
                needs_reviews=2 if i in double_ids else 1,
            )
            for i, d in enumerate(draws)
        )
        record(
            "review.batch_created",
            f"review.reviewbatch:{batch.pk}",
            actor=acting_user,
            post={"run": run.pk, "items": len(draws), "seed": seed},
            details={
                "run_id": run.pk,
                "items": len(draws),
                "population": len(population),
                "withdrawn_not_sampled": results_ok - len(population),
                "flagged_only": sum(d.flagged for d in draws),
                "double_reviewed": n_double,
                "fraction": fraction,
                "threshold": threshold,
                "seed": str(seed),
            },
        )
    return batch


# --- the queue -------------------------------------------------------------------------------


def _free(now: Any) -> Q:
    return Q(lease_user_id__isnull=True) | Q(lease_expires_at__lte=now)


def next_item(batch: ReviewBatch, reviewer: User) -> ReviewItem | None:
    """Lease the reviewer's next item (or return the one they hold); None when none is left.

    PostgreSQL: ``SELECT … FOR UPDATE SKIP LOCKED`` lets fifty reviewers claim different rows
    without waiting on each other; the conditional UPDATE that takes the lease is the truth
    either way (SQLite serializes writers with BEGIN IMMEDIATE instead). Items this reviewer
    already judged, in any round, are never offered to them again, nor is any item of a
    patient who withdrew consent (a lease on one is handed back).
    """
    _require_role(reviewer, {CLINICIAN}, "review items")
    skip_locked = connection.features.has_select_for_update_skip_locked
    pending = ReviewItem.objects.filter(batch_id=batch.pk, status=ReviewItem.Status.PENDING)
    if (withdrawn := _withdrawn_q()) is not None:
        pending.filter(withdrawn, lease_user_id=reviewer.pk).update(
            lease_user_id=None, leased_at=None, lease_expires_at=None
        )
        pending = pending.exclude(withdrawn)
    for _attempt in range(5):
        now = timezone.now()
        with transaction.atomic():
            held = (
                pending.filter(lease_user_id=reviewer.pk, lease_expires_at__gt=now)
                .order_by("position")
                .first()
            )
            if held is not None:
                return held
            if not ReviewBatch.objects.filter(pk=batch.pk, status=ReviewBatch.Status.OPEN).exists():
                return None
            free = (
                pending.filter(_free(now))
                .exclude(pk__in=Verdict.objects.filter(reviewer_id=reviewer.pk).values("item_id"))
                .order_by("position")
            )
            candidates = free
            if skip_locked:
                candidates = free.select_for_update(skip_locked=True, of=("self",))
            item = candidates.first()
            if item is None:
                if skip_locked and free.exists():
                    continue  # every free row was being claimed by someone else just now
                return None
            lease = timedelta(seconds=batch.lease_seconds)
            taken = (
                ReviewItem.objects.filter(pk=item.pk, status=ReviewItem.Status.PENDING)
                .filter(_free(now))
                .update(lease_user_id=reviewer.pk, leased_at=now, lease_expires_at=now + lease)
            )
            if taken == 1:
                item.refresh_from_db()
                return item
    return None


def release_lease(item: ReviewItem, reviewer: User) -> bool:
    """Give an item back to the queue without a verdict (the reviewer stepped away)."""
    return bool(
        ReviewItem.objects.filter(
            pk=item.pk, lease_user_id=reviewer.pk, status=ReviewItem.Status.PENDING
        ).update(lease_user_id=None, leased_at=None, lease_expires_at=None)
    )


def _clean_region(region: Any) -> dict[str, int] | None:
    if region in (None, "", {}):
        return None
    if not isinstance(region, dict):
        raise ReviewError(f"region must be an object, not {type(region).__name__}")
    keys = set(region)
    if keys == {"start", "end"}:
        allowed = ("start", "end")
    elif keys in ({"x0", "y0", "x1", "y1"}, {"frame", "x0", "y0", "x1", "y1"}):
        allowed = ("frame", "x0", "y0", "x1", "y1")
    else:
        raise ReviewError(f"region keys {sorted(keys)} are neither a text span nor a box")
    out = {}
    for k in allowed:
        if k not in region:
            continue
        v = region[k]
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 10**9:
            raise ReviewError(f"region[{k!r}] must be a non-negative integer, not {v!r}")
        out[k] = v
    if "start" in out and out["start"] >= out["end"]:
        raise ReviewError("a text span must end after it starts")
    if "x0" in out and (out["x0"] >= out["x1"] or out["y0"] >= out["y1"]):
        raise ReviewError("a box must have positive width and height")
    return out


def submit_verdict(
    item: ReviewItem,
    reviewer: User,
    *,
    decision: str,
    category: str = "",
    region: dict[str, int] | None = None,
) -> Verdict:
    """Record a verdict on an item leased to ``reviewer``; a fail opens a finding.

    The time spent is measured by the server from the lease, so it cannot be typed in. The
    output's hash is stored with the verdict: if the file changes afterwards the verdict no
    longer covers it and the gate says so.
    """
    _require_role(reviewer, {CLINICIAN}, "review items")
    if decision not in Verdict.Decision.values:
        raise ReviewError(f"decision {decision!r} must be pass or fail")
    if decision == Verdict.Decision.FAIL and category not in Category.values:
        raise ReviewError(f"a fail needs a category, not {category!r}")
    if decision == Verdict.Decision.PASS:
        category, region = "", None
    region = _clean_region(region)

    with transaction.atomic():
        item = (
            ReviewItem.objects.select_for_update().select_related("batch", "result").get(pk=item.pk)
        )
        if item.batch.status != ReviewBatch.Status.OPEN:
            raise ReviewError(f"review batch {item.batch_id} is {item.batch.status}")
        if item.status != ReviewItem.Status.PENDING or item.lease_user_id != reviewer.pk:
            raise LeaseLost(f"review item {item.pk} is not leased to you any more")
        if is_withdrawn(item):
            raise Withdrawn()
        if Verdict.objects.filter(item=item, reviewer_id=reviewer.pk).exists():
            raise ReviewError(f"you already judged review item {item.pk}")
        now = timezone.now()
        seconds = max(0.0, (now - (item.leased_at or now)).total_seconds())
        verdict = Verdict.objects.create(
            item=item,
            reviewer=reviewer,
            round=item.round,
            decision=decision,
            category=category,
            region=region,
            seconds=round(seconds, 3),
            output_sha256=item.result.output_sha256,
        )
        done = item.reviews_done + 1
        finished = done >= item.needs_reviews
        outcome = ""
        if finished:
            failed = Verdict.objects.filter(
                item=item, round=item.round, decision=Verdict.Decision.FAIL
            ).exists()
            outcome = ReviewItem.Outcome.FAIL if failed else ReviewItem.Outcome.PASS
        changed = ReviewItem.objects.filter(
            pk=item.pk,
            round=item.round,
            reviews_done=item.reviews_done,
            lease_user_id=reviewer.pk,
            status=ReviewItem.Status.PENDING,
        ).update(
            reviews_done=done,
            status=ReviewItem.Status.DONE if finished else ReviewItem.Status.PENDING,
            outcome=outcome,
            lease_user_id=None,
            leased_at=None,
            lease_expires_at=None,
        )
        if changed != 1:  # only possible if the row lock did not hold; roll the verdict back
            raise LeaseLost(f"review item {item.pk} changed while you judged it")
        finding = None
        if decision == Verdict.Decision.FAIL:
            finding, _created = Finding.objects.get_or_create(
                item=item,
                round=item.round,
                defaults={"batch_id": item.batch_id, "category": category, "opened_by": verdict},
            )
        record(
            "review.verdict_recorded",
            f"review.reviewitem:{item.pk}",
            actor=reviewer,
            post={"verdict": verdict.pk, "decision": decision, "category": category},
            details={
                "batch_id": item.batch_id,
                "verdict_id": verdict.pk,
                "round": item.round,
                "decision": decision,
                "category": category or None,
                "finding_id": finding.pk if finding else None,
                "output_sha256": item.result.output_sha256,
            },
        )
    return verdict


# --- findings --------------------------------------------------------------------------------


def resolve_finding(
    finding: Finding, *, acting_user: User, resolution: str, scope: str = "item"
) -> Finding:
    """Close a finding. ``fixed``: the rule was fixed and outputs regenerated, so the affected
    items (the failed one, or its whole stratum) go back to the queue for a new round.
    ``rerun``: the run is superseded by a new one; this batch can never release it."""
    _require_role(acting_user, {STEWARD, PRIVACY}, "resolve findings")
    if resolution not in Finding.Resolution.values:
        raise ReviewError(f"resolution {resolution!r} must be one of {Finding.Resolution.values}")
    if scope not in ("item", "stratum"):
        raise ReviewError(f"scope {scope!r} must be item or stratum")
    with transaction.atomic():
        finding = Finding.objects.select_for_update().select_related("item").get(pk=finding.pk)
        now = timezone.now()
        closed = Finding.objects.filter(pk=finding.pk, status=Finding.Status.OPEN).update(
            status=Finding.Status.RESOLVED,
            resolution=resolution,
            resolved_by_id=acting_user.pk,
            resolved_at=now,
        )
        if closed != 1:
            raise ReviewError(f"finding {finding.pk} is already resolved")
        requeued = 0
        if resolution == Finding.Resolution.FIXED:
            affected = ReviewItem.objects.filter(batch_id=finding.batch_id)
            if scope == "item":
                affected = affected.filter(pk=finding.item_id)
            else:
                affected = affected.filter(stratum=finding.item.stratum)
            requeued = affected.update(
                round=F("round") + 1,
                reviews_done=0,
                status=ReviewItem.Status.PENDING,
                outcome="",
                lease_user_id=None,
                leased_at=None,
                lease_expires_at=None,
            )
            Finding.objects.filter(pk=finding.pk).update(requeued=requeued)
        else:
            ReviewBatch.objects.filter(pk=finding.batch_id, status=ReviewBatch.Status.OPEN).update(
                status=ReviewBatch.Status.SUPERSEDED
            )
            Finding.objects.filter(batch_id=finding.batch_id, status=Finding.Status.OPEN).update(
                status=Finding.Status.RESOLVED,
                resolution=Finding.Resolution.RERUN,
                resolved_by_id=acting_user.pk,
                resolved_at=now,
            )
        record(
            "review.finding_resolved",
            f"review.finding:{finding.pk}",
            actor=acting_user,
            pre={"status": Finding.Status.OPEN},
            post={"status": Finding.Status.RESOLVED, "resolution": resolution},
            details={
                "batch_id": finding.batch_id,
                "item_id": finding.item_id,
                "resolution": resolution,
                "scope": scope,
                "requeued": requeued,
            },
        )
    finding.refresh_from_db()
    return finding


# --- the gate --------------------------------------------------------------------------------


@dataclass
class StratumStat:
    """Pass rate and bound of one stratum (shown; the gate itself is on the batch)."""

    key: str
    items: int
    reviewed: int
    passed: int
    rate: float | None
    lower_bound: float


@dataclass
class Gate:
    """Everything the release decision rests on, with every reason it is closed."""

    batch_id: int
    run_id: int
    status: str
    items: int
    reviewed: int
    passed: int
    failed: int
    stale: int
    withdrawn: int
    rate: float | None
    lower_bound: float
    threshold: float
    confidence: float
    unresolved_findings: int
    kappa: float | None
    kappa_pairs: int
    min_clean_sample: int
    strata: list[StratumStat] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    @property
    def releasable(self) -> bool:
        return not self.reasons

    @property
    def required(self) -> int:
        """Items that must be reviewed: all but those left out by a consent withdrawal."""
        return self.items - self.withdrawn

    def as_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "strata"}
        data["required"] = self.required
        data["strata"] = [s.__dict__ for s in self.strata]
        data["releasable"] = self.releasable
        return data


def gate(batch: ReviewBatch) -> Gate:
    """The batch's pass rate, its one-sided Clopper–Pearson lower bound and the verdict.

    An item passes when every verdict of its current round passed (a double-review
    disagreement counts as a fail). Open when: the batch is open, every item is reviewed,
    no verdict is stale, no finding is unresolved, and the bound reaches the threshold.

    Items of a patient who withdrew consent are not required: they are never offered again
    and their files are never packed. A current verdict already given on one still counts,
    pass or fail: it is evidence about the run's rules, which de-identified everybody else's
    files too, and a withdrawal must not wash a failure out of the rate.
    """
    confidence = policy("CONFIDENCE")
    items = list(
        ReviewItem.objects.filter(batch_id=batch.pk).values(
            "pk",
            "stratum",
            "status",
            "outcome",
            "round",
            "result__output_sha256",
            "result__status",
            "result__patient_pseudonym",
        )
    )
    withdrawn_patients = withdrawn_pseudonyms()
    verdicts = list(
        Verdict.objects.filter(item__batch_id=batch.pk)
        .order_by("created", "pk")
        .values("item_id", "round", "decision", "output_sha256")
    )
    by_round: dict[tuple[int, int], list[dict[str, Any]]] = defaultdict(list)
    for v in verdicts:
        by_round[(v["item_id"], v["round"])].append(v)
    stale = not_ok = withdrawn = 0
    strata: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    reviewed = passed = 0
    for it in items:
        current = by_round.get((it["pk"], it["round"]), [])
        is_stale = any(v["output_sha256"] != it["result__output_sha256"] for v in current)
        if it["result__patient_pseudonym"] in withdrawn_patients and (
            it["status"] != ReviewItem.Status.DONE or is_stale
        ):
            withdrawn += 1
            continue
        s = strata[it["stratum"]]
        s[0] += 1
        if it["result__status"] != DeidFileResult.Status.OK:
            not_ok += 1
        if it["status"] != ReviewItem.Status.DONE:
            continue
        if is_stale:
            stale += 1
            continue
        reviewed += 1
        s[1] += 1
        if it["outcome"] == ReviewItem.Outcome.PASS:
            passed += 1
            s[2] += 1
    pairs = [(vs[0]["decision"], vs[1]["decision"]) for vs in by_round.values() if len(vs) >= 2]
    unresolved = Finding.objects.filter(batch_id=batch.pk, status=Finding.Status.OPEN).count()
    lower = clopper_pearson_lower(passed, reviewed, confidence) if reviewed else 0.0
    g = Gate(
        batch_id=batch.pk,
        run_id=batch.run_id,
        status=batch.status,
        items=len(items),
        reviewed=reviewed,
        passed=passed,
        failed=reviewed - passed,
        stale=stale,
        withdrawn=withdrawn,
        rate=(passed / reviewed) if reviewed else None,
        lower_bound=lower,
        threshold=batch.threshold,
        confidence=confidence,
        unresolved_findings=unresolved,
        kappa=cohen_kappa(pairs),
        kappa_pairs=len(pairs),
        min_clean_sample=min_clean_sample(batch.threshold, confidence),
        strata=[
            StratumStat(
                key=key,
                items=s[0],
                reviewed=s[1],
                passed=s[2],
                rate=(s[2] / s[1]) if s[1] else None,
                lower_bound=clopper_pearson_lower(s[2], s[1], confidence) if s[1] else 0.0,
            )
            for key, s in sorted(strata.items())
        ],
    )
    if batch.status != ReviewBatch.Status.OPEN:
        g.reasons.append(_("The review batch is %(status)s.") % {"status": batch.status})
    required = len(items) - withdrawn
    if reviewed + stale < required:
        waiting = required - reviewed - stale
        g.reasons.append(
            ngettext(
                "%(n)d of %(total)d sampled items is not reviewed yet.",
                "%(n)d of %(total)d sampled items are not reviewed yet.",
                waiting,
            )
            % {"n": waiting, "total": required}
        )
    if stale:
        g.reasons.append(
            ngettext(
                "%(n)d item changed after it was reviewed and must be reviewed again.",
                "%(n)d items changed after they were reviewed and must be reviewed again.",
                stale,
            )
            % {"n": stale}
        )
    if not_ok:
        g.reasons.append(
            ngettext(
                "%(n)d sampled file is no longer de-identified (quarantined or failed).",
                "%(n)d sampled files are no longer de-identified (quarantined or failed).",
                not_ok,
            )
            % {"n": not_ok}
        )
    ok_now = DeidFileResult.objects.filter(
        run_id=batch.run_id, status=DeidFileResult.Status.OK
    ).count()
    if ok_now != batch.results_ok:
        g.reasons.append(
            _(
                "The run's de-identified files changed since the sample was drawn "
                "(%(then)d then, %(now)d now): draw a new sample."
            )
            % {"then": batch.results_ok, "now": ok_now}
        )
    if unresolved:
        g.reasons.append(
            ngettext("%(n)d finding is unresolved.", "%(n)d findings are unresolved.", unresolved)
            % {"n": unresolved}
        )
    if lower < batch.threshold:
        g.reasons.append(
            _(
                "The %(conf)d%% lower bound of the pass rate, %(lower).4f, is below the "
                "threshold %(threshold).4f (with no failures that takes %(min)d reviews)."
            )
            % {
                "conf": round(confidence * 100),
                "lower": lower,
                "threshold": batch.threshold,
                "min": g.min_clean_sample,
            }
        )
    return g


def live_batch(run: DeidRun) -> ReviewBatch | None:
    """The run's open or released review batch, if any."""
    return (
        ReviewBatch.objects.filter(
            run_id=run.pk, status__in=[ReviewBatch.Status.OPEN, ReviewBatch.Status.RELEASED]
        )
        .order_by("-created")
        .first()
    )


def release_run(run: DeidRun, *, acting_user: User) -> DeidRun:
    """Release a de-identified run for dataset packing, only through an open gate.

    Sets ``DeidRun.released_at`` by conditional UPDATE (``released_at IS NULL``): two
    concurrent releases cannot both succeed. A refusal is audited too, with its reasons'
    count, then raised as ``GateClosed``.
    """
    _require_role(acting_user, {STEWARD, PRIVACY}, "release de-identified data")
    reasons: list[str] = []
    batch_id: int | None = None
    with transaction.atomic():
        locked = DeidRun.objects.select_for_update().get(pk=run.pk)
        batch = live_batch(locked)
        if locked.released_at is not None:
            reasons.append(_("De-id run %(run)d is already released.") % {"run": locked.pk})
        elif locked.status != DeidRun.Status.DONE:
            reasons.append(_("De-id run %(run)d is not finished.") % {"run": locked.pk})
        elif batch is None or batch.status != ReviewBatch.Status.OPEN:
            reasons.append(_("De-id run %(run)d has no open review batch.") % {"run": locked.pk})
        else:
            batch = ReviewBatch.objects.select_for_update().get(pk=batch.pk)
            batch_id = batch.pk
            g = gate(batch)
            reasons.extend(g.reasons)
        if not reasons:
            now = timezone.now()
            changed = DeidRun.objects.filter(
                pk=locked.pk, released_at__isnull=True, status=DeidRun.Status.DONE
            ).update(released_at=now, released_by_id=acting_user.pk)
            moved = ReviewBatch.objects.filter(pk=batch.pk, status=ReviewBatch.Status.OPEN).update(
                status=ReviewBatch.Status.RELEASED, released_at=now
            )
            if changed != 1 or moved != 1:
                raise GateClosed([_("The run or its batch changed during the release.")])
            record(
                "review.run_released",
                f"deid.deidrun:{locked.pk}",
                actor=acting_user,
                pre={"released_at": None},
                post={"released_at": now.isoformat(), "batch": batch.pk},
                details={
                    "batch_id": batch.pk,
                    "reviewed": g.reviewed,
                    "passed": g.passed,
                    "lower_bound": round(g.lower_bound, 6),
                    "threshold": g.threshold,
                    "kappa": None if g.kappa is None else round(g.kappa, 4),
                    "files_ok": locked.files_ok,
                    "files_quarantined": locked.files_quarantined,
                },
            )
            locked.refresh_from_db()
            return locked
    with transaction.atomic():
        record(
            "review.release_refused",
            f"deid.deidrun:{run.pk}",
            actor=acting_user,
            details={"batch_id": batch_id, "reasons": len(reasons)},
        )
    raise GateClosed(reasons)


def released_results(run: DeidRun) -> QuerySet[DeidFileResult]:
    """What a released run lets datasets pack: its de-identified files, never quarantined or
    errored ones, and nothing at all from a run that is not released."""
    return DeidFileResult.objects.filter(
        run_id=run.pk, run__released_at__isnull=False, status=DeidFileResult.Status.OK
    )


# --- dashboards ------------------------------------------------------------------------------


def progress(batch: ReviewBatch) -> dict[str, int]:
    """Items reviewed, leased now and waiting, of those still to be reviewed: pending items
    of a patient who withdrew consent are counted apart (``withdrawn``), not as waiting."""
    now = timezone.now()
    items = ReviewItem.objects.filter(batch_id=batch.pk)
    pending = items.filter(status=ReviewItem.Status.PENDING)
    withdrawn = 0
    if (withdrawn_q := _withdrawn_q()) is not None:
        withdrawn = pending.filter(withdrawn_q).count()
        pending = pending.exclude(withdrawn_q)
    done = items.filter(status=ReviewItem.Status.DONE).count()
    total = done + pending.count()
    leased = pending.filter(lease_expires_at__gt=now).count()
    return {
        "total": total,
        "done": done,
        "leased": leased,
        "waiting": total - done - leased,
        "withdrawn": withdrawn,
        "percent": round(100 * done / total) if total else 0,
    }


def reviewer_stats(batch: ReviewBatch | None = None) -> list[dict[str, Any]]:
    """Per reviewer: verdicts, fails, median seconds per item and items per hour."""
    qs = Verdict.objects.all()
    if batch is not None:
        qs = qs.filter(item__batch_id=batch.pk)
    rows: dict[int, dict[str, Any]] = {}
    for reviewer_id, username, decision, seconds in qs.values_list(
        "reviewer_id", "reviewer__username", "decision", "seconds"
    ):
        row = rows.setdefault(
            reviewer_id, {"reviewer_id": reviewer_id, "username": username, "s": [], "fails": 0}
        )
        row["s"].append(seconds)
        row["fails"] += decision == Verdict.Decision.FAIL
    out = []
    for row in rows.values():
        secs = row.pop("s")
        total = sum(secs)
        row["verdicts"] = len(secs)
        row["median_seconds"] = round(statistics.median(secs), 1)
        row["per_hour"] = round(3600 * len(secs) / total, 1) if total > 0 else None
        out.append(row)
    return sorted(out, key=lambda r: (-r["verdicts"], r["username"]))


def failures_by_category(batch: ReviewBatch) -> dict[str, int]:
    """Failing verdicts per category, every category present (zeros included)."""
    counts = Counter(
        Verdict.objects.filter(item__batch_id=batch.pk, decision=Verdict.Decision.FAIL).values_list(
            "category", flat=True
        )
    )
    return {c: counts.get(c, 0) for c in Category.values}


# --- who sees what, and the original beside the copy -----------------------------------------


def visible_items(user: Any) -> QuerySet[ReviewItem]:
    """Items a user may open: stewards and privacy officers all; a clinician only those
    leased to them or that they already judged (no browsing of other people's work)."""
    user_roles = roles_of(user)
    qs = ReviewItem.objects.select_related(
        "batch", "result", "result__raw_file", "result__raw_file__source", "result__run"
    )
    if user_roles & {STEWARD, PRIVACY}:
        return qs
    if CLINICIAN in user_roles:
        return qs.filter(
            Q(lease_user_id=user.pk)
            | Q(pk__in=Verdict.objects.filter(reviewer_id=user.pk).values("item_id"))
        )
    return qs.none()


def _inside(root: str, rel: str) -> Path:
    if not root or not rel:
        raise ReviewError("the file has no stored location")
    base = Path(root).resolve()
    path = (base / rel).resolve()
    if not path.is_relative_to(base):
        raise ReviewError("the stored location leaves its root")
    return path


def output_path(item: ReviewItem) -> Path:
    """The de-identified file under the run's output root (never outside it); refused
    (``Withdrawn``) once the patient withdrew consent, to every role."""
    if is_withdrawn(item):
        raise Withdrawn()
    return _inside(item.result.run.output_root, item.result.output_relpath)


def original_path(item: ReviewItem) -> Path:
    """The raw file under its source's raw root (never outside it); refused like
    ``output_path`` once the patient withdrew consent."""
    if is_withdrawn(item):
        raise Withdrawn()
    raw = item.result.raw_file
    return _inside(raw.source.raw_root, raw.relpath)


ORIGINAL_REASONS = {
    "dispute": "a reviewer's verdict is disputed",
    "incident": "a suspected privacy incident",
    "quality": "quality assurance of the de-identification rules",
    "legal": "a legal or ethics board request",
}
_TICKET_RE = re.compile(r"^[A-Za-z0-9._-]{0,40}$")


def open_original(item: ReviewItem, *, acting_user: User, reason: str, ticket: str = "") -> Path:
    """Give a privacy officer the raw file behind an item, with a reason, audited.

    The reason is a code and the ticket a short reference, because audit details never carry
    free text (it could hold PHI). Raises before auditing when the file cannot be found, so
    the trail records only openings that showed something.
    """
    _require_role(acting_user, {PRIVACY}, "open originals")
    if reason not in ORIGINAL_REASONS:
        raise ReviewError(f"reason {reason!r} must be one of {sorted(ORIGINAL_REASONS)}")
    if not _TICKET_RE.fullmatch(ticket or ""):
        raise ReviewError("the ticket reference may hold only letters, digits, '.', '_', '-'")
    raw = item.result.raw_file
    path = original_path(item)
    if not path.is_file():
        raise ReviewError(f"the original of review item {item.pk} is not on disk")
    with transaction.atomic():
        record(
            "review.original_opened",
            f"review.reviewitem:{item.pk}",
            actor=acting_user,
            details={
                "raw_file_id": raw.pk,
                "reason": reason,
                "ticket": ticket or None,
                "raw_sha256": raw.sha256,
            },
        )
    return path


# --- overview ----------------------------------------------------------------------------------


def overview() -> list[tuple[str, Any]]:
    """Review's card on the overview page: what waits for clinicians, what was released."""
    open_batches = ReviewBatch.objects.filter(status=ReviewBatch.Status.OPEN)
    pending = ReviewItem.objects.filter(batch__in=open_batches, status=ReviewItem.Status.PENDING)
    if (withdrawn_q := _withdrawn_q()) is not None:
        pending = pending.exclude(withdrawn_q)
    waiting = pending.count()
    return [
        (_("open batches"), open_batches.count()),
        (_("items waiting"), waiting),
        (_("runs released"), DeidRun.objects.filter(released_at__isnull=False).count()),
    ]
