"""De-identification profiles: versioned, hashable, diffable data.

A profile fixes every choice that changes output bytes: the PS3.15 options, the safe-private
allow-list, the text rule set and the OCR settings. ``fingerprint()`` is recorded in every
result, so each output file names the exact profile version that produced it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from functools import cached_property
from typing import Any

# CID 7050 "De-identification Method" codes (DCM scheme) for the options this engine applies.
CID_7050: dict[str, str] = {
    "basic": "113100",
    "clean_pixel_data": "113101",
    "clean_descriptors": "113105",
    "retain_long_full_dates": "113106",
    "retain_long_modified_dates": "113107",
    "retain_patient_characteristics": "113108",
    "retain_device_identity": "113109",
    "retain_uids": "113110",
    "retain_safe_private": "113111",
    "retain_institution_identity": "113112",
}
CID_7050_MEANING: dict[str, str] = {
    "113100": "Basic Application Confidentiality Profile",
    "113101": "Clean Pixel Data Option",
    "113105": "Clean Descriptors Option",
    "113106": "Retain Longitudinal Temporal Information Full Dates Option",
    "113107": "Retain Longitudinal Temporal Information Modified Dates Option",
    "113108": "Retain Patient Characteristics Option",
    "113109": "Retain Device Identity Option",
    "113110": "Retain UIDs Option",
    "113111": "Retain Safe Private Option",
    "113112": "Retain Institution Identity Option",
}


@dataclass(frozen=True)
class SafePrivate:
    """One allow-listed private element: creator string, group, element low byte (0x00-0xFF)."""

    creator: str
    group: int
    element: int

    def __post_init__(self) -> None:
        if self.group % 2 == 0 or not 0 <= self.element <= 0xFF:
            raise ValueError(f"not a private element: ({self.group:04X},xx{self.element:02X})")


@dataclass(frozen=True)
class OcrSettings:
    """Burned-in text detection settings."""

    enabled: bool = True
    # Modalities that routinely carry burned-in annotations; others are OCR'd only when
    # BurnedInAnnotation says YES.
    modalities: tuple[str, ...] = ("US", "SC", "XA", "RF", "ES", "XC", "OT", "GM", "SM", "DX")
    min_score: float = 0.5
    # Fraction of height treated as the banner band at top and bottom.
    banner_fraction: float = 0.15
    # Boxes taller than this fraction of the image, or wholly inside the central region,
    # are treated as anatomy false positives unless they contain an identifier pattern.
    max_box_height_fraction: float = 0.2
    edge_fraction: float = 0.25
    # Images with more pixels than this are screened on a downsampled copy first.
    screen_above_pixels: int = 2048 * 2048
    screen_max_side: int = 1024
    pad_px: int = 2
    # Frames whose longest side is below this are read at 2x (small ultrasound text).
    upscale_below: int = 800
    # Cine loops: frames are re-read only when their border bands change; past this many
    # distinct annotation states the file is quarantined rather than read frame by frame.
    max_frames_read: int = 64
    # When OCR is required but unavailable, quarantine instead of emitting unscreened pixels.
    require_ocr: bool = True


@dataclass(frozen=True)
class TextSettings:
    """Clinical-text settings."""

    # "mask": <TYPE_xxx> placeholders; "surrogate": fake person names (dates always shift).
    style: str = "mask"
    shift_dates: bool = True
    detect_names: bool = True
    age_threshold: int = 89
    # Store mask -> original encrypted in the vault (kind "text") when the engine has one.
    reversible: bool = False
    # Labels of the record number that is the PACS Patient ID at this site, e.g. ("住院号",):
    # a note is linked to the patient under that label only. Empty: a note that labels exactly
    # one record number (any label) as the patient's own is that patient's.
    patient_id_labels: tuple[str, ...] = ()


# (section, key, default) of settings added after profiles were first fingerprinted.
_ADDED_DEFAULTS: tuple[tuple[str, str, Any], ...] = (("text", "patient_id_labels", []),)


@dataclass(frozen=True)
class DeidProfile:
    """Which PS3.15 options apply, plus the private allow-list, text and OCR settings."""

    name: str = "default"
    version: int = 1
    retain_long_modified_dates: bool = True
    retain_patient_characteristics: bool = True
    clean_descriptors: bool = True
    retain_safe_private: bool = True
    retain_device_identity: bool = False
    retain_institution_identity: bool = False
    retain_uids: bool = False
    # "conformant" resolves X/Z, X/D, Z/D, X/Z/D and X/Z/U* to their rightmost action so the
    # IOD stays valid; "minimal" resolves them to their leftmost (remove when allowed).
    combined_action_policy: str = "conformant"
    # Outside E.1-1, also blank person names, free text and dates of any standard element.
    strict: bool = True
    safe_private: tuple[SafePrivate, ...] = ()
    ocr: OcrSettings = field(default_factory=OcrSettings)
    text: TextSettings = field(default_factory=TextSettings)

    def __post_init__(self) -> None:
        if self.combined_action_policy not in ("conformant", "minimal"):
            raise ValueError(f"unknown combined_action_policy {self.combined_action_policy!r}")
        if self.text.style not in ("mask", "surrogate"):
            raise ValueError(f"unknown text style {self.text.style!r}")
        from .text.rules import is_record_label

        unknown = [label for label in self.text.patient_id_labels if not is_record_label(label)]
        if unknown:
            raise ValueError(f"text.patient_id_labels: not a record-number label: {unknown}")

    # -- versioned data -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (stable key order). Settings added since a profile format was
        first fingerprinted are left out while at their default (``_ADDED_DEFAULTS``), so the
        fingerprint of a profile that does not use them stays what it was: results made
        under it still count as the same bytes seen before."""
        d = asdict(self)
        d["safe_private"] = [asdict(s) for s in self.safe_private]
        d["text"]["patient_id_labels"] = list(self.text.patient_id_labels)
        for section, key, default in _ADDED_DEFAULTS:
            if d[section].get(key) == default:
                del d[section][key]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeidProfile:
        """Inverse of :meth:`to_dict`; unknown keys are errors."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown profile keys: {sorted(unknown)}")
        d = dict(data)
        if "safe_private" in d:
            d["safe_private"] = tuple(SafePrivate(**s) for s in d["safe_private"])
        if "ocr" in d and isinstance(d["ocr"], dict):
            o = dict(d["ocr"])
            o["modalities"] = tuple(o.get("modalities", OcrSettings.modalities))
            d["ocr"] = OcrSettings(**o)
        if "text" in d and isinstance(d["text"], dict):
            t = dict(d["text"])
            t["patient_id_labels"] = tuple(t.get("patient_id_labels", ()))
            d["text"] = TextSettings(**t)
        return cls(**d)

    def canonical_json(self) -> str:
        """Canonical JSON used for hashing and storage."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @cached_property
    def _fingerprint(self) -> str:
        h = hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]
        return f"{self.name}@v{self.version}#{h}"

    def fingerprint(self) -> str:
        """``<name>@v<version>#<sha256 prefix>``: names the exact settings in every result."""
        return self._fingerprint

    def diff(self, other: DeidProfile) -> list[str]:
        """Readable list of changed settings, e.g. ``ocr.min_score: 0.5 -> 0.6``."""
        out: list[str] = []

        def walk(a: Any, b: Any, path: str) -> None:
            if isinstance(a, dict) and isinstance(b, dict):
                for k in sorted(set(a) | set(b)):
                    walk(a.get(k), b.get(k), f"{path}.{k}" if path else k)
            elif a != b:
                out.append(f"{path}: {json.dumps(a)} -> {json.dumps(b)}")

        walk(self.to_dict(), other.to_dict(), "")
        return out

    def evolve(self, **changes: Any) -> DeidProfile:
        """A copy with ``changes`` applied and the version bumped."""
        changes.setdefault("version", self.version + 1)
        return replace(self, **changes)

    def method_codes(self, *, pixels_cleaned: bool = False) -> list[tuple[str, str]]:
        """(code value, meaning) for DeidentificationMethodCodeSequence."""
        keys = ["basic"]
        if pixels_cleaned:
            keys.append("clean_pixel_data")
        for opt in (
            "clean_descriptors",
            "retain_long_modified_dates",
            "retain_patient_characteristics",
            "retain_device_identity",
            "retain_uids",
            "retain_safe_private",
            "retain_institution_identity",
        ):
            if getattr(self, opt):
                keys.append(opt)
        return [(CID_7050[k], CID_7050_MEANING[CID_7050[k]]) for k in keys]
