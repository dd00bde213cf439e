"""Keyed, deterministic derivations: UIDs, pseudonyms and per-patient date shifts.

All derivations use HMAC-SHA256 under sub-keys derived from one project secret, so the same
original value maps to the same replacement across files, batches and runs of one project and
to unrelated values in another project. Nothing here is reversible; reversal goes through
:class:`apps.deid.engine.vault.PseudonymVault`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass, field
from functools import lru_cache

# Domain-separation prefix: a key used here never collides with another use of the same secret.
_PREFIX = b"medctl-deid/v1/"


@lru_cache(maxsize=256)
def _subkey(secret: bytes, label: str) -> bytes:
    # Derived once per (secret, label): the walk derives UIDs for every element.
    return hmac.new(secret, _PREFIX + label.encode(), hashlib.sha256).digest()


@dataclass(frozen=True)
class ProjectKey:
    """The project secret and everything derived from it.

    ``secret`` should be 32 random bytes from the environment or a KMS adapter; it is never
    logged (``repr`` hides it).
    """

    secret: bytes = field(repr=False)
    max_date_shift_days: int = 1095

    def __post_init__(self) -> None:
        if not isinstance(self.secret, bytes) or len(self.secret) < 16:
            raise ValueError("project secret must be at least 16 bytes")
        if self.max_date_shift_days < 1:
            raise ValueError(f"max_date_shift_days must be >= 1, got {self.max_date_shift_days}")

    def _subkey(self, label: str) -> bytes:
        return _subkey(self.secret, label)

    def digest(self, label: str, value: str | bytes) -> bytes:
        """HMAC-SHA256 of ``value`` under the sub-key for ``label``."""
        data = value.encode("utf-8") if isinstance(value, str) else value
        # one-shot HMAC in OpenSSL: the walk derives a UID per element
        return hmac.digest(self._subkey(label), data, "sha256")

    def uid(self, original: str) -> str:
        """A valid ``2.25.<int>`` UID (at most 44 characters) for ``original``."""
        value = int.from_bytes(self.digest("uid", original.strip().rstrip("\x00"))[:16], "big")
        return f"2.25.{value}"

    def pseudonym(self, original: str, *, kind: str = "patient", prefix: str = "P") -> str:
        """A short upper-case pseudonym, e.g. ``P3KQ7W2M5ZB4HXN1C``; stable per (kind, value)."""
        raw = self.digest(f"pseudonym/{kind}", original.strip())[:10]
        return prefix + base64.b32encode(raw).decode().rstrip("=")

    def date_shift_days(self, patient_key: str) -> int:
        """Days (always negative, never zero) to add to every date of one patient.

        Keyed on the patient's original identifier so all studies, notes and waveforms of that
        patient move together and intervals between them are preserved.
        """
        n = int.from_bytes(self.digest("dateshift", patient_key.strip())[:8], "big")
        return -(1 + n % self.max_date_shift_days)

    def fingerprint(self) -> str:
        """A PHI-free, secret-free id of the key (first 12 hex of a keyed hash) for reports."""
        return self.digest("fingerprint", b"").hex()[:12]
