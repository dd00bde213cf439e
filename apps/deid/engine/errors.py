"""Typed errors of the de-identification engine.

Every message is PHI-free by construction: it carries a stable reason code and, at most, tag
numbers, sizes and hashes. Callers may log ``str(error)`` and store ``error.reason`` as-is.
"""

from __future__ import annotations


class DeidError(Exception):
    """Base class. ``reason`` is a short machine code, ``detail`` a PHI-free explanation."""

    reason = "deid_error"

    def __init__(self, detail: str = "", *, reason: str | None = None) -> None:
        if reason:
            self.reason = reason
        self.detail = detail
        super().__init__(f"{self.reason}: {detail}" if detail else self.reason)


class CorruptInputError(DeidError):
    """The input cannot be parsed (truncated, wrong VR, absurd lengths, bad header)."""

    reason = "corrupt_input"


class UnsupportedInputError(DeidError):
    """The input parses but uses a feature the engine cannot make safe (e.g. an undecodable
    compressed transfer syntax while pixels must change)."""

    reason = "unsupported_input"


class UnsafeOutputError(DeidError):
    """The engine refused to emit an output because a safety check failed (e.g. burned-in text
    suspected but OCR unavailable, or a post-check still finds an identifier)."""

    reason = "unsafe_output"


class VaultError(DeidError):
    """The pseudonym vault could not encrypt, decrypt or authenticate a record."""

    reason = "vault_error"
