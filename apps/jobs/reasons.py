"""Why a job waits, in plain words, and what would unblock it (English and 简体中文).

The scheduler reports a one-word reason (Slurm's ``Reason=`` field) for a pending job; the
run page shows :func:`explain` instead of the bare word, and keeps the word beside it for
whoever talks to the cluster administrators.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.utils.functional import Promise
from django.utils.translation import gettext_lazy as _


@dataclass(frozen=True)
class Explanation:
    """``what``: why it waits; ``unblock``: what would let it start (empty when nothing is
    needed but patience)."""

    code: str
    what: str | Promise
    unblock: str | Promise


_REASONS: dict[str, tuple[Promise, Promise | str]] = {
    "None": (_("No reason given: the job is about to be considered."), ""),
    "Resources": (
        _("Waiting for enough free nodes/GPUs; it is next in line for them."),
        _("Nothing to do: it starts when running jobs finish. Fewer nodes would start sooner."),
    ),
    "Priority": (
        _("Jobs with a higher priority are ahead of it in the queue."),
        _("Wait, or ask the cluster administrators to raise its priority or QoS."),
    ),
    "QOSMaxGRESPerUser": (
        _("Your QoS limit on GPUs per user is reached by your other jobs."),
        _("Cancel or wait for your other GPU jobs, or use a QoS with a higher GPU limit."),
    ),
    "QOSMaxGRESPerJob": (
        _("The job asks for more GPUs than its QoS allows for one job."),
        _("Cancel it and launch with fewer GPUs, or choose a QoS that allows this many."),
    ),
    "QOSMaxNodePerJobLimit": (
        _("The job asks for more nodes than its QoS allows."),
        _("Cancel it and launch with fewer nodes, or choose another QoS."),
    ),
    "QOSMaxJobsPerUserLimit": (
        _("You already run as many jobs as your QoS allows."),
        _("Wait for one of your jobs to finish, or cancel one."),
    ),
    "QOSGrpGRES": (
        _("The GPU budget of the QoS group is used up by other jobs."),
        _("Wait for the group's jobs to finish, or ask for a larger group limit."),
    ),
    "AssocGrpGRES": (
        _("Your account's GPU limit is used up by jobs of the account."),
        _("Wait, or ask the administrators to raise the account's GPU limit."),
    ),
    "AssocMaxJobsLimit": (
        _("Your account runs as many jobs as it may."),
        _("Wait for a job of the account to finish."),
    ),
    "ReqNodeNotAvail": (
        _("A node the job needs is down, drained or reserved."),
        _("Ask the administrators to return the node to service, or launch without it."),
    ),
    "PartitionTimeLimit": (
        _("The time limit is longer than the partition allows; it will never start."),
        _("Cancel it and launch again with a shorter time limit or another partition."),
    ),
    "PartitionNodeLimit": (
        _("The partition does not allow this many nodes; it will never start."),
        _("Cancel it and launch again with fewer nodes or another partition."),
    ),
    "PartitionConfig": (
        _("The request does not fit the partition (CPUs, memory or GPUs per node)."),
        _("Cancel it and launch again with a smaller request or another partition."),
    ),
    "PartitionDown": (
        _("The partition is down."),
        _("Wait for the administrators to bring it up, or use another partition."),
    ),
    "PartitionInactive": (
        _("The partition is not accepting jobs to run."),
        _("Wait for the administrators, or use another partition."),
    ),
    "Reservation": (
        _("The job waits for its reservation to start."),
        _("Nothing to do: it starts with the reservation."),
    ),
    "BeginTime": (
        _("The job may not start before its begin time (e.g. just after a requeue)."),
        _("Nothing to do: it becomes eligible within seconds to minutes."),
    ),
    "Dependency": (
        _("The job waits for another job it depends on."),
        _("Wait for that job to finish."),
    ),
    "DependencyNeverSatisfied": (
        _("The job it depends on failed; it will never start."),
        _("Cancel it."),
    ),
    "JobHeldUser": (_("The job was held by its owner."), _("Release it, or cancel it.")),
    "JobHeldAdmin": (_("The job was held by an administrator."), _("Ask the administrators.")),
    "BadConstraints": (
        _("No node can satisfy the request; it will never start."),
        _("Cancel it and launch with a request that fits the nodes."),
    ),
    "InvalidAccount": (
        _("The account is not valid for this user; it will never start."),
        _("Cancel it and launch with an account you belong to."),
    ),
    "InvalidQOS": (
        _("The QoS is not valid for this user or account."),
        _("Cancel it and launch with a QoS you may use."),
    ),
    "NodeDown": (
        _("A node the job needs is down."),
        _("Wait for the administrators to return it to service."),
    ),
    "Licenses": (_("Waiting for a license."), _("Wait for a license to be released.")),
    "launch failed requeued held": (
        _("Starting the job failed and the scheduler held it."),
        _("Ask the administrators to check the node, then release or cancel the job."),
    ),
}


def explain(reason: str) -> Explanation | None:
    """Plain words for a scheduler reason, or None when there is no reason to show."""
    code = (reason or "").strip()
    if not code:
        return None
    if code in _REASONS:
        what, unblock = _REASONS[code]
        return Explanation(code, what, unblock)
    for prefix in ("QOSMax", "QOSGrp", "AssocGrp", "AssocMax"):
        if code.startswith(prefix):
            return Explanation(
                code,
                _("A limit of your QoS or account (%(code)s) holds the job back.") % {"code": code},
                _("Wait for your other jobs, or ask the administrators about the limit."),
            )
    return Explanation(
        code,
        _("The scheduler says: %(code)s.") % {"code": code},
        _("See the scheduler documentation for this reason, or ask the administrators."),
    )


def known_reasons() -> list[str]:
    return sorted(_REASONS)
