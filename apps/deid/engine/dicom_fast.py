"""Byte-level fast path for the common DICOM file (Explicit or Implicit VR Little Endian, one
plain character set, no pixel work).

The pydicom walk in :mod:`apps.deid.engine.dicom` is the reference: this module takes the
same decision for every element, with the same helpers, but works on the raw bytes. Numbers,
binary values and the pixel data are copied as they are (the pixels are never decoded, and
copied once, into the output); strings are decoded, passed through the same actions and
encoded as pydicom encodes them; the residual check searches the values and bytes just
written instead of re-reading the file.

Every file it cannot reproduce exactly goes back to the reference path (:class:`Fallback`):
headerless files, big endian, deflate, ISO 2022 and other code-extension character sets,
character sets set inside sequence items, elements stored as UN whose VR pydicom would look
up, a safe-private allow-list, files whose pixels need OCR, anything malformed (the reference
path quarantines those with their reason), and any residual hit (the reference path names
the element). Tests compare both paths output for output.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from pydicom import __version_info__ as _PYDICOM_VERSION
from pydicom.datadict import dictionary_VR, private_dictionary_VR
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID

from .dicom import (
    _DUMMY,
    _PATIENT_ID_TAGS,
    _PATIENT_NAME_TAGS,
    META_DROPPED,
    DicomDeidentifier,
    KnownMatcher,
    _cap_age,
    _known_matcher,
    _known_public,
    _shift_da,
    _shift_dt,
    _Walk,
    raw_identifier_hits,
)
from .pixels import needs_ocr_values
from .text.engine import PatientContext
from .version import ENGINE_VERSION

_U16 = struct.Struct("<H").unpack_from
_U32 = struct.Struct("<L").unpack_from
_TAG = struct.Struct("<HH").unpack_from
_SHORT_HDR = struct.Struct("<HH2sH").pack
_LONG_HDR = struct.Struct("<HH2s2xL").pack
_ITEM_HDR = struct.Struct("<HHL").pack
_ITEM_DELIM = _ITEM_HDR(0xFFFE, 0xE00D, 0)
_SEQ_DELIM = _ITEM_HDR(0xFFFE, 0xE0DD, 0)
_UNDEFINED = 0xFFFFFFFF
PIXEL_DATA = 0x7FE00010
_CHARSET = 0x00080005

_LONG_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV"}
)
# Values decoded with the file's character set; the other string VRs are ASCII/Latin-1.
_CHARSET_VRS = frozenset({"SH", "LO", "UC", "ST", "LT", "UT", "PN"})
_STRING_VRS = _CHARSET_VRS | {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI", "UR"}
_NUMERIC_VRS = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"})
_VRS = {vr.encode(): vr for vr in _STRING_VRS | _LONG_VRS | _NUMERIC_VRS | {"AT"}}
# Python codecs for the single-code-extension character sets this path handles.
_CODECS = {
    "": "latin-1",
    "ISO_IR 6": "latin-1",
    "ISO_IR 100": "latin-1",
    "ISO_IR 192": "utf-8",
    "GB18030": "gb18030",
    "GBK": "gbk",
}
_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
_ENCAPSULATED_DOCUMENT = 0x00420011
# Sentinel: the element is written as the reference path writes a value it did not change.
_KEEP: list[str] = []
_SHORT_TEXT_VRS = frozenset({"LO", "SH", "UC", "CS", "AE", "UR"})
_TEXT_VRS = frozenset({"LT", "ST", "UT"})
_BINARY_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN"})
_SKIP_VRS = _NUMERIC_VRS | {"IS", "DS", "OB", "OW", "OF", "OD", "OL", "OV", "AT"}


class Fallback(Exception):
    """This file needs the reference (pydicom) path."""


class _El:
    """One parsed element: positions in the input, and its items when it is a sequence."""

    __slots__ = ("end", "items", "start", "tag", "undefined", "ve", "vr", "vs")

    def __init__(self, tag: int, vr: str, start: int, vs: int) -> None:
        self.tag = tag
        self.vr = vr
        self.start = start
        self.vs = vs
        self.ve = vs
        self.end = vs
        self.undefined = False
        self.items: list[_Item] | None = None


class _Item:
    __slots__ = ("elems", "end", "undefined")

    def __init__(self, elems: list[_El], end: int, undefined: bool) -> None:
        self.elems = elems
        self.end = end
        self.undefined = undefined


# -- parsing -----------------------------------------------------------------------------------
def _parse_dataset(
    buf: bytes, pos: int, end: int, depth: int, delimited: bool, implicit: bool
) -> tuple[list[_El], int]:
    if depth > 32:
        raise Fallback("nesting")
    elems: list[_El] = []
    creators: dict[int, str] = {}
    last = -1
    while True:
        if pos >= end:
            if delimited or pos > end:
                raise Fallback("item overrun")
            return elems, pos
        if pos + 8 > end:
            raise Fallback("short element")
        group, number = _TAG(buf, pos)
        tag = (group << 16) | number
        if group == 0xFFFE:
            if delimited and tag == 0xFFFEE00D:
                return elems, pos + 8
            raise Fallback("stray delimiter")
        if tag <= last or group < 0x0008:
            raise Fallback("unsorted or misplaced group")
        last = tag
        if implicit:
            length = _U32(buf, pos + 4)[0]
            el = _El(tag, _implicit_vr(tag, creators), pos, pos + 8)
        else:
            vr = _VRS.get(buf[pos + 4 : pos + 6])
            if vr is None:
                raise Fallback("unknown VR")
            if vr in _LONG_VRS:
                if pos + 12 > end or buf[pos + 6 : pos + 8] != b"\x00\x00":
                    raise Fallback("short element or reserved bytes set")
                length = _U32(buf, pos + 8)[0]
                el = _El(tag, vr, pos, pos + 12)
            else:
                length = _U16(buf, pos + 6)[0]
                el = _El(tag, vr, pos, pos + 8)
            if vr == "UN" and (not group & 1 or _private_vr(tag, creators) != "UN"):
                raise Fallback("UN of a known VR")  # pydicom would re-type it
        if length == _UNDEFINED:
            el.undefined = True
            if el.vr == "SQ" or (implicit and tag != PIXEL_DATA):
                el.vr = "SQ"  # an undefined length in Implicit VR is a sequence
                el.items, el.end = _parse_items(buf, el.vs, end, depth, None, implicit)
            elif tag == PIXEL_DATA and depth == 0 and el.vr in ("OB", "OW") and not implicit:
                el.end = _skip_fragments(buf, el.vs, end)
            else:
                raise Fallback("undefined length")
            el.ve = el.end
        else:
            el.ve = el.end = el.vs + length
            if el.end > end:
                raise Fallback("truncated")
            if el.vr == "SQ":
                el.items, _ = _parse_items(buf, el.vs, el.end, depth, el.end, implicit)
            elif group & 1 and 0x0010 <= number <= 0x00FF:
                creator = buf[el.vs : el.ve]
                if not creator.isascii():
                    raise Fallback("private creator")
                creators[tag] = creator.decode("ascii").rstrip("\x00 ")
        elems.append(el)
        pos = el.end


_PUBLIC_VRS: dict[int, str] = {}


def _implicit_vr(tag: int, creators: dict[int, str]) -> str:
    """The VR pydicom gives an Implicit VR element (``hooks.raw_element_vr``); ambiguous
    dictionary VRs ("US or SS") read as their first, as ``dicom._raw_vr`` does."""
    if tag & 0x10000:
        return _private_vr(tag, creators)
    vr = _PUBLIC_VRS.get(tag)
    if vr is None:
        try:
            vr = dictionary_VR(tag).split(" ")[0]
        except KeyError:
            vr = "UL" if not tag & 0xFFFF else "UN"
        if len(_PUBLIC_VRS) < 65536:
            _PUBLIC_VRS[tag] = vr
    return vr


def _private_vr(tag: int, creators: dict[int, str]) -> str:
    """``pydicom.hooks._private_vr_for_tag``: LO for creators, the private dictionary's VR for
    an element of a known creator's block, UN otherwise."""
    number = tag & 0xFFFF
    if 0x0010 <= number <= 0x00FF:
        return "LO"
    if number & 0xFF00:
        creator = creators.get((tag & 0xFFFF0000) | (number >> 8))
        if creator:
            try:
                return str(private_dictionary_VR(tag, creator)).split(" ")[0]
            except KeyError:
                pass
    return "UN"


def _parse_items(
    buf: bytes, pos: int, end: int, depth: int, defined_end: int | None, implicit: bool
) -> tuple[list[_Item], int]:
    items: list[_Item] = []
    while True:
        if defined_end is not None and pos == defined_end:
            return items, pos
        if pos + 8 > end:
            raise Fallback("short item")
        group, number = _TAG(buf, pos)
        length = _U32(buf, pos + 4)[0]
        if group != 0xFFFE:
            raise Fallback("not an item")
        if number == 0xE0DD and defined_end is None:
            return items, pos + 8
        if number != 0xE000:
            raise Fallback("not an item")
        if length == _UNDEFINED:
            elems, item_end = _parse_dataset(buf, pos + 8, end, depth + 1, True, implicit)
            items.append(_Item(elems, item_end, True))
        else:
            item_end = pos + 8 + length
            if item_end > end:
                raise Fallback("truncated item")
            elems, _ = _parse_dataset(buf, pos + 8, item_end, depth + 1, False, implicit)
            items.append(_Item(elems, item_end, False))
        pos = item_end


def _skip_fragments(buf: bytes, pos: int, end: int) -> int:
    while True:
        if pos + 8 > end:
            raise Fallback("truncated fragments")
        group, number = _TAG(buf, pos)
        length = _U32(buf, pos + 4)[0]
        if group != 0xFFFE or length == _UNDEFINED:
            raise Fallback("bad fragment")
        if number == 0xE0DD:
            return pos + 8
        if number != 0xE000 or pos + 8 + length > end:
            raise Fallback("bad fragment")
        pos += 8 + length


def _parse_meta(buf: bytes) -> tuple[list[_El], int]:
    if len(buf) < 144 or buf[128:132] != b"DICM":
        raise Fallback("no preamble")
    pos = 132
    elems: list[_El] = []
    while pos + 8 <= len(buf) and _U16(buf, pos)[0] == 0x0002:
        group, number = _TAG(buf, pos)
        vr = _VRS.get(buf[pos + 4 : pos + 6])
        if vr is None:
            raise Fallback("meta VR")
        if vr in _LONG_VRS:
            if pos + 12 > len(buf) or buf[pos + 6 : pos + 8] != b"\x00\x00":
                raise Fallback("meta truncated or reserved bytes set")
            length = _U32(buf, pos + 8)[0]
            el = _El((group << 16) | number, vr, pos, pos + 12)
        else:
            length = _U16(buf, pos + 6)[0]
            el = _El((group << 16) | number, vr, pos, pos + 8)
        if length == _UNDEFINED or vr == "SQ":
            raise Fallback("meta sequence")
        el.ve = el.end = el.vs + length
        if el.end > len(buf) or (elems and el.tag <= elems[-1].tag):
            raise Fallback("meta")
        elems.append(el)
        pos = el.end
    return elems, pos


# -- values ------------------------------------------------------------------------------------
def _decode(raw: bytes, vr: str, codec: str) -> list[str]:
    """The element's values as pydicom decodes them (same stripping and splitting)."""
    try:
        if vr == "PN":
            return raw.rstrip(b"\x00 ").decode(codec).split("\\")
        if vr in _TEXT_VRS:
            return [raw.decode(codec).rstrip("\x00 ")]
        if vr in _CHARSET_VRS:
            return [v.rstrip("\x00 ") for v in raw.decode(codec).split("\\")]
        text = raw.decode("latin-1")
    except UnicodeDecodeError:
        raise Fallback("undecodable value") from None
    if vr == "UR":
        return [text.rstrip()]
    if vr in ("AE", "IS", "DS"):
        return [v.strip() for v in text.split("\\")]
    if vr == "UI":  # pydicom's UID strips surrounding whitespace too
        return [v.strip() for v in text.rstrip(" \x00").split("\\")]
    return text.rstrip(" \x00").split("\\")


def _header(tag: int, vr: str, length: int, implicit: bool = False) -> bytes:
    if implicit:
        return _ITEM_HDR(tag >> 16, tag & 0xFFFF, length)
    if vr in _LONG_VRS:
        return _LONG_HDR(tag >> 16, tag & 0xFFFF, vr.encode(), length)
    if length > 0xFFFF:
        raise Fallback("value too long for its VR")
    return _SHORT_HDR(tag >> 16, tag & 0xFFFF, vr.encode(), length)


def _element(tag: int, vr: str, values: list[str], codec: str, implicit: bool = False) -> bytes:
    try:
        raw = "\\".join(values).encode(codec if vr in _CHARSET_VRS else "latin-1")
    except UnicodeEncodeError:
        raise Fallback("unencodable value") from None
    if len(raw) & 1:
        raw += b"\x00" if vr == "UI" else b" "
    return _header(tag, vr, len(raw), implicit) + raw


def _map(values: list[str], fn: Callable[[str], str]) -> list[str]:
    """``dicom._map_values`` on a value list: every value of a multi-value, a non-empty single."""
    if len(values) > 1:
        return [fn(v) for v in values]
    if values[0] == "":
        return values
    return [fn(values[0])]


def _resplit(values: list[str], vr: str) -> list[str]:
    # pydicom splits a new single value on backslashes except for the free-text VRs
    if vr in _TEXT_VRS or len(values) != 1 or "\\" not in values[0]:
        return values
    return values[0].split("\\")


# -- the walk ----------------------------------------------------------------------------------
class FastRewriter:
    """One file's rewrite; see the module docstring."""

    def __init__(
        self, deid: DicomDeidentifier, w: _Walk, buf: bytes, codec: str, implicit: bool
    ) -> None:
        self.implicit = implicit
        self.deid = deid
        self.profile = deid.profile
        self.w = w
        self.buf = buf
        self.codec = codec
        self.strings: list[str] = []  # final decoded values written, for the residual check

    def values(self, el: _El) -> list[str]:
        return _decode(self.buf[el.vs : el.ve], el.vr, self.codec)

    def walk(self, elems: list[_El], depth: int) -> list[tuple[int, list[Any]]]:
        """(tag, chunks) of every element written, in order."""
        w = self.w
        deid = self.deid
        out: list[tuple[int, list[Any]]] = []
        for el in elems:
            tag = el.tag
            if not tag & 0xFFFF:
                continue  # group lengths are retired and would be stale
            if tag & 0x10000:  # private
                if self.profile.retain_safe_private and self.profile.safe_private:
                    raise Fallback("safe private allow-list")
                if not 0x0010 <= tag & 0xFFFF <= 0x00FF:
                    w.actions["private_removed"] += 1
                continue
            action = deid._action(tag)
            if action == "X":
                w.actions["X"] += 1
                continue
            if action is None and not _known_public(tag):
                w.actions["X_unknown"] += 1
                continue
            vr = el.vr
            if vr in _SKIP_VRS and action in (None, "K"):
                if action == "K":
                    w.actions["K"] += 1
                self._keep_raw(el, tag, out, converted=False)
                continue
            if action is not None:
                if action == "U*":
                    action = "K" if vr == "SQ" else "U"
                w.actions[action] += 1
                if vr == "SQ":
                    items = [] if action == "Z" else el.items or []
                    out.append((tag, self._sequence(el, items, depth)))
                    continue
                new = self._apply(el, action, depth)
            elif vr == "SQ":
                out.append((tag, self._sequence(el, el.items or [], depth)))
                continue
            else:
                new = self._strict(el)
            if new is _KEEP:
                self._keep_raw(el, tag, out)
            else:
                if vr != "UI":
                    self.strings.extend(new)
                raw = (
                    _element(tag, vr, new, self.codec, self.implicit)
                    if new
                    else _header(tag, vr, 0, self.implicit)
                )
                out.append((tag, [raw]))
        return out

    def _keep_raw(
        self, el: _El, tag: int, out: list[tuple[int, list[Any]]], converted: bool = True
    ) -> None:
        """Write an element unchanged. ``converted``: the reference path decoded it (and so
        re-encodes it and searches its value); otherwise it stayed raw there."""
        vr = el.vr
        if converted and vr in _STRING_VRS and vr not in ("IS", "DS"):
            # pydicom re-encodes every string it decoded (padding and stray spaces normalised)
            values = self.values(el)
            if vr != "UI":
                self.strings.extend(values)
            out.append((tag, [_element(tag, vr, values, self.codec, self.implicit)]))
            return
        if converted and vr not in _BINARY_VRS:
            raise Fallback(f"decoded {vr} kept")  # numbers and tags: rare, left to pydicom
        if vr in ("IS", "DS"):  # digits as text: searched like any string
            self.strings.extend(self.values(el))
        elif vr in (_BINARY_VRS if converted else ("OB", "UN")) and tag != PIXEL_DATA:
            # as dicom.find_residual: bytes that may hold text are searched as Latin-1
            self.strings.append(self.buf[el.vs : el.ve].decode("latin-1"))
        out.append((tag, [memoryview(self.buf)[el.start : el.end]]))

    def _sequence(self, el: _El, items: list[_Item], depth: int) -> list[Any]:
        chunks: list[Any] = []
        for item in items:
            body: list[Any] = []
            for _, c in self.walk(item.elems, depth + 1):
                body.extend(c)
            if item.undefined:
                chunks.append(_ITEM_HDR(0xFFFE, 0xE000, _UNDEFINED))
                chunks.extend(body)
                chunks.append(_ITEM_DELIM)
            else:
                chunks.append(_ITEM_HDR(0xFFFE, 0xE000, sum(len(b) for b in body)))
                chunks.extend(body)
        if el.undefined:
            return [_header(el.tag, "SQ", _UNDEFINED, self.implicit), *chunks, _SEQ_DELIM]
        return [_header(el.tag, "SQ", sum(len(b) for b in chunks), self.implicit), *chunks]

    def _apply(self, el: _El, action: str, depth: int) -> list[str]:
        """``DicomDeidentifier._apply`` for a non-sequence element."""
        vr = el.vr
        deid, w = self.deid, self.w
        if action == "Z":
            return []  # (the top-level patient name is then replaced by the pseudonym)
        if action == "K":
            if vr == "AS":
                return self._new_values(el, lambda v: _map(v, _cap_age))
            return _KEEP
        if vr not in _STRING_VRS:
            if action == "D" and vr in _NUMERIC_VRS:
                raise Fallback("numeric dummy")
            if action == "D":
                return []
            if action == "C":
                return _KEEP
            raise Fallback(f"{action} on {vr}")
        if action == "D":
            if vr == "UI":
                return self._new_values(el, lambda v: _map(v, deid._uid))
            if vr in ("DA", "DT"):
                values = self.values(el)
                single = values[0] if len(values) == 1 else ""
                fn = _shift_da if vr == "DA" else _shift_dt
                shifted = fn(single, w.shift) if single else ""
                return self._new_values(el, lambda v: [shifted or _DUMMY[vr]])
            if vr in _DUMMY:
                return self._new_values(el, lambda v: [_DUMMY[vr]])
            return []
        if action == "U":
            return self._new_values(el, lambda v: _map(v, deid._uid))
        if action == "C":
            return self._clean(el)
        raise AssertionError(f"unknown action {action}")

    def _clean(self, el: _El) -> list[str]:
        vr = el.vr
        deid, w = self.deid, self.w
        if vr == "DA":
            return self._new_values(el, lambda v: _map(v, lambda s: _shift_da(s, w.shift)))
        if vr == "DT":
            return self._new_values(el, lambda v: _map(v, lambda s: _shift_dt(s, w.shift)))
        if vr == "UI":
            return self._new_values(el, lambda v: _map(v, deid._uid))
        if vr in _TEXT_VRS or vr in _SHORT_TEXT_VRS or vr == "PN":
            limit = 16 if vr in ("SH", "CS", "AE") else 64 if vr in ("LO", "PN") else 0

            def clean(v: list[str]) -> list[str]:
                out = _resplit(_map(v, lambda s: deid._clean_text(w, s)), vr)
                return _map(out, lambda s: s[:limit]) if limit else out

            return self._new_values(el, clean)
        if vr == "AS":
            return self._new_values(el, lambda v: _map(v, _cap_age))
        return _KEEP

    def _strict(self, el: _El) -> list[str]:
        """``DicomDeidentifier._strict`` for a non-sequence element outside the table."""
        vr = el.vr
        deid, w, profile = self.deid, self.w, self.profile
        if vr == "UI":
            if profile.retain_uids:
                return _KEEP
            return self._new_values(el, lambda v: _map(v, deid._uid))
        if not profile.strict:
            return _KEEP
        values = self.values(el)
        truthy = len(values) > 1 or values[0] != ""
        if not truthy:
            return self._new_values(el, lambda v: v, values)
        if vr == "PN":
            w.actions["strict_PN"] += 1
            return self._new_values(el, lambda v: ["ANONYMIZED"], values)
        if vr in ("DA", "DT"):
            w.actions["strict_date"] += 1
            if not profile.retain_long_modified_dates:
                return []
            fn = _shift_da if vr == "DA" else _shift_dt
            return self._new_values(el, lambda v: _map(v, lambda s: fn(s, w.shift)), values)
        if vr in _TEXT_VRS:
            w.actions["strict_text"] += 1
            return self._new_values(el, lambda v: _map(v, lambda s: deid._clean_text(w, s)), values)
        if vr in ("LO", "SH", "UC"):
            limit = {"SH": 16, "LO": 64}.get(vr, 10**6)
            return self._new_values(
                el,
                lambda v: _resplit(
                    _map(v, lambda s: deid._clean_text(w, deid._scrub_known(w, s))[:limit]),
                    vr,
                ),
                values,
            )
        if vr in _SHORT_TEXT_VRS:
            return self._new_values(
                el, lambda v: _resplit(_map(v, lambda s: deid._scrub_known(w, s)), vr), values
            )
        if vr == "AS":
            return self._new_values(el, lambda v: _map(v, _cap_age), values)
        return self._new_values(el, lambda v: v, values)

    def _new_values(
        self,
        el: _El,
        fn: Callable[[list[str]], list[str]],
        values: list[str] | None = None,
    ) -> list[str]:
        """The new values (``fn`` of the decoded ones)."""
        return fn(values if values is not None else self.values(el))


# -- the file ----------------------------------------------------------------------------------
def _top_values(rw: FastRewriter, by_tag: dict[int, _El], tag: int) -> list[str]:
    el = by_tag.get(tag)
    if el is None or el.vr not in _STRING_VRS:
        return []
    return [v for v in rw.values(el) if v != ""]


def _us(buf: bytes, el: _El | None, default: int | None = None) -> int:
    if el is None:
        if default is None:
            raise Fallback("pixel module")
        return default
    if el.vr != "US" or el.ve - el.vs != 2:
        raise Fallback("pixel module")
    return int(_U16(buf, el.vs)[0])


def rewrite(
    deid: DicomDeidentifier, data: bytes, *, pixel_cleaner: Any = None
) -> tuple[bytes, _Walk, str, list[str]]:
    """De-identify ``data``; returns (output, walk state, pseudonym, pixel actions).

    Raises :class:`Fallback` for every file the reference path must handle.
    """
    try:
        return _rewrite(deid, data, pixel_cleaner)
    except (struct.error, IndexError, UnicodeError, ValueError):
        raise Fallback("unexpected bytes") from None  # the reference path says what is wrong


def _rewrite(
    deid: DicomDeidentifier, data: bytes, pixel_cleaner: Any
) -> tuple[bytes, _Walk, str, list[str]]:
    profile = deid.profile
    meta, pos = _parse_meta(data)
    meta_by_tag = {el.tag: el for el in meta}
    ts_el = meta_by_tag.get(0x00020010)
    if ts_el is None or ts_el.vr != "UI":
        raise Fallback("no transfer syntax")
    ts = UID(data[ts_el.vs : ts_el.ve].decode("latin-1").rstrip("\x00 "))
    if not ts.is_transfer_syntax or not ts.is_little_endian or ts.is_deflated:
        raise Fallback("transfer syntax")
    implicit = ts.is_implicit_VR
    msc = meta_by_tag.get(0x00020002)
    if msc is not None and data[msc.vs : msc.ve].rstrip(b"\x00 ") == _DICOMDIR_CLASS.encode():
        raise Fallback("dicomdir")
    elems, _ = _parse_dataset(data, pos, len(data), 0, False, implicit)
    if not elems:
        raise Fallback("empty")
    top = {el.tag: el for el in elems}
    if _ENCAPSULATED_DOCUMENT in top:
        raise Fallback("encapsulated document")
    if 0x00080016 not in top and PIXEL_DATA not in top and 0x00100020 not in top:
        raise Fallback("not a data set")
    codec = "latin-1"
    if _CHARSET in top:
        charsets = _decode(data[top[_CHARSET].vs : top[_CHARSET].ve], "CS", "latin-1")
        if len(charsets) != 1 or charsets[0] not in _CODECS:
            raise Fallback("character set")
        codec = _CODECS[charsets[0]]
    rw = FastRewriter(deid, None, data, codec, implicit)  # type: ignore[arg-type]
    _check_pixels(rw, top, ts)

    # Pixels: the fast path only serves files whose pixels need no work.
    burned = _top_values(rw, top, 0x00280301)
    modality = _top_values(rw, top, 0x00080060)
    image_type = _top_values(rw, top, 0x00080008)
    spp = _us(data, top.get(0x00280002), 1) if PIXEL_DATA in top else 1
    pixel_actions: list[str] = []
    if needs_ocr_values(
        PIXEL_DATA in top,
        burned[0] if len(burned) == 1 else "",
        modality[0] if len(modality) == 1 else "",
        image_type,
        spp,
        profile.ocr,
    ):
        raise Fallback("pixels need OCR")
    if pixel_cleaner is not None:
        pixel_actions.append("ocr_not_needed")

    # The patient context, as dicom.patient_context builds it.
    names: list[str] = []
    ids: list[str] = []
    for tag in _PATIENT_NAME_TAGS:
        names.extend(_top_values(rw, top, tag))
    for tag in _PATIENT_ID_TAGS:
        ids.extend(_top_values(rw, top, tag))
    _collect(rw, elems, names, ids)
    pid_values = _top_values(rw, top, 0x00100020)
    pname = _top_values(rw, top, 0x00100010)
    birth = _top_values(rw, top, 0x00100030)
    if len(pid_values) > 1 or len(pname) > 1 or len(birth) > 1:
        raise Fallback("multi-valued patient")
    pid = pid_values[0].strip() if pid_values else ""
    patient_key = pid or "|".join([pname[0] if pname else "", birth[0] if birth else ""])
    ctx = PatientContext.build(deid.key, patient_id=patient_key, names=names, identifiers=ids)
    shift = ctx.date_shift_days if profile.retain_long_modified_dates else None
    w = _Walk(profile, deid.key, deid.text, ctx, shift)
    w.known = _known_matcher(ctx)
    rw.w = w
    pseudonym = deid.key.pseudonym(ctx.patient_key or "unknown")

    body = rw.walk(elems, 0)
    out_body = _finish(deid, rw, body, pseudonym)
    meta_chunks = _meta(data, meta, out_body, rw)
    chunks: list[Any] = [bytes(128), b"DICM", *meta_chunks]
    pixel_index = -1
    for tag, c in out_body:
        if tag == PIXEL_DATA and len(c) == 1 and top[PIXEL_DATA].ve - top[PIXEL_DATA].vs > 64:
            el = top[PIXEL_DATA]
            hdr_len = el.vs - el.start
            view = c[0]
            chunks.append(view[:hdr_len])
            pixel_index = len(chunks)
            chunks.append(view[hdr_len:])
        else:
            chunks.extend(c)
    head = b"".join(c for i, c in enumerate(chunks) if i != pixel_index)
    if _residual(rw, ctx, head):
        raise Fallback("residual identifier")  # the reference path names the element
    if deid.vault is not None and pid:
        deid.vault.record("patient_id", pseudonym, pid)
    return b"".join(chunks), w, pseudonym, pixel_actions


def _check_pixels(rw: FastRewriter, top: dict[int, _El], ts: UID) -> None:
    """``dicom._check_pixel_length``: anything it would quarantine goes back to it."""
    buf = rw.buf
    if PIXEL_DATA not in top:
        if 0x00280010 in top:
            raise Fallback("image header without pixel data")
        return
    if ts.is_compressed:
        if not top[PIXEL_DATA].undefined:
            raise Fallback("native pixel data under a compressed syntax")
        return
    if top[PIXEL_DATA].undefined:
        raise Fallback("encapsulated pixel data under a native syntax")
    rows = _us(buf, top.get(0x00280010))
    cols = _us(buf, top.get(0x00280011))
    spp = _us(buf, top.get(0x00280002), 1)
    bits = _us(buf, top.get(0x00280100))
    frames = 1
    if 0x00280008 in top:
        nf = _top_values(rw, top, 0x00280008)
        if len(nf) != 1 or not nf[0].isdigit():
            raise Fallback("number of frames")
        frames = int(nf[0]) or 1
    expected = rows * cols * spp * frames * bits // 8
    photometric = _top_values(rw, top, 0x00280004)
    if photometric == ["YBR_FULL_422"]:
        expected = expected * 2 // 3
    el = top[PIXEL_DATA]
    if el.ve - el.vs < expected:
        raise Fallback("pixels truncated")


def _collect(rw: FastRewriter, elems: list[_El], names: list[str], ids: list[str]) -> None:
    """Every person name at any depth, and patient IDs wherever they appear."""
    for el in elems:
        if el.vr == "PN":
            names.extend(v for v in rw.values(el) if v != "")
        elif el.vr == "SQ":
            for item in el.items or []:
                if any(e.tag == _CHARSET for e in item.elems):
                    raise Fallback("character set inside an item")
                _collect(rw, item.elems, names, ids)
        elif el.tag in (0x00100020, 0x00101000) and el.vr in _STRING_VRS:
            ids.extend(v for v in rw.values(el) if v != "")


def _finish(
    deid: DicomDeidentifier,
    rw: FastRewriter,
    body: list[tuple[int, list[Any]]],
    pseudonym: str,
) -> list[tuple[int, list[Any]]]:
    """``DicomDeidentifier._finish``: the patient and method elements, merged in tag order."""
    profile = deid.profile
    codec = rw.codec
    out = dict(body)
    put: dict[int, tuple[str, list[str]]] = {
        0x00100020: ("LO", [pseudonym]),
        0x00100010: ("PN", [pseudonym]),
        0x00120062: ("CS", ["YES"]),
        0x00120063: (
            "LO",
            [
                "DICOM PS3.15 E.1-1 Basic Profile",
                f"medctl-deid {ENGINE_VERSION} {profile.fingerprint()}"[:64],
            ],
        ),
    }
    if profile.retain_long_modified_dates:
        put[0x00280303] = ("CS", ["MODIFIED"])
    elif 0x00280303 in out:
        put[0x00280303] = ("CS", ["REMOVED"])
    for tag, (vr, values) in put.items():
        rw.strings.extend(values)
        out[tag] = [_element(tag, vr, values, codec, rw.implicit)]
    items: list[bytes] = []
    for code, meaning in profile.method_codes(pixels_cleaned=False):
        rw.strings.extend((code, "DCM", meaning))
        item = (
            _element(0x00080100, "SH", [code], codec, rw.implicit)
            + _element(0x00080102, "SH", ["DCM"], codec, rw.implicit)
            + _element(0x00080104, "LO", [meaning], codec, rw.implicit)
        )
        items.append(_ITEM_HDR(0xFFFE, 0xE000, len(item)) + item)
    seq = b"".join(items)
    out[0x00120064] = [_header(0x00120064, "SQ", len(seq), rw.implicit), seq]
    charset = out.get(_CHARSET)
    if charset is not None and _charset_empty(charset):
        del out[_CHARSET]
    return sorted(out.items())


def _charset_empty(chunks: list[Any]) -> bool:
    raw = b"".join(chunks)
    return raw[8:].strip(b"\x00 ") == b""


def _meta(
    data: bytes, meta: list[_El], body: list[tuple[int, list[Any]]], rw: FastRewriter
) -> list[bytes]:
    """The file meta group as ``dicom.write_dicom`` + pydicom's enforce_file_format write it."""
    out: dict[int, bytes] = {}
    empty: set[int] = set()
    for el in meta:
        if el.tag == 0x00020000 or el.tag in META_DROPPED:
            continue
        # The reference decodes every meta element to validate it, so it writes them re-encoded.
        value = data[el.vs : el.ve]
        if el.vr in _STRING_VRS:
            values = _decode(value, el.vr, "latin-1")
            if any(values):
                out[el.tag] = _element(el.tag, el.vr, values, "latin-1")
            else:
                out[el.tag] = _header(el.tag, el.vr, 0)
                empty.add(el.tag)
        elif el.vr in ("OB", "UN"):
            padded = value + b"\x00" * (len(value) & 1)
            out[el.tag] = _header(el.tag, el.vr, len(padded)) + padded
            if not value:
                empty.add(el.tag)
        else:
            out[el.tag] = data[el.start : el.end]
    written = dict(body)
    for src, dst in ((0x00080016, 0x00020002), (0x00080018, 0x00020003)):
        if src in written:
            raw = b"".join(written[src])
            uid = raw[8:].decode("latin-1").rstrip("\x00 ")  # UI: 8-byte header either way
            if not uid:
                raise Fallback("empty SOP UID")
            out[dst] = _element(dst, "UI", [uid], "latin-1")
    if 0x00020001 not in out or 0x00020001 in empty:
        out[0x00020001] = _header(0x00020001, "OB", 2) + b"\x00\x01"
    if 0x00020012 not in out or 0x00020012 in empty:
        out[0x00020012] = _element(0x00020012, "UI", [PYDICOM_IMPLEMENTATION_UID], "latin-1")
    if 0x00020013 not in out:
        name = f"PYDICOM {'.'.join(_PYDICOM_VERSION)}"
        out[0x00020013] = _element(0x00020013, "SH", [name], "latin-1")
    if 0x00080018 not in written:
        raise Fallback("no SOPInstanceUID: the reference maps the meta's instance UID")
    for tag in (0x00020002, 0x00020003, 0x00020010):
        if tag not in out or tag in empty:
            raise Fallback("meta incomplete")
    chunks = [out[t] for t in sorted(out)]
    for chunk in chunks:
        vr = chunk[4:6].decode("latin-1")
        hdr = 12 if vr in _LONG_VRS else 8
        if vr in ("OB", "UN"):
            rw.strings.append(chunk[hdr:].decode("latin-1"))
        elif vr in _STRING_VRS and vr != "UI":
            rw.strings.extend(_decode(chunk[hdr:], vr, "latin-1"))
    group_length = sum(len(c) for c in chunks)
    rw.strings.append(str(group_length))  # the reference searches the decoded meta, this too
    return [_SHORT_HDR(0x0002, 0x0000, b"UL", 4) + struct.pack("<L", group_length), *chunks]


def _residual(rw: FastRewriter, ctx: Any, head: bytes) -> bool:
    """Whether ``dicom.find_residual`` could find anything: the same identifiers searched in
    every value written (decoded, UIDs excepted) and in the output bytes outside the pixels."""
    values = [v for v in (*ctx.names, *ctx.identifiers) if len(v) >= 3]
    if not values:
        return False
    text = "\x00".join(s for s in rw.strings if s)
    if len(text.lower()) != len(text):
        return True  # a case mapping changes lengths: let the reference path decide
    if KnownMatcher(values).spans(text):
        return True
    return bool(raw_identifier_hits(values, head))
