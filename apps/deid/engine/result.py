"""The per-file result every engine entry point returns."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .text.engine import Finding
from .version import ENGINE_VERSION

OK = "ok"
QUARANTINED = "quarantined"
ERROR = "error"


def sha256(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


@dataclass
class FileResult:
    """Outcome of de-identifying one input file.

    ``reason`` is a PHI-free code (plus tag numbers or counts at most) a person can act on;
    ``findings`` counts PHI by type, never values; ``outputs`` maps a (possibly pseudonymised)
    file name suffix to bytes (one entry for most kinds, several for WFDB records).
    """

    kind: str
    status: str = OK
    reason: str = ""
    input_sha256: str = ""
    output: bytes | None = field(default=None, repr=False)
    extra_outputs: dict[str, bytes] = field(default_factory=dict, repr=False)
    findings: Counter[str] = field(default_factory=Counter)
    actions: Counter[str] = field(default_factory=Counter)
    spans: list[Finding] = field(default_factory=list)
    profile: str = ""
    patient_pseudonym: str | None = None
    output_name: str | None = None
    engine_version: str = ENGINE_VERSION

    @property
    def output_sha256(self) -> str | None:
        """Hex sha256 of the main output, or None when there is none."""
        return sha256(self.output) if self.output is not None else None

    def to_report(self) -> dict[str, Any]:
        """JSON-able summary for reports and the database (no bytes, no PHI)."""
        return {
            "kind": self.kind,
            "status": self.status,
            "reason": self.reason,
            "input_sha256": self.input_sha256,
            "output_sha256": self.output_sha256,
            "extra_outputs": {k: sha256(v) for k, v in self.extra_outputs.items()},
            "findings": dict(self.findings),
            "actions": dict(self.actions),
            "profile": self.profile,
            "patient_pseudonym": self.patient_pseudonym,
            "output_name": self.output_name,
            "engine_version": self.engine_version,
        }
