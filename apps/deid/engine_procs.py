"""The engine's side of ``deid_run --workers N``: code that runs in spawned child processes.

No Django here (a spawned child has no settings and must never open the database): each
child builds one engine and returns, per file, the engine's result and the vault records it
wrote, which the parent persists.
"""

from __future__ import annotations

from typing import Any

from apps.deid.engine import DeidEngine, DeidProfile, FileResult, ProjectKey, PseudonymVault
from apps.deid.engine.text import PatientContext

_child: dict[str, Any] = {}


def init(secret: bytes, vault_key: bytes, profile: dict[str, Any], ocr: Any) -> None:
    """Build the engine once per child; its vault writes go to a dict the parent persists."""
    store: dict[str, bytes] = {}
    _child["store"] = store
    _child["engine"] = DeidEngine(
        ProjectKey(secret),
        DeidProfile.from_dict(profile),
        vault=PseudonymVault(vault_key, store=store),
        ocr=ocr,
    )


def process(
    data: bytes, name: str, ctx: PatientContext | None
) -> tuple[FileResult, dict[str, bytes]]:
    """One file through the child's engine: its result and the new vault records."""
    store = _child["store"]
    result = _child["engine"].process(data, name=name, context=ctx)
    records = dict(store)
    store.clear()
    return result, records
