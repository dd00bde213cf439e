"""Encrypted pseudonym -> original mapping (AES-256-GCM).

The vault is pure: it encrypts and decrypts records in a mapping supplied by the caller (a
dict in tests, a database table on the Django side). Access control, the required reason and
the audit trail are the privacy-officer service's job; this class only guarantees that what
is stored is unreadable and tamper-evident without the key.
"""

from __future__ import annotations

import base64
import os
from collections.abc import MutableMapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import VaultError

_VERSION = b"\x01"


class PseudonymVault:
    """Store ``(kind, pseudonym) -> original`` encrypted; ``reveal`` decrypts one record.

    ``key`` is a 32-byte AES key (from the environment or a KMS adapter). Each record has a
    fresh 96-bit nonce and is bound to its own kind and pseudonym as associated data, so a
    ciphertext copied onto another pseudonym fails authentication.
    """

    def __init__(self, key: bytes, store: MutableMapping[str, bytes] | None = None) -> None:
        if not isinstance(key, bytes) or len(key) != 32:
            raise VaultError("vault key must be exactly 32 bytes", reason="vault_bad_key")
        self._aead = AESGCM(key)
        self.store: MutableMapping[str, bytes] = {} if store is None else store

    @staticmethod
    def _slot(kind: str, pseudonym: str) -> str:
        return f"{kind}:{pseudonym}"

    def record(self, kind: str, pseudonym: str, original: str) -> bool:
        """Encrypt and store ``original`` under ``pseudonym``; returns True if newly added."""
        slot = self._slot(kind, pseudonym)
        if slot in self.store:
            return False
        nonce = os.urandom(12)
        blob = self._aead.encrypt(nonce, original.encode("utf-8"), slot.encode("utf-8"))
        self.store[slot] = _VERSION + nonce + blob
        return True

    def reveal(self, kind: str, pseudonym: str) -> str:
        """Decrypt the original value behind ``pseudonym``; raises VaultError if absent/tampered."""
        slot = self._slot(kind, pseudonym)
        try:
            raw = self.store[slot]
        except KeyError:
            raise VaultError("no record for this pseudonym", reason="vault_not_found") from None
        if raw[:1] != _VERSION or len(raw) < 1 + 12 + 16:
            raise VaultError("record has an unknown format", reason="vault_bad_record")
        try:
            return self._aead.decrypt(raw[1:13], raw[13:], slot.encode("utf-8")).decode("utf-8")
        except InvalidTag:
            raise VaultError("record failed authentication", reason="vault_tampered") from None

    def __contains__(self, item: tuple[str, str]) -> bool:
        return self._slot(*item) in self.store

    def __len__(self) -> int:
        return len(self.store)

    def export(self) -> dict[str, str]:
        """The encrypted records as base64 text (safe to persist; still needs the key)."""
        return {k: base64.b64encode(v).decode() for k, v in self.store.items()}

    def load(self, records: dict[str, str]) -> None:
        """Add records produced by :meth:`export`."""
        for k, v in records.items():
            self.store[k] = base64.b64decode(v)
