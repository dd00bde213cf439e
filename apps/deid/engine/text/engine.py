"""Clinical-text de-identification: rules + the patient's own identifiers + typed masks."""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache

from ..keys import ProjectKey
from ..profile import TextSettings
from ..vault import PseudonymVault
from .lexicon import SINGLE_SURNAMES
from .rules import PRIORITY, Hit, find_hits, resolve

# Types reported in findings (a hit's internal type may be finer, e.g. PERSON_KNOWN).
_PUBLIC_TYPE = {"PERSON_KNOWN": "PERSON"}

_FAKE_SURNAMES = "王李张刘陈杨赵黄周吴"
_FAKE_GIVEN = ["明", "华", "强", "芳", "敏", "静", "磊", "洋", "艳", "军", "杰", "娟"]
_FAKE_EN_FIRST = ["Alex", "Sam", "Jordan", "Taylor", "Morgan", "Casey", "Riley", "Jamie"]
_FAKE_EN_LAST = ["Lee", "Park", "Green", "Hill", "Stone", "Reed", "Fox", "Gray"]


@dataclass(frozen=True)
class Finding:
    """One de-identified span: its PHI type and position in the input (and in the output).

    Never holds the original text.
    """

    type: str
    start: int
    end: int
    out_start: int
    out_end: int


@dataclass
class PatientContext:
    """What the structured record says about the patient whose text this is.

    ``names`` and ``identifiers`` are always removed wherever they appear (case-insensitive,
    whitespace-insensitive); ``patient_key`` scopes consistent masks and the date shift.
    """

    patient_key: str = ""
    names: tuple[str, ...] = ()
    identifiers: tuple[str, ...] = ()
    date_shift_days: int | None = None
    # (type, value) pairs learned from cues elsewhere in the same record; removed everywhere
    # and reported under their own type.
    learned: tuple[tuple[str, str], ...] = ()

    @classmethod
    def build(
        cls,
        key: ProjectKey | None,
        *,
        patient_id: str = "",
        names: tuple[str, ...] | list[str] = (),
        identifiers: tuple[str, ...] | list[str] = (),
    ) -> PatientContext:
        """Context whose date shift matches the DICOM shift for the same ``patient_id``."""
        shift = key.date_shift_days(patient_id) if (key is not None and patient_id) else None
        variants: set[str] = set()
        for n in names:
            variants.update(v for v in name_variants(n) if not _is_placeholder(v))
        ids = {
            i.strip()
            for i in (*identifiers, patient_id)
            if i and len(i.strip()) >= 3 and not _is_placeholder(i)
        }
        return cls(patient_id, tuple(sorted(variants)), tuple(sorted(ids)), shift)


# Values already de-identified upstream; treating them as identifiers would flag every dummy.
_PLACEHOLDERS = {
    "anonymized",
    "anonymous",
    "anon",
    "removed",
    "unknown",
    "none",
    "null",
    "n/a",
    "na",
    "test",
    "patient",
    "xxx",
    "redacted",
    "deidentified",
    "de-identified",
}


def _is_placeholder(value: str) -> bool:
    return re.sub(r"[\s^=|,]+", " ", value).strip().lower() in _PLACEHOLDERS or not value.strip(
        "^=| "
    )


def name_variants(name: str) -> set[str]:
    """Spellings of one person name worth searching for: DICOM PN components and groups,
    "Given Family", "Family Given", joined CJK forms."""
    out: set[str] = set()
    for group in str(name).split("="):  # alphabetic=ideographic=phonetic
        comps = [c.strip() for c in group.split("^") if c.strip()]
        if not comps:
            continue
        joined_cjk = "".join(comps)
        if re.search(r"[\u4e00-\u9fff]", joined_cjk):
            out.add(joined_cjk)
            if len(joined_cjk) >= 2:
                out.add(joined_cjk)
        else:
            out.add(" ".join(comps))
            if len(comps) >= 2:
                out.add(f"{comps[1]} {comps[0]}")
                out.add(f"{comps[0]}, {comps[1]}")
                out.add(f"{comps[0]}{comps[1]}")
                out.add(f"{comps[1]}{comps[0]}")
            for c in comps[:2]:
                # A lone family or given name is searched only when distinctive enough.
                if len(c) >= 4:
                    out.add(c)
        out.add(group.strip())
    return {v for v in out if len(v) >= 2}


@dataclass
class TextResult:
    """De-identified text and PHI-free findings."""

    text: str
    findings: list[Finding] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        """Findings counted by PHI type."""
        return dict(Counter(f.type for f in self.findings))


def fold(text: str) -> str:
    """Same-length ASCII folding for detection: full-width forms and non-ASCII decimal digits
    become their ASCII equivalents (１３８ -> 138, ＩＤ -> ID), so rules see one alphabet while
    positions still index the original text."""
    out = []
    for ch in text:
        o = ord(ch)
        if o < 128:
            out.append(ch)
        elif 0xFF01 <= o <= 0xFF5E:
            out.append(chr(o - 0xFEE0))
        elif ch == "\u3000":
            out.append(" ")
        elif ch.isdecimal():
            out.append(str(unicodedata.decimal(ch, 0)))
        else:
            out.append(ch)
    return "".join(out)


@lru_cache(maxsize=16384)
def _needle(value: str) -> tuple[str, bool]:
    """Normalised search form of a known value, and whether it needs word boundaries."""
    needle = _normalise(value.strip())[0].strip()
    return needle, bool(re.fullmatch(r"[\w\- ]+", needle, re.ASCII))


_SEPARATORS = frozenset(" \t\r\n^,\u3000")


def _normalise(text: str) -> tuple[str, list[int]]:
    """Lower-cased text with separator runs (spaces, ``^``, commas) collapsed to one space,
    and the index of each kept character in the original: "ZHANG^^WEI" ~ "zhang wei"."""
    out: list[str] = []
    index: list[int] = []
    prev_sep = False
    for i, ch in enumerate(text):
        if ch in _SEPARATORS:
            if not prev_sep:
                out.append(" ")
                index.append(i)
            prev_sep = True
            continue
        prev_sep = False
        low = ch.lower()
        out.append(low if len(low) == 1 else ch)
        index.append(i)
    return "".join(out), index


_LEARNED_ID_TYPES = {"MEDICAL_ID", "RESIDENT_ID", "PATIENT_ID", "PHONE", "EMAIL"}


class TextDeidentifier:
    """Reusable de-identifier (compiled state + the key); thread-safe for reads."""

    def __init__(
        self,
        key: ProjectKey | None = None,
        settings: TextSettings | None = None,
        *,
        vault: PseudonymVault | None = None,
    ) -> None:
        self.key = key
        self.settings = settings or TextSettings()
        # Optional reversible tokens: mask -> original text, AES-GCM encrypted in the vault
        # (kind "text"), readable only through the audited privacy-officer service.
        self.vault = vault

    # ---------------------------------------------------------------------------------
    def _known_hits(self, text: str, ctx: PatientContext) -> list[Hit]:
        hits: list[Hit] = []
        groups: list[tuple[str, tuple[str, ...]]] = [
            ("PERSON_KNOWN", ctx.names),
            ("PATIENT_ID", ctx.identifiers),
        ]
        for typ, value in ctx.learned:
            groups.append(("PERSON_KNOWN" if typ == "PERSON" else typ, (value,)))
        norm, index = _normalise(text)
        for typ, values in groups:
            prio = PRIORITY["PATIENT_ID"] if typ not in PRIORITY else max(PRIORITY[typ], 98)
            for v in values:
                needle, bounded = _needle(v)
                if len(needle) < 2:
                    continue
                i = norm.find(needle)
                while i >= 0:
                    j = i + len(needle)
                    if not bounded or (
                        (i == 0 or not norm[i - 1].isascii() or not norm[i - 1].isalnum())
                        and (j == len(norm) or not norm[j].isascii() or not norm[j].isalnum())
                    ):
                        hits.append(Hit(typ, index[i], index[j - 1] + 1, v.lower(), prio))
                    i = norm.find(needle, i + 1)
        return hits

    def _mask(self, typ: str, key: str, scope: str, counter: dict[tuple[str, str], str]) -> str:
        public = _PUBLIC_TYPE.get(typ, typ)
        ident = (public, key)
        if ident in counter:
            return counter[ident]
        if self.key is not None:
            tag = self.key.digest("textmask", f"{scope}\x00{public}\x00{key}").hex()[:6]
        else:
            # Without a project key masks are still consistent within one call.
            tag = f"{len([k for k in counter if k[0] == public]) + 1:03d}"
        if self.settings.style == "surrogate" and public == "PERSON":
            h = hashlib.sha256(tag.encode()).digest()
            if re.search(r"[\u4e00-\u9fff]", key) or key[:1] in SINGLE_SURNAMES:
                value = _FAKE_SURNAMES[h[0] % len(_FAKE_SURNAMES)] + _FAKE_GIVEN[h[1] % 12]
            else:
                value = f"{_FAKE_EN_FIRST[h[0] % 8]} {_FAKE_EN_LAST[h[1] % 8]}"
        else:
            value = f"<{public}_{tag}>"
        counter[ident] = value
        return value

    def learn(self, text: str, ctx: PatientContext | None = None) -> PatientContext:
        """``ctx`` plus the names and identifiers that context cues reveal in ``text``, so a
        name introduced once ("患者张伟") is removed where it later appears without a cue."""
        ctx = ctx or PatientContext()
        folded = fold(text)
        hits = find_hits(
            folded,
            detect_names=self.settings.detect_names,
            age_threshold=self.settings.age_threshold,
        )
        learned = set(ctx.learned)
        for h in resolve(hits):
            value = folded[h.start : h.end].strip()
            if len(value) < 2:
                continue
            if h.type == "PERSON":
                for v in name_variants(value.replace(" ", "^")) | {value}:
                    learned.add(("PERSON", v))
            elif h.type in _LEARNED_ID_TYPES and len(value) >= 4:
                learned.add((h.type, value))
        return PatientContext(
            ctx.patient_key,
            ctx.names,
            ctx.identifiers,
            ctx.date_shift_days,
            tuple(sorted(learned)),
        )

    def deidentify(self, text: str, ctx: PatientContext | None = None) -> TextResult:
        """Replace every detected identifier in ``text``; return the text and findings."""
        ctx = ctx or PatientContext()
        folded = fold(text)
        hits = find_hits(
            folded,
            detect_names=self.settings.detect_names,
            age_threshold=self.settings.age_threshold,
        )
        hits.extend(self._known_hits(folded, ctx))
        chosen = resolve(hits)
        # A name or ID introduced with a cue ("患者张伟") is removed where it recurs without one
        # ("张伟否认…"): search the note again for what the first pass found.
        learned: set[tuple[str, str]] = set()
        for h in chosen:
            value = folded[h.start : h.end].strip()
            if h.type == "PERSON" and len(value) >= 2:
                learned.add(("PERSON", value))
            elif h.type in _LEARNED_ID_TYPES and len(value) >= 4:
                learned.add((h.type, value))
        learned -= set(ctx.learned)
        if learned:
            extra = PatientContext(learned=tuple(sorted(learned)))
            again = [
                k
                for k in self._known_hits(folded, extra)
                if not any(c.start <= k.start and k.end <= c.end for c in chosen)
            ]
            if again:
                chosen = resolve(chosen + again)
        shift = ctx.date_shift_days if self.settings.shift_dates else None
        out: list[str] = []
        findings: list[Finding] = []
        masks: dict[tuple[str, str], str] = {}
        pos = 0
        olen = 0
        for h in chosen:
            out.append(text[pos : h.start])
            olen += h.start - pos
            repl = h.replace(shift) if h.replace is not None else None
            if repl is None:
                repl = self._mask(h.type, h.key, ctx.patient_key, masks)
                if self.vault is not None and self.key is not None:
                    self.vault.record("text", repl, text[h.start : h.end])
            out.append(repl)
            findings.append(
                Finding(_PUBLIC_TYPE.get(h.type, h.type), h.start, h.end, olen, olen + len(repl))
            )
            olen += len(repl)
            pos = h.end
        out.append(text[pos:])
        return TextResult("".join(out), findings)


def deidentify_text(
    text: str,
    *,
    key: ProjectKey | None = None,
    context: PatientContext | None = None,
    settings: TextSettings | None = None,
) -> TextResult:
    """Convenience wrapper: de-identify one text with a fresh :class:`TextDeidentifier`."""
    return TextDeidentifier(key, settings).deidentify(text, context)


def hmac_hex(key: bytes, value: str) -> str:  # pragma: no cover - helper for callers
    """Keyed hex digest helper for callers that need a PHI-free id of a value."""
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()
