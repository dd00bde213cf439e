"""Where the de-identification keys, the output tier and the OCR switch come from.

Read from the environment (nothing is added to ``controlplane/settings.py``), strictly: a
malformed value raises ``ImproperlyConfigured`` naming the variable, never the value.

- ``DEID_PROJECT_KEY`` (or ``DEID_PROJECT_KEY_FILE``): the project secret behind every keyed
  UID, pseudonym and date shift; hex or base64, at least 16 bytes (32 recommended).
- ``DEID_VAULT_KEY`` (or ``DEID_VAULT_KEY_FILE``): the AES-256-GCM key of the pseudonym
  vault; hex or base64, exactly 32 bytes.
- ``DEID_OUTPUT_ROOT``: the de-identified tier when a data source names no ``deid_root``
  (default ``VAR_DIR/deid``).
- ``DEID_OCR``: ``auto`` (RapidOCR, the default) or ``off`` (no OCR: images that need it are
  quarantined when the profile requires OCR).

DEVELOPMENT ONLY: when a key is absent and the site runs with ``DEBUG`` or
``MEDCTL_DEV_SECRETS=1``, it is derived from ``SECRET_KEY`` with HKDF-SHA256 (a distinct
label per key). Production must set both keys: a derived project key changes every pseudonym
when SECRET_KEY rotates, and a derived vault key puts the vault behind the session secret.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from apps.deid.engine import ProjectKey

logger = logging.getLogger(__name__)

_warned: set[str] = set()


def _read(name: str) -> str | None:
    """``NAME`` from the environment, or the contents of the file named by ``NAME_FILE``."""
    if os.environ.get(name):
        return os.environ[name].strip()
    file_name = os.environ.get(f"{name}_FILE")
    if file_name:
        try:
            return Path(file_name).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ImproperlyConfigured(
                f"{name}_FILE={file_name!r} cannot be read ({type(exc).__name__})"
            ) from None
    return None


def _decode(name: str, raw: str) -> bytes:
    """Hex first (an even run of hex digits), then standard or URL-safe base64."""
    text = raw.strip()
    try:
        if len(text) % 2 == 0 and all(c in "0123456789abcdefABCDEF" for c in text):
            return bytes.fromhex(text)
        padded = text + "=" * (-len(text) % 4)
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(padded)
        return base64.b64decode(padded, validate=True)
    except (ValueError, binascii.Error):
        # Never echo the value: it is a secret.
        raise ImproperlyConfigured(f"{name} is neither hex nor base64") from None


def _dev_mode() -> bool:
    """Keys may be derived only outside production (see PRODUCTION in the settings)."""
    if getattr(settings, "PRODUCTION", False):
        return False
    return bool(settings.DEBUG) or os.environ.get("MEDCTL_DEV_SECRETS", "1").lower() in {
        "1",
        "true",
        "yes",
        "on",
    }


def _derived(name: str, label: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    if not _dev_mode():
        raise ImproperlyConfigured(
            f"{name} is not set; production sites must set {name} (or {name}_FILE)"
        )
    if name not in _warned:
        _warned.add(name)
        logger.warning(
            "%s is not set: deriving it from SECRET_KEY (development only; set %s in production)",
            name,
            name,
        )
    secret = settings.SECRET_KEY
    material = secret.encode() if isinstance(secret, str) else bytes(secret)
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"medctl-deid", info=label)
    return hkdf.derive(material)


def project_key() -> ProjectKey:
    """The project's de-identification key (keyed UIDs, pseudonyms, date shifts)."""
    raw = _read("DEID_PROJECT_KEY")
    secret = (
        _decode("DEID_PROJECT_KEY", raw)
        if raw is not None
        else _derived("DEID_PROJECT_KEY", b"deid-project-key/v1")
    )
    if len(secret) < 16:
        raise ImproperlyConfigured(f"DEID_PROJECT_KEY decodes to {len(secret)} bytes (need >= 16)")
    return ProjectKey(secret)


def vault_key() -> bytes:
    """The 32-byte AES key of the pseudonym vault."""
    raw = _read("DEID_VAULT_KEY")
    key = (
        _decode("DEID_VAULT_KEY", raw)
        if raw is not None
        else _derived("DEID_VAULT_KEY", b"deid-vault-key/v1")
    )
    if len(key) != 32:
        raise ImproperlyConfigured(f"DEID_VAULT_KEY decodes to {len(key)} bytes (need 32)")
    return key


def ocr_mode() -> Any:
    """What to hand the engine as ``ocr``: ``"auto"`` (RapidOCR) or None (off)."""
    value = os.environ.get("DEID_OCR", "auto").strip().lower()
    if value in {"auto", "on", "1", "true", "rapidocr"}:
        return "auto"
    if value in {"off", "0", "false", "none"}:
        return None
    raise ImproperlyConfigured(f"DEID_OCR={value!r} must be 'auto' or 'off'")


def output_base(deid_root: str = "") -> Path:
    """The de-identified tier: the source's ``deid_root``, else DEID_OUTPUT_ROOT or
    ``VAR_DIR/deid``."""
    if deid_root:
        return Path(deid_root)
    env = os.environ.get("DEID_OUTPUT_ROOT")
    if env:
        return Path(env)
    return Path(settings.VAR_DIR) / "deid"
