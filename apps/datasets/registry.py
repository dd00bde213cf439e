"""Who may consume a dataset version: the lineage hook for apps that do not exist yet.

Training runs and checkpoints live in other apps (``jobs``, ``checkpoints``). Datasets must not
import them, yet the consent-withdrawal report has to reach them. So those apps register
their consumer kinds here in ``AppConfig.ready`` and write a ``DatasetUse`` row through
``apps.datasets.services.record_dataset_use`` when a run starts reading a version (and the
checkpoints app once per checkpoint, for each version its run read)::

    from apps.datasets import registry
    registry.register_consumer("jobs.trainingrun", _("Training run"),
                               url=lambda pk: reverse("jobs:run_detail", args=[pk]))

Unregistered kinds still work (shown by their kind name, without a link).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

# What a consumer kind ("<app>.<model>", lower case) and a consumer's id (a primary key, or
# a key such as "42-step-100") look like, checked wherever one arrives from a URL, a query
# string or the command line.
KIND_PATTERN = re.compile(r"[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*\Z")
ID_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,64}\Z")


@dataclass(frozen=True)
class ConsumerKind:
    kind: str
    label: str
    url: Callable[[str], str] | None = None


_kinds: dict[str, ConsumerKind] = {}


def register_consumer(kind: str, label: str, *, url: Callable[[str], str] | None = None) -> None:
    """Register ``kind`` (``"<app>.<model>"``) with a display label and a detail-URL maker."""
    _kinds[kind] = ConsumerKind(kind, label, url)


def consumer_kind(kind: str) -> ConsumerKind:
    return _kinds.get(kind) or ConsumerKind(kind, kind)


def consumer_url(kind: str, consumer_id: str) -> str | None:
    found = _kinds.get(kind)
    if found is None or found.url is None:
        return None
    try:
        return found.url(consumer_id)
    except Exception:  # a consumer app's URL change must not break the privacy report
        return None
