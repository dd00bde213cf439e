"""DICOM header de-identification: PS3.15 Table E.1-1 with the options of a profile.

The walk applies one action per element, recursing into every sequence item. Beyond the
table (``profile.strict``) it blanks person names, cleans free text, shifts or blanks dates
and re-keys instance UIDs wherever they appear, so unlisted, retired and unknown elements do
not become a side door. A post-check re-reads the output and refuses it if a known identifier
of the patient is still present in any element at any depth.
"""

from __future__ import annotations

import io
import re
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import lru_cache
from typing import Any

import pydicom
from pydicom.datadict import dictionary_has_tag, dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    UID_dictionary,
)

from .confidentiality import resolve_action, rule_for
from .errors import CorruptInputError, DeidError, UnsafeOutputError, UnsupportedInputError
from .keys import ProjectKey
from .profile import DeidProfile
from .result import OK, QUARANTINED, FileResult, sha256
from .text.engine import PatientContext, TextDeidentifier
from .vault import PseudonymVault
from .version import ENGINE_VERSION

PIXEL_DATA = 0x7FE00010
_TEXT_VRS = {"LT", "ST", "UT"}
_SHORT_TEXT_VRS = {"LO", "SH", "UC", "CS", "AE", "UR"}
_BINARY_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "UN"}
_NUMERIC_VRS = {"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"}
_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
# Patient-identifying elements whose values feed the "always remove wherever it appears" list.
_PATIENT_NAME_TAGS = (0x00100010, 0x00101001, 0x00101005, 0x00101060, 0x00102297)
_PATIENT_ID_TAGS = (
    0x00100020,
    0x00101000,
    0x00080050,
    0x00380010,
    0x00101090,
    0x00380060,
    0x00401001,
    0x00400009,
    0x00400253,
    0x00200010,
    0x00402016,
    0x00402017,
    0x00120040,
    0x00120042,
)


@dataclass
class _Walk:
    """State shared by one file's walk."""

    profile: DeidProfile
    key: ProjectKey
    text: TextDeidentifier
    ctx: PatientContext
    shift: int | None
    actions: Counter[str] = field(default_factory=Counter)
    findings: Counter[str] = field(default_factory=Counter)
    known: KnownMatcher | None = None


# ------------------------------------------------------------------------------------------
def read_dicom(data: bytes) -> Dataset:
    """Parse DICOM bytes (with or without preamble/meta); raise CorruptInputError on failure.

    Every element is converted once so that deferred parse errors (wrong VR, absurd lengths,
    bad character sets) surface here as a typed error rather than half-way through the walk.
    """
    if len(data) < 8:
        raise CorruptInputError("file shorter than one element", reason="dicom_truncated")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
            _check_consumed(ds, len(data))
            _touch(ds, 0)
            meta = getattr(ds, "file_meta", None)
            if meta is not None:
                for tag in list(meta._dict):
                    _ = meta[tag].value
    except DeidError:
        raise
    except RecursionError:
        raise CorruptInputError("sequence nesting too deep", reason="dicom_nesting") from None
    except Exception as exc:  # pydicom raises many types; messages may quote values (PHI)
        raise CorruptInputError(type(exc).__name__, reason="dicom_unparseable") from None
    if len(ds) == 0:
        raise CorruptInputError("no data elements", reason="dicom_empty")
    if "SOPClassUID" not in ds and "PixelData" not in ds and "PatientID" not in ds:
        raise CorruptInputError("no SOP Class, patient or pixel data", reason="dicom_not_a_dataset")
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is not None and not (isinstance(ts, UID) and ts.is_transfer_syntax):
        raise CorruptInputError("transfer syntax unknown", reason="dicom_unparseable")
    _check_pixel_length(ds)
    return ds


def _check_consumed(ds: Dataset, size: int) -> None:
    """pydicom stops silently when an element header is cut off; bytes left after the last
    parsed element mean the file was truncated or damaged there."""
    elems = list(ds._dict.values())
    if not elems:
        return
    last = elems[-1]
    tell = getattr(last, "value_tell", None)
    length = getattr(last, "length", None)
    if not isinstance(tell, int) or not isinstance(length, int) or length == 0xFFFFFFFF:
        return  # already converted or undefined length: the reader consumed to a delimiter
    left = size - (tell + length)
    if left > 0:
        raise CorruptInputError(f"{left} unparsed trailing bytes", reason="dicom_truncated")


def _touch(ds: Dataset, depth: int) -> None:
    if depth > 32:
        raise CorruptInputError("sequence nesting deeper than 32", reason="dicom_nesting")
    # pydicom accepts a short read at end of file silently; a raw value shorter than its
    # declared length means the file was truncated inside that element.
    for raw in list(ds._dict.values()):
        length = getattr(raw, "length", None)
        value = getattr(raw, "value", None)
        if (
            isinstance(length, int)
            and length != 0xFFFFFFFF
            and isinstance(value, (bytes, bytearray))
            and len(value) != length
        ):
            raise CorruptInputError(
                f"element ({int(raw.tag) >> 16:04X},{int(raw.tag) & 0xFFFF:04X}) truncated",
                reason="dicom_truncated",
            )
    for tag, raw in list(ds._dict.items()):
        if isinstance(raw, RawDataElement) and _raw_vr(raw) in _SKIP_VRS:
            continue  # decoded on demand; kept numbers and bytes are written back raw
        elem = ds[tag]
        if elem.VR == "SQ":
            for item in elem.value:
                _touch(item, depth + 1)
        else:
            _ = elem.value


_SKIP_VRS = _NUMERIC_VRS | {"IS", "DS", "OB", "OW", "OF", "OD", "OL", "OV", "AT"}


def _raw_vr(raw: Any) -> str:
    vr = getattr(raw, "VR", None)
    if vr in (None, "UN"):
        try:
            vr = dictionary_VR(raw.tag)
        except KeyError:
            vr = vr or "UN"
    return str(vr).split(" ")[0]


def _needs_value(raw: Any, action: str | None) -> bool:
    """Whether the walk must decode this element (kept numbers and bytes need not be)."""
    if not isinstance(raw, RawDataElement):
        return True
    vr = _raw_vr(raw)
    return not (vr in _SKIP_VRS and action in (None, "K"))


def _check_pixel_length(ds: Dataset) -> None:
    """Quarantine native pixel data whose length does not match its header (truncation)."""
    if "PixelData" not in ds:
        if "Rows" in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
            raise CorruptInputError(
                "image header without pixel data", reason="dicom_pixels_missing"
            )
        return
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is not None and ts.is_compressed:
        return
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        spp = int(ds.get("SamplesPerPixel", 1))
        bits = int(ds.BitsAllocated)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except Exception:
        raise CorruptInputError("pixel module incomplete", reason="dicom_pixel_module") from None
    expected = rows * cols * spp * frames * bits // 8
    if str(ds.get("PhotometricInterpretation", "")) == "YBR_FULL_422":
        expected = expected * 2 // 3  # chroma subsampled 2:1 horizontally
    actual = len(ds.PixelData)
    if actual < expected:
        raise CorruptInputError(
            f"pixel data {actual} bytes, header implies {expected}", reason="dicom_pixels_truncated"
        )


# ------------------------------------------------------------------------------------------
def _str_values(elem: DataElement) -> list[str]:
    v = elem.value
    if v is None or v == "":
        return []
    if isinstance(v, (list, tuple, pydicom.multival.MultiValue)):
        return [str(x) for x in v if x not in (None, "")]
    return [str(v)]


def patient_context(ds: Dataset, key: ProjectKey) -> PatientContext:
    """Names and identifiers of this file's patient (and every person named in it)."""
    pid = str(ds.get("PatientID", "") or "").strip()
    names: list[str] = []
    ids: list[str] = []
    for tag in _PATIENT_NAME_TAGS:
        if tag in ds:
            names.extend(_str_values(ds[tag]))
    for tag in _PATIENT_ID_TAGS:
        if tag in ds:
            ids.extend(_str_values(ds[tag]))

    def collect(d: Dataset) -> None:
        for tag, raw in list(d._dict.items()):
            if isinstance(raw, RawDataElement) and _raw_vr(raw) in _SKIP_VRS:
                continue  # numbers and bytes name no one: left undecoded, written back raw
            e = d[tag]
            if e.VR == "PN":
                names.extend(_str_values(e))
            elif e.VR == "SQ":
                for item in e.value:
                    collect(item)
            elif e.tag == 0x00100020 or e.tag == 0x00101000:
                ids.extend(_str_values(e))

    collect(ds)
    patient_key = pid or "|".join(
        [str(ds.get("PatientName", "")), str(ds.get("PatientBirthDate", ""))]
    )
    ctx = PatientContext.build(key, patient_id=patient_key, names=names, identifiers=ids)
    return ctx


class KnownMatcher:
    """Case-insensitive literal search for many identifiers (no per-file regex compile: the
    walk runs it on every short string, so it must cost microseconds).

    Alphanumeric identifiers must not touch other alphanumerics: a StudyID "1582" is not a
    leak inside a UID "2.25.…15820…"."""

    def __init__(self, values: list[str] | tuple[str, ...]) -> None:
        uniq = {v.strip().lower() for v in values if len(v.strip()) >= 2}
        self.items = sorted(
            ((v, v.isascii() and v.isalnum()) for v in uniq), key=lambda t: -len(t[0])
        )

    def __bool__(self) -> bool:
        return bool(self.items)

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Non-overlapping (start, end) of identifier occurrences, longest first."""
        low = text.lower()
        if len(low) != len(text):  # a case mapping changed lengths; fall back to exact case
            low = text
        found: list[tuple[int, int]] = []
        for v, alnum in self.items:
            i = low.find(v)
            while i >= 0:
                j = i + len(v)
                ok = not alnum or (
                    (i == 0 or not low[i - 1].isalnum()) and (j == len(low) or not low[j].isalnum())
                )
                if ok and all(j <= a or i >= b for a, b in found):
                    found.append((i, j))
                i = low.find(v, i + 1)
        return sorted(found)

    def sub(self, text: str, repl: str) -> tuple[str, int]:
        """``text`` with every occurrence replaced by ``repl``, and the count."""
        spans = self.spans(text)
        if not spans:
            return text, 0
        out, pos = [], 0
        for a, b in spans:
            out.append(text[pos:a])
            out.append(repl)
            pos = b
        out.append(text[pos:])
        return "".join(out), len(spans)


def _known_matcher(ctx: PatientContext) -> KnownMatcher:
    return KnownMatcher([*ctx.names, *ctx.identifiers])


# ------------------------------------------------------------------------------------------
def _shift_da(value: str, shift: int | None) -> str:
    if shift is None:
        return ""
    out = []
    for part in value.split("-"):
        part = part.strip()
        if not part:
            out.append("")
            continue
        m = re.fullmatch(r"(\d{4})(\d{2})(\d{2})", part)
        if not m:
            return ""
        try:
            d = date(int(m.group(1)), int(m.group(2)), int(m.group(3))) + timedelta(days=shift)
        except ValueError:
            return ""
        out.append(d.strftime("%Y%m%d"))
    return "-".join(out)


def _shift_dt(value: str, shift: int | None) -> str:
    if shift is None:
        return ""
    m = re.fullmatch(r"(\d{4})(\d{2})?(\d{2})?(.*)", value.strip())
    if not m:
        return ""
    y, mo, d, rest = m.group(1), m.group(2), m.group(3), m.group(4)
    try:
        base = date(int(y), int(mo or 7), int(d or 15)) + timedelta(days=shift)
    except ValueError:
        return ""
    s = f"{base.year:04d}"
    if mo:
        s += f"{base.month:02d}"
    if d:
        s += f"{base.day:02d}"
    return s + rest


_DUMMY: dict[str, Any] = {
    "PN": "ANONYMIZED",
    "LO": "ANONYMIZED",
    "SH": "ANONYMIZED",
    "ST": "ANONYMIZED",
    "LT": "ANONYMIZED",
    "UT": "ANONYMIZED",
    "UC": "ANONYMIZED",
    "CS": "ANONYMIZED",
    "AE": "ANONYMIZED",
    "UR": "",
    "DA": "19000101",
    "TM": "000000",
    "DT": "19000101000000",
    "AS": "000Y",
    "IS": "0",
    "DS": "0",
}


def _set(elem: DataElement, value: Any) -> None:
    elem.value = value


def _map_values(elem: DataElement, fn: Callable[[str], str]) -> None:
    v = elem.value
    if isinstance(v, (list, tuple, pydicom.multival.MultiValue)):
        elem.value = [fn(str(x)) for x in v]
    elif v not in (None, ""):
        elem.value = fn(str(v))


@dataclass
class DicomOutput:
    """One de-identified file: the bytes and what was done (counts only, never values)."""

    output: bytes
    pseudonym: str
    actions: Counter[str]
    findings: Counter[str]
    path: str  # "fast" (byte-level rewrite) or "reference" (pydicom walk)


@lru_cache(maxsize=32)
def _action_table(profile: DeidProfile) -> dict[int, str | None]:
    """Per profile, tag -> resolved action (None outside the table); filled as tags are met,
    so the table and the options are interpreted once per tag and profile, not per element."""
    return {}


class DicomDeidentifier:
    """Applies a :class:`DeidProfile` to datasets; holds the key, the text engine, the vault."""

    def __init__(
        self,
        key: ProjectKey,
        profile: DeidProfile | None = None,
        *,
        vault: PseudonymVault | None = None,
    ) -> None:
        self.key = key
        self.profile = profile or DeidProfile()
        self.vault = vault
        self.text = TextDeidentifier(key, self.profile.text)
        self._actions = _action_table(self.profile)

    def _action(self, tag: int) -> str | None:
        """The resolved Table E.1-1 action for a public ``tag`` under this profile."""
        try:
            return self._actions[tag]
        except KeyError:
            rule = rule_for(tag)
            action = resolve_action(rule, self.profile) if rule is not None else None
            if len(self._actions) < 65536:  # unknown tags in hostile files must not grow it
                self._actions[tag] = action
            return action

    # --------------------------------------------------------------------------------------
    def _uid(self, value: str) -> str:
        v = value.strip().rstrip("\x00")
        if not v or v in UID_dictionary:
            return v  # well-known standard UIDs (SOP classes, transfer syntaxes) stay
        return self.key.uid(v)

    def _clean_text(self, w: _Walk, value: str) -> str:
        res = self.text.deidentify(value, w.ctx)
        for f in res.findings:
            w.findings[f.type] += 1
        return res.text

    def _scrub_known(self, w: _Walk, value: str) -> str:
        if not w.known or not value:
            return value
        out, n = w.known.sub(value, "ANONYMIZED")
        if n:
            w.findings["KNOWN_IDENTIFIER"] += n
        return out

    def _dummy(self, w: _Walk, elem: DataElement) -> None:
        vr = elem.VR
        if vr == "UI":
            _map_values(elem, self._uid)
        elif vr == "DA":
            shifted = _shift_da(str(elem.value or ""), w.shift) if elem.value else ""
            _set(elem, shifted or _DUMMY["DA"])
        elif vr == "DT":
            shifted = _shift_dt(str(elem.value or ""), w.shift) if elem.value else ""
            _set(elem, shifted or _DUMMY["DT"])
        elif vr in _DUMMY:
            _set(elem, _DUMMY[vr])
        elif vr in _NUMERIC_VRS:
            _set(elem, 0)
        else:
            _set(elem, None)

    def _clean(self, w: _Walk, elem: DataElement) -> None:
        vr = elem.VR
        if vr == "DA":
            _map_values(elem, lambda v: _shift_da(v, w.shift))
        elif vr == "DT":
            _map_values(elem, lambda v: _shift_dt(v, w.shift))
        elif vr == "TM":
            pass  # modified-dates option keeps times of day; only dates move
        elif vr == "UI":
            _map_values(elem, self._uid)
        elif vr in _TEXT_VRS or vr in _SHORT_TEXT_VRS or vr == "PN":
            _map_values(elem, lambda v: self._clean_text(w, v))
            if vr in ("SH", "CS", "AE"):
                _map_values(elem, lambda v: v[:16])
            elif vr in ("LO", "PN"):
                _map_values(elem, lambda v: v[:64])
        elif vr == "AS":
            _map_values(elem, _cap_age)
        # numeric and binary values carry no text to clean

    # --------------------------------------------------------------------------------------
    def _apply(self, w: _Walk, ds: Dataset, elem: DataElement, action: str, depth: int) -> None:
        tag = elem.tag
        w.actions[action] += 1
        if action == "X":
            del ds[tag]
            return
        if elem.VR == "SQ":
            if action == "Z":
                elem.value = Sequence()
            else:  # K, C, D, U, U*: keep the structure, clean every item
                for item in elem.value:
                    self._walk(w, item, depth + 1)
            return
        if action == "Z":
            if tag == 0x00100010 and depth == 0:
                return  # the top-level patient name gets the pseudonym in _finish
            elem.value = None if elem.VR in _NUMERIC_VRS or elem.VR in _BINARY_VRS else ""
        elif action == "D":
            self._dummy(w, elem)
        elif action == "U":
            _map_values(elem, self._uid)
        elif action == "C":
            self._clean(w, elem)
        elif action == "K":
            if elem.VR == "AS":
                _map_values(elem, _cap_age)
        else:
            raise AssertionError(f"unknown action {action}")

    def _strict(self, w: _Walk, ds: Dataset, elem: DataElement, depth: int) -> None:
        """Elements outside the table: the safety net by VR."""
        vr = elem.VR
        if vr == "SQ":
            for item in elem.value:
                self._walk(w, item, depth + 1)
            return
        if vr == "UI":
            if not self.profile.retain_uids:
                _map_values(elem, self._uid)
            return
        if not self.profile.strict:
            return
        if vr == "PN" and elem.value:
            w.actions["strict_PN"] += 1
            self._dummy(w, elem)
        elif vr in ("DA", "DT") and elem.value:
            w.actions["strict_date"] += 1
            if self.profile.retain_long_modified_dates:
                self._clean(w, elem)
            else:
                elem.value = ""
        elif vr in _TEXT_VRS and elem.value:
            w.actions["strict_text"] += 1
            _map_values(elem, lambda v: self._clean_text(w, v))
        elif vr in ("LO", "SH", "UC") and elem.value:
            # Unlisted short strings (protocol names, code meanings, vendor labels) are usually
            # clean; the rules are specific enough to run on them, and they catch what an
            # operator typed into the wrong field.
            limit = {"SH": 16, "LO": 64}.get(vr, 10**6)
            _map_values(elem, lambda v: self._clean_text(w, self._scrub_known(w, v))[:limit])
        elif vr in _SHORT_TEXT_VRS and elem.value:
            _map_values(elem, lambda v: self._scrub_known(w, v))
        elif vr == "AS":
            _map_values(elem, _cap_age)

    def _private(self, w: _Walk, ds: Dataset, tag: BaseTag, keep: set[int]) -> None:
        if 0x0010 <= tag.element <= 0x00FF:
            return  # creators are decided after their blocks
        if tag.element >= 0x1000 and self.profile.retain_safe_private:
            creator_tag = Tag(tag.group, tag.element >> 8)
            creator = ds.get(creator_tag)
            creator_s = str(creator.value).strip() if creator is not None else ""
            for sp in self.profile.safe_private:
                if (
                    sp.creator == creator_s
                    and sp.group == tag.group
                    and sp.element == tag.element & 0xFF
                ):
                    keep.add(int(creator_tag))
                    w.actions["private_kept"] += 1
                    elem = ds[tag]
                    if elem.VR in _TEXT_VRS or elem.VR in _SHORT_TEXT_VRS or elem.VR == "PN":
                        _map_values(elem, lambda v: self._scrub_known(w, v))
                    return
        w.actions["private_removed"] += 1
        del ds[tag]

    def _walk(self, w: _Walk, ds: Dataset, depth: int = 0) -> None:
        keep_creators: set[int] = set()
        for tag in list(ds._dict.keys()):
            tag = Tag(tag)
            if tag.group == 0x0002:
                continue
            if tag.element == 0x0000:
                del ds[tag]  # group lengths are retired and would be stale
                continue
            if tag.is_private:
                self._private(w, ds, tag, keep_creators)
                continue
            action = self._action(int(tag))
            if action == "X":
                w.actions["X"] += 1
                del ds[tag]
                continue
            if action is None and not _known_public(int(tag)):
                w.actions["X_unknown"] += 1
                del ds[tag]
                continue
            raw = ds._dict[tag]
            if not _needs_value(raw, action):
                if action == "K":
                    w.actions["K"] += 1
                continue  # numeric/binary kept as read: no decode, written back byte-exact
            elem = ds[tag]
            if action is not None:
                if action == "U*":
                    action = "K" if elem.VR == "SQ" else "U"
                self._apply(w, ds, elem, action, depth)
            else:
                self._strict(w, ds, elem, depth)
        for t in list(ds._dict.keys()):
            t = Tag(t)
            if t.is_private and 0x0010 <= t.element <= 0x00FF and int(t) not in keep_creators:
                del ds[t]

    # --------------------------------------------------------------------------------------
    def deidentify_bytes(
        self, data: bytes, *, pixel_cleaner: Any = None, fast: bool = True
    ) -> DicomOutput:
        """De-identify one file's bytes; raises :class:`DeidError` for input that cannot be
        made safe. The byte-level rewrite (:mod:`.dicom_fast`) serves the files it can
        reproduce exactly; every other file takes the pydicom walk (``fast=False`` forces it)."""
        if fast:
            from .dicom_fast import Fallback, rewrite

            try:
                out, w, pseudonym, pixel_actions = rewrite(self, data, pixel_cleaner=pixel_cleaner)
            except Fallback:
                pass
            else:
                actions = Counter(pixel_actions)
                actions.update(w.actions)
                return DicomOutput(out, pseudonym, actions, w.findings, "fast")
        return self._deidentify_reference(data, pixel_cleaner)

    def _deidentify_reference(self, data: bytes, pixel_cleaner: Any) -> DicomOutput:
        profile = self.profile
        ds = read_dicom(data)
        meta = getattr(ds, "file_meta", None)
        if meta is not None and str(meta.get("MediaStorageSOPClassUID", "")) == _DICOMDIR_CLASS:
            raise UnsupportedInputError("DICOMDIR index files are not released", reason="dicomdir")
        if "EncapsulatedDocument" in ds:
            # An embedded PDF/CDA carries its own (often compressed) text that no header rule
            # reaches; it needs a document de-identifier, not a pass-through.
            raise UnsupportedInputError(
                "encapsulated document (PDF/CDA/STL) cannot be cleaned",
                reason="encapsulated_document",
            )
        ctx = patient_context(ds, self.key)
        actions: Counter[str] = Counter()
        findings: Counter[str] = Counter()
        pixels_cleaned = False
        if pixel_cleaner is not None:
            report = pixel_cleaner.clean_dataset(ds, context=ctx)
            actions.update(report.actions)
            findings.update(report.findings)
            pixels_cleaned = report.changed
        elif _needs_ocr(ds, profile) and profile.ocr.require_ocr:
            raise UnsafeOutputError(
                "burned-in text suspected and no OCR configured", reason="ocr_required"
            )
        w, pseudonym = self.deidentify_dataset(ds, pixels_cleaned=pixels_cleaned, context=ctx)
        meta = getattr(ds, "file_meta", None)
        if meta is not None and "SOPInstanceUID" not in ds and "MediaStorageSOPInstanceUID" in meta:
            # Without a SOPInstanceUID in the data set, write_dicom has nothing to copy into the
            # file meta, which would keep the original instance UID: map it like any UID.
            meta.MediaStorageSOPInstanceUID = self._uid(str(meta.MediaStorageSOPInstanceUID))
        try:
            out = write_dicom(ds)
        except Exception as exc:  # pydicom refuses what it read leniently; messages may quote
            raise CorruptInputError(type(exc).__name__, reason="dicom_unwritable") from None
        try:
            residual = find_residual(ds, out, w.ctx)
        except Exception as exc:  # an element pydicom cannot decode cannot be checked either
            raise CorruptInputError(type(exc).__name__, reason="dicom_unparseable") from None
        if residual:
            raise UnsafeOutputError(
                f"identifier still present in {len(residual)} element(s): "
                + ",".join(residual[:5]),
                reason="residual_identifier",
            )
        actions.update(w.actions)
        findings.update(w.findings)
        return DicomOutput(out, pseudonym, actions, findings, "reference")

    def deidentify_dataset(
        self, ds: Dataset, *, pixels_cleaned: bool = False, context: PatientContext | None = None
    ) -> tuple[_Walk, str]:
        """De-identify ``ds`` in place; returns the walk state and the patient pseudonym."""
        ctx = context if context is not None else patient_context(ds, self.key)
        shift = ctx.date_shift_days if self.profile.retain_long_modified_dates else None
        w = _Walk(self.profile, self.key, self.text, ctx, shift)
        w.known = _known_matcher(ctx)
        original_pid = str(ds.get("PatientID", "") or "").strip()
        pseudonym = self.key.pseudonym(ctx.patient_key or "unknown")
        if self.vault is not None and original_pid:
            self.vault.record("patient_id", pseudonym, original_pid)
        self._walk(w, ds)
        self._finish(ds, pseudonym, pixels_cleaned=pixels_cleaned)
        return w, pseudonym

    def _finish(self, ds: Dataset, pseudonym: str, *, pixels_cleaned: bool) -> None:
        # Values written here are constants or pseudonyms known to be valid for their VR;
        # building the elements directly skips pydicom's per-assignment validation, which
        # costs more than the rest of this method on every file.
        _put(ds, 0x00100020, "LO", pseudonym)  # PatientID
        _put(ds, 0x00100010, "PN", pseudonym)  # PatientName
        _put(ds, 0x00120062, "CS", "YES")  # PatientIdentityRemoved
        _put(
            ds,
            0x00120063,  # DeidentificationMethod
            "LO",
            [
                "DICOM PS3.15 E.1-1 Basic Profile",
                f"medctl-deid {ENGINE_VERSION} {self.profile.fingerprint()}"[:64],
            ],
        )
        seq = Sequence()
        for code, meaning in self.profile.method_codes(pixels_cleaned=pixels_cleaned):
            item = Dataset()
            _put(item, 0x00080100, "SH", code)  # CodeValue
            _put(item, 0x00080102, "SH", "DCM")  # CodingSchemeDesignator
            _put(item, 0x00080104, "LO", meaning)  # CodeMeaning
            seq.append(item)
        _put(ds, 0x00120064, "SQ", seq)  # DeidentificationMethodCodeSequence
        if self.profile.retain_long_modified_dates:
            _put(ds, 0x00280303, "CS", "MODIFIED")
        elif 0x00280303 in ds:
            _put(ds, 0x00280303, "CS", "REMOVED")
        if pixels_cleaned:
            _put(ds, 0x00280301, "CS", "NO")  # BurnedInAnnotation
        if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
            del ds.SpecificCharacterSet


def _put(ds: Dataset, tag: int, vr: str, value: Any) -> None:
    ds[tag] = DataElement(tag, vr, value, validation_mode=pydicom.config.IGNORE)


def _cap_age(value: str) -> str:
    m = re.fullmatch(r"(\d{3})Y", value.strip())
    if m and int(m.group(1)) > 89:
        return "090Y"
    return value


_KNOWN_PUBLIC: dict[int, bool] = {}


def _known_public(tag: int) -> bool:
    """Whether a public tag is in pydicom's dictionary (repeating groups included)."""
    known = _KNOWN_PUBLIC.get(tag)
    if known is None:
        known = dictionary_has_tag(tag) or _is_repeating_known(tag)
        if len(_KNOWN_PUBLIC) < 65536:  # unknown tags in hostile files must not grow it
            _KNOWN_PUBLIC[tag] = known
    return known


def _is_repeating_known(tag: int) -> bool:
    # Overlay (60xx) and curve (50xx) groups repeat; pydicom's dictionary lists them masked.
    group = tag >> 16
    return 0x5000 <= group <= 0x60FF and group % 2 == 0


# ------------------------------------------------------------------------------------------
# File meta elements never written out: the source, sending and receiving AE titles (they name
# the sites' devices) and the private information of the creating application.
META_DROPPED = (0x00020016, 0x00020017, 0x00020018, 0x00020100, 0x00020102)


def write_dicom(ds: Dataset, *, original: Dataset | None = None) -> bytes:
    """Serialise with a valid file meta header (adding one for headerless input)."""
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        meta = FileMetaDataset(meta) if meta is not None else FileMetaDataset()
        implicit, little = getattr(ds, "original_encoding", (True, True))
        if implicit is None:
            implicit = True
        meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian
            if implicit
            else (ExplicitVRLittleEndian if little in (True, None) else ExplicitVRBigEndian)
        )
        ds.file_meta = meta
    if "SOPClassUID" in ds:
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
    if "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for t in META_DROPPED:
        if t in meta:
            del meta[t]
    # The preamble is free for applications (a TIFF header in dual-personality files) and
    # nothing here checks what it says: always write 128 zero bytes.
    ds.preamble = None
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


# Raw elements of these VRs hold binary numbers or data, not text; OB/UN may hold anything and
# IS/DS are digits as text, so those are searched.
_UNSEARCHED_RAW_VRS = _SKIP_VRS - {"OB", "UN", "IS", "DS"}


def find_residual(ds: Dataset, out: bytes, ctx: PatientContext) -> list[str]:
    """Element paths (``GGGGEEEE[i].GGGGEEEE``) whose value still holds a known identifier,
    checked on the decoded data set and, for every encoding a value could take, on the raw
    output bytes outside the pixel data."""
    values = [v for v in (*ctx.names, *ctx.identifiers) if len(v) >= 3]
    if not values:
        return []
    matcher = KnownMatcher(values)
    hits: list[str] = []

    def scan(d: Dataset, path: str) -> None:
        for tag, raw in list(d._dict.items()):
            if tag == PIXEL_DATA or (
                isinstance(raw, RawDataElement) and _raw_vr(raw) in _UNSEARCHED_RAW_VRS
            ):
                continue  # numbers and binary data left raw
            e = d[tag]
            p = f"{path}{int(e.tag):08X}"
            if e.VR == "SQ":
                for i, item in enumerate(e.value):
                    scan(item, f"{p}[{i}].")
            elif isinstance(e.value, (bytes, bytearray)):
                if matcher.spans(bytes(e.value).decode("latin-1")):
                    hits.append(p)
            elif e.VR != "UI" and any(matcher.spans(s) for s in _str_values(e)):
                hits.append(p)

    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        scan(meta, "")
    scan(ds, "")
    pixels = ds.get("PixelData")
    head = out
    if isinstance(pixels, (bytes, bytearray)) and len(pixels) > 64:
        # Pixel bytes can contain any pattern by chance: search everything but them.
        if out.endswith(pixels):
            head = out[: len(out) - len(pixels)]
        else:
            k = out.find(pixels)
            if k > 0:
                head = out[:k] + out[k + len(pixels) :]
    hits.extend(raw_identifier_hits(values, head))
    return hits


def raw_identifier_hits(values: list[str], head: bytes) -> list[str]:
    """``raw:<codec>`` for each identifier found in the encoded bytes ``head`` (the output
    outside the pixel data) in any encoding a value could take."""
    hits: list[str] = []
    head_lower = head.lower()
    for v in values:
        if v.isascii():
            if v.isdigit():
                continue  # digit strings are checked on decoded values (UIDs hold digits)
            # ASCII is the same bytes in UTF-8, GB18030 and Big5: one case-insensitive search
            # covers those three, a second one UTF-16.
            if len(v) >= 4 and v.encode().lower() in head_lower:
                hits.append("raw:utf-8")
            elif len(v) >= 2 and v.encode("utf-16-le").lower() in head_lower:
                hits.append("raw:utf-16-le")
            continue
        for codec in ("utf-8", "gb18030", "big5", "utf-16-le"):
            try:
                b = v.encode(codec)
            except (UnicodeEncodeError, LookupError):
                continue
            if len(b) >= 4 and (b in head or (b.isascii() and b.lower() in head_lower)):
                hits.append(f"raw:{codec}")
                break
    return hits


def deidentify_dicom(
    data: bytes,
    *,
    key: ProjectKey,
    profile: DeidProfile | None = None,
    vault: PseudonymVault | None = None,
    pixel_cleaner: Any = None,
) -> FileResult:
    """De-identify one DICOM file's bytes; never raises for bad input (returns quarantine).

    ``pixel_cleaner`` is a :class:`apps.deid.engine.pixels.PixelCleaner` (or None to skip
    burned-in text handling, which quarantines files that need it when the profile requires OCR).
    """
    profile = profile or DeidProfile()
    result = FileResult(kind="dicom", input_sha256=sha256(data), profile=profile.fingerprint())
    try:
        done = DicomDeidentifier(key, profile, vault=vault).deidentify_bytes(
            data, pixel_cleaner=pixel_cleaner
        )
    except DeidError as exc:
        result.status = QUARANTINED
        result.reason = str(exc)
        result.output = None
        return result
    result.actions.update(done.actions)
    result.findings.update(done.findings)
    result.output = done.output
    result.patient_pseudonym = done.pseudonym
    result.status = OK
    return result


def _needs_ocr(ds: Dataset, profile: DeidProfile) -> bool:
    from .pixels import needs_ocr

    return needs_ocr(ds, profile.ocr)
