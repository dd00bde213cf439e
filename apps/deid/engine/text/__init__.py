"""Clinical-text de-identification (Chinese and English)."""

from __future__ import annotations

from .engine import (
    Finding,
    PatientContext,
    TextDeidentifier,
    TextResult,
    deidentify_text,
    name_variants,
)
from .rules import is_valid_resident_id, resident_id_check_char

__all__ = [
    "Finding",
    "PatientContext",
    "TextDeidentifier",
    "TextResult",
    "deidentify_text",
    "is_valid_resident_id",
    "name_variants",
    "resident_id_check_char",
]
