"""``data_inventory.csv`` (seed 2.1): parsing with line-numbered errors, and formatting.

The columns are exactly the seed's: ``source,type,avg_size_MB,estimated_count,owner,
consent_status,notes``. The file is UTF-8 (a byte-order mark is accepted and written, so
Excel shows Chinese correctly) or, when the caller says so, GB18030 (what Excel on a Chinese
Windows saves as "CSV").

Formula injection: a spreadsheet runs a cell that starts with ``= + - @``, a tab or a carriage
return. Export prefixes such cells, and any cell starting with an apostrophe, with one
apostrophe (the spreadsheet "text" marker); import removes exactly one leading apostrophe and
refuses unmarked cells that start with a formula character. So every stored value survives
export → import exactly, and a hostile ``=cmd|...`` cell is named, with its line, instead of
being stored.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from django.utils.translation import gettext as _

COLUMNS = ("source", "type", "avg_size_MB", "estimated_count", "owner", "consent_status", "notes")
NUMERIC_COLUMNS = ("avg_size_MB", "estimated_count")
FORMULA_CHARS = ("=", "+", "-", "@", "\t", "\r")
TEXT_MARK = "'"
MAX_BYTES = 5 * 1024 * 1024
MAX_ROWS = 20_000
MAX_ERRORS = 200
MAX_LENGTHS = {"source": 120, "owner": 120, "notes": 4000}
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_CONTROL_IN_NOTES = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
ENCODINGS = ("auto", "utf-8", "gb18030")

# Seed 2.1 names the types in Chinese as well; both spellings import to the same code.
TYPE_ALIASES = {
    "文本": "TEXT",
    "音频": "AUDIO",
    "视频": "VIDEO",
    "影像": "DICOM",
    "心电": "ECG",
    "心电图": "ECG",
    "脑电": "EEG",
    "脑电图": "EEG",
    "病理": "WSI",
    "混合": "MIXED",
}
CONSENT_ALIASES = {
    "已同意": "obtained",
    "同意": "obtained",
    "豁免": "waived",
    "待定": "pending",
    "撤回": "withdrawn",
    "已撤回": "withdrawn",
    "未知": "unknown",
}


@dataclass(frozen=True)
class RowError:
    line: int
    column: str
    message: str

    def __str__(self) -> str:
        if self.column:
            return _("line %(line)d, column %(column)s: %(message)s") % {
                "line": self.line,
                "column": self.column,
                "message": self.message,
            }
        return _("line %(line)d: %(message)s") % {"line": self.line, "message": self.message}


class InventoryCSVError(ValueError):
    """The file was refused; ``errors`` say where and why. Nothing was imported."""

    def __init__(self, errors: list[RowError], total: int | None = None) -> None:
        self.errors = errors
        self.total = total if total is not None else len(errors)
        shown = "; ".join(str(e) for e in errors[:5])
        more = f" (and {self.total - 5} more)" if self.total > 5 else ""
        super().__init__(f"data_inventory.csv refused: {shown}{more}")


@dataclass
class ParsedRow:
    line: int
    values: dict[str, Any] = field(default_factory=dict)


def decode(data: bytes, encoding: str = "auto") -> str:
    """The file's text; errors say which encoding was expected and where it broke."""
    if encoding not in ENCODINGS:
        raise InventoryCSVError(
            [RowError(0, "", _("unknown encoding %(name)r") % {"name": encoding})]
        )
    if len(data) > MAX_BYTES:
        raise InventoryCSVError(
            [RowError(0, "", _("file is over the limit of %(limit)d bytes") % {"limit": MAX_BYTES})]
        )
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise InventoryCSVError(
            [RowError(1, "", _("file is UTF-16; save it as CSV UTF-8 (or GB18030) and retry"))]
        )
    if b"\x00" in data:
        raise InventoryCSVError([RowError(0, "", _("file contains NUL bytes; it is not a CSV"))])
    if encoding == "gb18030":
        try:
            return data.decode("gb18030")
        except UnicodeDecodeError as exc:
            raise InventoryCSVError(
                [RowError(_line_at(data, exc.start), "", _("not valid GB18030 text"))]
            ) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        hint = ""
        if encoding == "auto":
            try:
                data.decode("gb18030")
                hint = _("; it reads as GB18030 (Excel on Chinese Windows): choose that encoding")
            except UnicodeDecodeError:
                hint = _("; save it as CSV UTF-8")
        raise InventoryCSVError(
            [
                RowError(
                    _line_at(data, exc.start),
                    "",
                    _("not valid UTF-8 at byte %(offset)d") % {"offset": exc.start} + hint,
                )
            ]
        ) from None


def _line_at(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def unmark(value: str) -> str:
    """Undo :func:`mark`: drop one leading apostrophe."""
    return value[1:] if value.startswith(TEXT_MARK) else value


def mark(value: str) -> str:
    """Neutralize formula injection for spreadsheets; see the module docstring."""
    if value.startswith(FORMULA_CHARS) or value.startswith(TEXT_MARK):
        return TEXT_MARK + value
    return value


def normalize_newlines(value: str) -> str:
    return value.replace("\r\n", "\n").replace("\r", "\n")


def parse(text: str, *, type_codes: set[str], consent_codes: set[str]) -> list[ParsedRow]:
    """Validated rows, or :class:`InventoryCSVError` listing every bad cell with its line."""
    errors: list[RowError] = []
    rows: list[ParsedRow] = []
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise InventoryCSVError(
            [RowError(1, "", _("malformed CSV header (%(error)s)") % {"error": exc})]
        ) from None
    if header is None:
        raise InventoryCSVError([RowError(1, "", _("file is empty"))])
    if tuple(header) != COLUMNS:
        raise InventoryCSVError(
            [
                RowError(
                    1,
                    "",
                    _("header must be exactly %(expected)s (got %(got)s)")
                    % {"expected": ",".join(COLUMNS), "got": ",".join(h[:40] for h in header[:12])},
                )
            ]
        )
    seen: dict[str, int] = {}
    count = 0
    line = reader.line_num + 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            errors.append(RowError(line, "", _("malformed CSV (%(error)s)") % {"error": exc}))
            break
        start, line = line, reader.line_num + 1
        if not cells or cells == [""]:
            continue  # blank line
        count += 1
        if count > MAX_ROWS:
            errors.append(RowError(start, "", _("more than %(max)d rows") % {"max": MAX_ROWS}))
            break
        if len(cells) != len(COLUMNS):
            errors.append(
                RowError(
                    start,
                    "",
                    _("has %(n)d fields; expected %(expected)d")
                    % {"n": len(cells), "expected": len(COLUMNS)},
                )
            )
            continue
        row_errors: list[RowError] = []
        values = _row_values(
            start, dict(zip(COLUMNS, cells, strict=True)), row_errors, type_codes, consent_codes
        )
        row_errors.sort(key=lambda e: COLUMNS.index(e.column) if e.column in COLUMNS else -1)
        if not row_errors:
            first = seen.setdefault(values["source"], start)
            if first != start:
                row_errors.append(
                    RowError(
                        start,
                        "source",
                        _("duplicate of the source on line %(line)d") % {"line": first},
                    )
                )
        errors.extend(row_errors)
        if not row_errors:
            rows.append(ParsedRow(start, values))
    if errors:
        raise InventoryCSVError(errors[:MAX_ERRORS], total=len(errors))
    return rows


def _row_values(
    line: int,
    raw: dict[str, str],
    errors: list[RowError],
    type_codes: set[str],
    consent_codes: set[str],
) -> dict[str, Any]:
    def err(column: str, message: str) -> None:
        errors.append(RowError(line, column, message))

    text: dict[str, str] = {}
    for column, value in raw.items():
        if column in NUMERIC_COLUMNS:
            # Numbers are validated as numbers ("-2" is refused as negative, not as a formula).
            text[column] = value
            continue
        if value.startswith(FORMULA_CHARS):
            err(
                column,
                _(
                    "starts with %(char)r, which spreadsheets run as a formula; "
                    "prefix it with an apostrophe (') to keep it as text"
                )
                % {"char": value[0]},
            )
            continue
        value = unmark(value)
        if column == "notes":
            value = normalize_newlines(value)
            if _CONTROL_IN_NOTES.search(value):
                err(column, _("contains control characters"))
                continue
        elif _CONTROL.search(value) or "\n" in value:
            err(column, _("contains control characters or line breaks"))
            continue
        if value != value.strip():
            err(column, _("has leading or trailing spaces"))
            continue
        limit = MAX_LENGTHS.get(column)
        if limit and len(value) > limit:
            err(
                column,
                _("is %(n)d characters long (at most %(limit)d)")
                % {"n": len(value), "limit": limit},
            )
            continue
        text[column] = value

    values: dict[str, Any] = {}
    if "source" in text:
        if not text["source"]:
            err("source", _("is required"))
        values["source"] = text["source"]
    if "owner" in text:
        if not text["owner"]:
            err("owner", _("is required"))
        values["owner"] = text["owner"]
    if "notes" in text:
        values["notes"] = text["notes"]
    if "type" in text:
        code = TYPE_ALIASES.get(text["type"], text["type"].upper())
        if code not in type_codes:
            err(
                "type",
                _("%(value)r is not one of %(choices)s")
                % {"value": text["type"][:40], "choices": ", ".join(sorted(type_codes))},
            )
        values["type"] = code
    if "consent_status" in text:
        code = CONSENT_ALIASES.get(text["consent_status"], text["consent_status"].lower())
        if code not in consent_codes:
            err(
                "consent_status",
                _("%(value)r is not one of %(choices)s")
                % {
                    "value": text["consent_status"][:40],
                    "choices": ", ".join(sorted(consent_codes)),
                },
            )
        values["consent_status"] = code
    if "avg_size_MB" in text:
        values["avg_size_mb"] = _decimal(text["avg_size_MB"], err)
    if "estimated_count" in text:
        raw_count = text["estimated_count"]
        if not raw_count.isascii() or not raw_count.isdigit():
            err(
                "estimated_count",
                _("%(value)r is not a whole number ≥ 0") % {"value": raw_count[:40]},
            )
        elif len(raw_count) > 18:
            err("estimated_count", _("is too large"))
        else:
            values["estimated_count"] = int(raw_count)
    return values


def _decimal(raw: str, err: Any) -> Decimal | None:
    column = "avg_size_MB"
    try:
        value = Decimal(raw)
    except InvalidOperation:
        err(column, _("%(value)r is not a number") % {"value": raw[:40]})
        return None
    if not value.is_finite() or value < 0:
        err(column, _("%(value)r must be a finite number ≥ 0") % {"value": raw[:40]})
        return None
    if value.as_tuple().exponent < -3:  # type: ignore[operator]
        err(column, _("has more than 3 decimal places"))
        return None
    if value >= Decimal(10) ** 9:
        err(column, _("is too large (at most 999999999.999)"))
        return None
    return value


def format_decimal(value: Decimal) -> str:
    """Shortest exact text: 12.500 → "12.5", 100.000 → "100" (never "1E+2")."""
    text = format(value.normalize(), "f")
    return text


def render(rows: list[dict[str, Any]]) -> bytes:
    """The CSV bytes (UTF-8 with BOM, CRLF line ends as RFC 4180 says)."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow(
            [
                mark(row["source"]),
                mark(row["type"]),
                format_decimal(row["avg_size_mb"]),
                str(row["estimated_count"]),
                mark(row["owner"]),
                mark(row["consent_status"]),
                mark(row["notes"]),
            ]
        )
    return ("\ufeff" + buffer.getvalue()).encode("utf-8")
