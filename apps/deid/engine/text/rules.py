"""Rule layer of the clinical-text engine: regular expressions with context cues.

Each detector yields :class:`Hit` objects over the input text. Hits carry a normalised key
(used only to derive consistent masks, never exported) and, for dates and ages, what is needed
to build the replacement. Overlaps are resolved by priority, then length.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta

from .lexicon import (
    AMBIGUOUS_SURNAMES,
    COMPOUND_SURNAMES,
    DEPARTMENT_STEMS,
    EN_NAME_CUES,
    EN_NAME_SUFFIXES,
    EN_TITLES,
    ORG_SUFFIXES_ZH,
    SINGLE_SURNAMES,
    ZH_NAME_CUES,
    ZH_NAME_STOP,
    ZH_NAME_TITLES,
    ZH_RANK_TITLE_ACTS,
    ZH_RANK_TITLE_BEFORE,
    ZH_RANK_TITLES,
)
from .segmenter import segmenter_person_spans, tagged_name_at

CJK = "\u4e00-\u9fff"


def _rx(pattern: str, flags: int = 0) -> re.Pattern[str]:
    """Compile with ASCII semantics: ``\\b``, ``\\w`` and ``\\d`` must not treat CJK characters as
    word characters, or "2000年" and "在Mar 5" would lose their word boundaries."""
    return re.compile(pattern, flags | re.ASCII)


PRIORITY = {
    "PATIENT_ID": 100,
    "PERSON_KNOWN": 99,
    "RESIDENT_ID": 90,
    "EMAIL": 85,
    "URL": 84,
    "PHONE": 80,
    "MEDICAL_ID": 75,
    "IP": 70,
    "DATE": 60,
    "ADDRESS": 55,
    "PERSON": 50,
    "HOSPITAL": 45,
    "DEPARTMENT": 40,
    "WARD": 40,
    "AGE": 35,
    "BED": 30,
    "ID_NUMBER": 20,
}


@dataclass
class Hit:
    """One detected span. ``key`` and ``replacement_fn`` never leave the engine."""

    type: str
    start: int
    end: int
    key: str
    priority: int = 0
    replace: Callable[[int | None], str | None] | None = field(default=None, repr=False)


# --------------------------------------------------------------------------------------
# Resident ID (GB 11643-1999): 6 area digits, 8 birth-date digits, 3 sequence, 1 check.
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def resident_id_check_char(first17: str) -> str:
    """The GB 11643 check character for 17 leading digits."""
    return _ID_CHECK[sum(int(c) * w for c, w in zip(first17, _ID_WEIGHTS, strict=True)) % 11]


def is_valid_resident_id(value: str) -> bool:
    """True if ``value`` is an 18-character resident ID with a correct check character."""
    v = value.upper()
    return bool(re.fullmatch(r"\d{17}[\dX]", v)) and resident_id_check_char(v[:17]) == v[17]


_RE_RESIDENT_18 = _rx(r"(?<!\d)\d{6}[ -]?\d{8}[ -]?\d{3}[\dXx](?![\dA-Za-z])")
_RE_DIGIT_RUN = _rx(r"\d{18,}[Xx]?|\d{19,}")
_RE_RESIDENT_15 = _rx(r"(?<!\d)\d{6}\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}(?!\d)")

# --------------------------------------------------------------------------------------
_RE_PHONE = [
    # Mainland mobile, optional +86 / 0086, optional space or dash groups (138 1234 5678).
    _rx(r"(?<![\d+])(?:(?:\+|00)\s?86[ -]?)?1[3-9]\d(?:[ -]?\d{4}){2}(?!\d)"),
    # Landline with area code: 010-12345678, (0755) 1234 5678, 0571 8888888 转 123.
    _rx(
        r"(?<![\d+])(?:(?:\+|00)\s?86[ -]?)?(?:\(0\d{2,3}\)|（0\d{2,3}）|0\d{2,3})"
        r"[ -]?\d{3,4}[ -]?\d{4}"
        r"(?:\s?(?:转|ext\.?|x|分机)\s?\d{1,5})?(?!\d)"
    ),
    # International form without trunk zero: +86 10 1234 5678.
    _rx(r"(?:\+|00)\s?86[ -]?[1-9]\d{1,2}[ -]?\d{3,4}[ -]?\d{4}(?!\d)"),
    # North American: (415) 555-0123, 415-555-0123, +1 415 555 0123.
    _rx(
        r"(?<![\d\w])(?:\+?1[ .-]?)?(?:\(\d{3}\)\s?|\d{3}[ .-])\d{3}[ .-]\d{4}"
        r"(?:\s?(?:x|ext\.?)\s?\d{1,6})?(?!\d)"
    ),
]
_RE_PHONE_CUE = _rx(
    r"(?:电话|手机|手机号|联系电话|联系方式|座机|传真|Tel|TEL|Phone|phone|Mobile|mobile|Cell|Fax|fax)"
    r"\s*(?:号码)?\s*[:：]?\s*(\+?[\d][\d\s()\-]{5,18}\d)"
)
_RE_EMAIL = _rx(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}")
_RE_URL = _rx(r"(?:https?://|ftp://|www\.)[^\s<>\"'，。；）)\]]+", re.IGNORECASE)
_OCT = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_RE_IPV4 = _rx(rf"(?<![\d.]){_OCT}(?:\.{_OCT}){{3}}(?!\.?\d)")
_RE_IPV6 = _rx(
    r"(?<![0-9A-Fa-f:])(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}(?![0-9A-Fa-f:])"
    r"|(?<![0-9A-Fa-f:])(?:[0-9A-Fa-f]{1,4}:){1,6}:(?:[0-9A-Fa-f]{1,4}:?){1,6}(?![0-9A-Fa-f:])"
)

# --------------------------------------------------------------------------------------
_MEDICAL_ID_CUES = (
    r"病历号|病案号|住院号|门诊号|急诊号|就诊号|就诊卡号|诊疗卡号|医保卡号|医保号|社保卡号|社保号|卡号|登记号|"
    r"检查号|影像号|放射号|检验号|标本号|条码号|条形码|流水号|申请单号|医嘱号|ID号|患者ID|病人ID|患者编号|"
    r"病人编号|住院流水号|Patient\s?ID|PID|MRN|MR\s?No\.?|MR\s?#|Medical\s+Record(?:\s+(?:Number|No\.?|#))?|"
    r"Accession(?:\s+(?:Number|No\.?|#)|#)?|Acc\s?#|Inpatient(?:\s+(?:Number|No\.?|ID))|"
    r"Outpatient(?:\s+(?:Number|No\.?|ID))|Admission(?:\s+(?:Number|No\.?|ID))|"
    r"Encounter(?:\s+(?:Number|No\.?|ID))|Visit(?:\s+(?:Number|No\.?|ID))|Hospital\s+(?:Number|No\.?)|"
    r"Specimen(?:\s+(?:Number|No\.?|ID))|Order(?:\s+(?:Number|No\.?))|Study\s+ID|Case(?:\s+(?:Number|No\.?))|"
    r"SSN|Social\s+Security(?:\s+Number)?|Insurance(?:\s+(?:Number|No\.?|ID))"
)
_RE_MEDICAL_ID = _rx(
    rf"(?:{_MEDICAL_ID_CUES})\s*(?:[:：#=]|是|为)?\s*([A-Za-z]{{0,4}}[-_]?\d[\dA-Za-z\-_/]{{1,29}})"
)
# The patient's own record number (not an accession, order, specimen, card or insurance
# number): a note's "住院号: MRN100000" names whose note it is. PACS exports usually carry the
# same number as the DICOM Patient ID, which keys every other file of the patient.
_OWN_RECORD_LABEL = (
    r"病历号|病案号|住院号|门诊号|患者ID|病人ID|患者编号|病人编号|Patient\s?ID|MRN|"
    r"MR\s?No\.?|Medical\s+Record(?:\s+(?:Number|No\.?|#))?|Hospital\s+(?:Number|No\.?)"
)
_RE_OWN_RECORD = _rx(
    rf"(?P<label>{_OWN_RECORD_LABEL})"
    r"\s*(?:[:：#=]|是|为)?\s*(?P<number>[A-Za-z]{0,4}[-_]?\d[\dA-Za-z\-_/]{1,29})"
)


def is_record_label(label: str) -> bool:
    """Whether ``label`` is one the own-record-number rule reads (for profile checks)."""
    return re.fullmatch(_OWN_RECORD_LABEL, label.strip(), re.IGNORECASE) is not None


def record_label_key(label: str) -> str:
    """A record-number label as compared: case, spaces and a final dot do not count
    ("MR No." = "mr no" = "MRNo")."""
    return re.sub(r"\s+", "", label).rstrip(".").casefold()


def own_record_numbers(text: str, labels: Iterable[str] = ()) -> list[str]:
    """The distinct record numbers the text labels as the patient's own, in order of first
    appearance (one means the note names its patient; more, that it names several).

    ``labels`` keeps only the numbers under those labels (a site whose PACS Patient ID is the
    住院号 sets ``("住院号",)``, so a note that also gives a 门诊号 still names one patient)."""
    wanted = {record_label_key(label) for label in labels}
    seen: dict[str, None] = {}
    for m in _RE_OWN_RECORD.finditer(text):
        if wanted and record_label_key(m.group("label")) not in wanted:
            continue
        seen.setdefault(m.group("number"), None)
    return list(seen)


_RE_BED = [
    _rx(r"(?:床号|床位号?|Bed(?:\s+(?:No\.?|Number|#))?)\s*[:：#]?\s*([A-Za-z]?\d{1,4}[A-Za-z]?)"),
    _rx(r"(?<![\d.])(\d{1,3})\s*(?:号)?床(?!位|旁|边|头|上)"),
]
_RE_LONG_NUMBER = _rx(r"(?<!\d)\d{9,}(?!\d)")

# --------------------------------------------------------------------------------------
_MONTHS = {
    "jan": 1,
    "feb": 2,
    "mar": 3,
    "apr": 4,
    "may": 5,
    "jun": 6,
    "jul": 7,
    "aug": 8,
    "sep": 9,
    "oct": 10,
    "nov": 11,
    "dec": 12,
}
_MONTH_NAMES_FULL = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
_MON_RE = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
    r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?|"
    r"JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC)"
)
_YEAR = r"(?:19|20)\d{2}"


def _safe_date(y: int, m: int, d: int) -> date | None:
    try:
        return date(y, m, d)
    except ValueError:
        return None


def _pad(value: int, like: str) -> str:
    return f"{value:0{len(like)}d}" if len(like) > 1 and like.startswith("0") else str(value)


def _month_like(m: int, like: str) -> str:
    full = _MONTH_NAMES_FULL[m - 1]
    out = (full if like[0].isupper() else full.lower()) if len(like) > 3 else full[:3]
    if like.isupper():
        out = out.upper()
    return out


_DateRule = tuple[re.Pattern[str], Callable[[re.Match[str]], "Hit | None"]]


def _build_date_rules() -> list[_DateRule]:
    """Compiled once at import: (pattern, handler) pairs; handlers build a Hit whose
    replacement re-renders the shifted date in the matched format."""

    def mk(m: re.Match[str], dt: date | None, build: Callable[[date], str]) -> Hit | None:
        if dt is None:
            return None

        def replace(shift: int | None, dt: date = dt) -> str | None:
            return None if shift is None else build(dt + timedelta(days=shift))

        return Hit("DATE", m.start(), m.end(), dt.isoformat(), PRIORITY["DATE"], replace)

    pats: list[tuple[re.Pattern[str], Callable[[re.Match[str]], Hit | None]]] = []

    # 2024年3月5日 / 2024 年 03 月 05 日 / 2024年3月5号
    def zh_full(m: re.Match[str]) -> Hit | None:
        y, mo, d = m.group(1), m.group(2), m.group(3)
        sep = m.group(0)
        spaced = " " in sep
        suffix = sep[-1]

        def build(n: date) -> str:
            s = " " if spaced else ""
            return f"{n.year}{s}年{s}{_pad(n.month, mo)}{s}月{s}{_pad(n.day, d)}{s}{suffix}"

        return mk(m, _safe_date(int(y), int(mo), int(d)), build)

    pats.append((_rx(rf"({_YEAR})\s*年\s*(\d{{1,2}})\s*月\s*(\d{{1,2}})\s*[日号]"), zh_full))

    def zh_ym(m: re.Match[str]) -> Hit | None:
        y, mo = m.group(1), m.group(2)
        return mk(m, _safe_date(int(y), int(mo), 15), lambda n: f"{n.year}年{_pad(n.month, mo)}月")

    pats.append((_rx(rf"({_YEAR})\s*年\s*(\d{{1,2}})\s*月(?!\s*\d{{1,2}}\s*[日号])"), zh_ym))

    def zh_md(m: re.Match[str]) -> Hit | None:
        mo, d = m.group(1), m.group(2)
        # No year: shift within a leap year so 2月29日 stays representable.
        return mk(
            m,
            _safe_date(2000, int(mo), int(d)),
            lambda n: f"{_pad(n.month, mo)}月{_pad(n.day, d)}日",
        )

    pats.append((_rx(r"(?<![\d年])(\d{1,2})\s*月\s*(\d{1,2})\s*[日号]"), zh_md))

    # 2024-03-05, 2024/3/5, 2024.03.05 (optionally followed by a time, which is kept).
    def iso(m: re.Match[str]) -> Hit | None:
        g = m.groups()
        y, sep, mo, d = g[0:4] if g[0] else g[4:8]
        return mk(
            m,
            _safe_date(int(y), int(mo), int(d)),
            lambda n: f"{n.year}{sep}{_pad(n.month, mo)}{sep}{_pad(n.day, d)}",
        )

    pats.append(
        (
            _rx(
                rf"({_YEAR})([-/])(1[0-2]|0?[1-9])\2(0[1-9]|[12]\d|3[01]|[1-9])"
                rf"|(?<![\d.])({_YEAR})(\.)(1[0-2]|0?[1-9])\.(0[1-9]|[12]\d|3[01]|[1-9])(?![\d.]\d|\d)"
            ),
            iso,
        )
    )

    # 20240305 (DICOM style) when it is a valid calendar date.
    def compact(m: re.Match[str]) -> Hit | None:
        y, mo, d = m.group(1), m.group(2), m.group(3)
        return mk(m, _safe_date(int(y), int(mo), int(d)), lambda n: n.strftime("%Y%m%d"))

    pats.append(
        (
            _rx(rf"(?<![\d.])({_YEAR})(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])(?![\d])"),
            compact,
        )
    )

    # 05/03/2024, 3-5-2024, 05.03.2024: month-first unless the first number cannot be a month.
    def numeric_dmy(m: re.Match[str]) -> Hit | None:
        a, sep, b, y = m.group(1), m.group(2), m.group(3), m.group(4)
        yi = int(y) if len(y) == 4 else 2000 + int(y)
        ia, ib = int(a), int(b)
        if ia > 12 and ib <= 12:
            dt = _safe_date(yi, ib, ia)
            return mk(m, dt, lambda n: f"{_pad(n.day, a)}{sep}{_pad(n.month, b)}{sep}{n.year}")
        dt = _safe_date(yi, ia, ib)
        return mk(m, dt, lambda n: f"{_pad(n.month, a)}{sep}{_pad(n.day, b)}{sep}{n.year}")

    pats.append(
        (
            _rx(rf"(?<![\d.])(\d{{1,2}})([/.-])(\d{{1,2}})\2({_YEAR}|\d{{2}}(?=\b))(?![\d])"),
            numeric_dmy,
        )
    )

    # Mar 5, 2024 / March 5th 2024
    def en_mdy(m: re.Match[str]) -> Hit | None:
        mon, d, y = m.group(1), m.group(2), m.group(3)
        mo = _MONTHS[mon[:3].lower()]
        comma = "," in m.group(0)
        return mk(
            m,
            _safe_date(int(y), mo, int(d)),
            lambda n: f"{_month_like(n.month, mon)} {n.day}{',' if comma else ''} {n.year}",
        )

    pats.append(
        (
            _rx(rf"({_MON_RE})\.?\s+(\d{{1,2}})(?:st|nd|rd|th)?,?\s+({_YEAR})"),
            en_mdy,
        )
    )

    # 5 March 2024 / 05-Mar-2024
    def en_dmy(m: re.Match[str]) -> Hit | None:
        d, mon, y = m.group(1), m.group(2), m.group(3)
        mo = _MONTHS[mon[:3].lower()]
        dash = "-" in m.group(0)
        sep = "-" if dash else " "
        return mk(
            m,
            _safe_date(int(y), mo, int(d)),
            lambda n: f"{_pad(n.day, d)}{sep}{_month_like(n.month, mon)}{sep}{n.year}",
        )

    pats.append(
        (
            _rx(rf"(?<![\d.])(\d{{1,2}})(?:st|nd|rd|th)?[\s-]+({_MON_RE})\.?,?[\s-]+({_YEAR})"),
            en_dmy,
        )
    )

    # March 2024
    def en_my(m: re.Match[str]) -> Hit | None:
        mon, y = m.group(1), m.group(2)
        mo = _MONTHS[mon[:3].lower()]
        return mk(m, _safe_date(int(y), mo, 15), lambda n: f"{_month_like(n.month, mon)} {n.year}")

    pats.append((_rx(rf"({_MON_RE})\.?,?\s+({_YEAR})"), en_my))

    # Mar 5 (no year)
    def en_md(m: re.Match[str]) -> Hit | None:
        mon, d = m.group(1), m.group(2)
        mo = _MONTHS[mon[:3].lower()]
        return mk(m, _safe_date(2000, mo, int(d)), lambda n: f"{_month_like(n.month, mon)} {n.day}")

    pats.append(
        (
            _rx(
                rf"(?<![a-z])({_MON_RE})\.?\s+(\d{{1,2}})(?:st|nd|rd|th)?\b(?!\s*(?:mg|ml|mm|cm|%))"
            ),
            en_md,
        )
    )

    return pats


_DATE_RULES = _build_date_rules()


def _date_hits(text: str) -> Iterator[Hit]:
    for rx, fn in _DATE_RULES:
        for m in rx.finditer(text):
            hit = fn(m)
            if hit is not None:
                yield hit


# --------------------------------------------------------------------------------------
_AGE_RULES = [
    _rx(r"(?<![\d.])(\d{2,3})\s*(?:周岁|岁)"),
    _rx(r"(?:年龄|Age|age|AGE)\s*[:：]?\s*(\d{2,3})(?!\.?\d)"),
    _rx(r"\b(\d{2,3})[- ](?:years?|yrs?)[- ]old\b", re.IGNORECASE),
    _rx(r"\b(\d{2,3})\s*(?:y/o|yo|y\.o\.)", re.IGNORECASE),
    _rx(r"\b0?(\d{2,3})Y\b"),
]


def _age_hits(text: str, threshold: int) -> Iterator[Hit]:
    for rx in _AGE_RULES:
        for m in rx.finditer(text):
            n = int(m.group(1))
            if n > threshold:
                yield Hit(
                    "AGE",
                    m.start(1),
                    m.end(1),
                    "90+",
                    PRIORITY["AGE"],
                    lambda _shift: "≥90",
                )


# --------------------------------------------------------------------------------------
_FUNCTION_PREFIX = "患者病人家住在于至到往去入收转诊治就来自经由送位现居及和与的为是址地"
_ADDR_CUE = _rx(
    r"(?:家庭住址|现住址|户籍地址|户籍地|通讯地址|联系地址|居住地|住址|地址|籍贯|出生地|工作单位|"
    r"Home address|Address|address|ADDRESS)\s*[:：]\s*([^\n，。；;]{2,80}?)"
    # The value ends at a clause break, a wide gap, the next "label：" on the same line, or an
    # English sentence end (". Accession No." but not "Apt. 830").
    r"(?=\s{2,}|\t|[\u4e00-\u9fffA-Za-z]{2,6}\s*[:：]|[\n，。；;]|\.\s+[A-Z][a-z]|\.[A-Z]{2}|\.[\u4e00-\u9fff]|\.?$"
    # ... or right after a US ZIP code ("IN 60742").
    r"|(?<=\b[A-Z]{2} \d{5})(?![\d-])|(?<=\b[A-Z]{2} \d{5}-\d{4})(?!\d))"
)
_ZH_PROV = rf"[{CJK}]{{2,6}}?(?:省|自治区|特别行政区)"
_ZH_CITY = rf"[{CJK}]{{2,4}}?(?:市|自治州|地区|盟)"
_ZH_DIST = rf"[{CJK}]{{1,5}}?(?:区|县|旗|市)"
_ZH_TOWN = rf"[{CJK}]{{1,6}}?(?:街道|镇|乡)"
_ZH_ROAD = rf"[{CJK}\d]{{1,10}}?(?:大街|大道|路|街|巷|弄|胡同)"
_ZH_NUM = r"(?:\d+(?:号院|号楼|号|弄)|[\d\-]+(?:栋|幢|座|楼|单元|层|室|号|户))+"
_ZH_VILLAGE = rf"[{CJK}]{{1,8}}?(?:村|小区|社区|花园|公寓|新村|家园)"
_RE_ADDR_ZH = [
    _rx(
        rf"(?:{_ZH_PROV})?(?:{_ZH_CITY})(?:{_ZH_DIST})?(?:{_ZH_TOWN})?(?:{_ZH_VILLAGE})?(?:{_ZH_ROAD})?"
        rf"(?:{_ZH_NUM})?"
    ),
    _rx(rf"(?:{_ZH_PROV})(?:{_ZH_CITY})?(?:{_ZH_DIST})?(?:{_ZH_ROAD})?(?:{_ZH_NUM})?"),
    _rx(rf"(?:{_ZH_DIST})?(?:{_ZH_ROAD})(?:{_ZH_NUM})"),
    _rx(rf"(?:{_ZH_VILLAGE})(?:{_ZH_NUM})"),
]
_RE_ADDR_EN = _rx(
    r"\b\d{1,5}\s+(?:[A-Z][a-z]+\s){1,3}(?:Street|St|Road|Rd|Avenue|Ave|Boulevard|Blvd|Lane|Ln|"
    r"Drive|Dr|Court|Ct|Way|Place|Pl|Terrace|Highway|Hwy)\b\.?"
    r"(?:,?\s+(?:Apt|Suite|Unit)\.?\s*#?\w+)?(?:,\s*[A-Z][a-z]+(?:\s[A-Z][a-z]+)?)?"
    r"(?:,\s*[A-Z]{2})?(?:\s+\d{5}(?:-\d{4})?)?"
)


_US_STATES = (
    "AL|AK|AZ|AR|CA|CO|CT|DE|DC|FL|GA|HI|ID|IL|IN|IA|KS|KY|LA|ME|MD|MA|MI|MN|MS|MO|MT|NE|NV|NH|NJ|"
    "NM|NY|NC|ND|OH|OK|OR|PA|RI|SC|SD|TN|TX|UT|VT|VA|WA|WV|WI|WY|AS|FM|GU|MH|MP|PW|PR|VI|AA|AE|AP"
)
# A US address ending in "City, ST 12345" (or a military "APO AE 12345"): from the house number
# (or PSC/Unit/USNS/USS) to the ZIP code on one line, without crossing a sentence end, a
# "Label:" or Chinese text. Catches street types no list has (Gardens, Locks, Prairie ...).
_RE_ADDR_US = _rx(
    r"\b(?:\d{1,6}\s+[A-Z][A-Za-z]*|PSC\s+\d+|Unit\s+\d+|USNS\s+[A-Z]|USNV\s+[A-Z]|USS\s+[A-Z]|"
    r"USCGC\s+[A-Z])(?:(?!\.\s+[A-Z][a-z]|[A-Za-z]+:)[^\n。，；\u4e00-\u9fff]){0,60}?"
    rf"(?:,\s*[A-Z][a-z]+(?:\s[A-Z][a-z]+)*,?|,?\s*(?:APO|FPO|DPO))\s+(?:{_US_STATES})\s+\d{{5}}(?:-\d{{4}})?\b"
)


def _trim_prefix(text: str, start: int, end: int) -> int:
    while start < end - 2 and text[start] in _FUNCTION_PREFIX:
        start += 1
    return start


def _address_hits(text: str, digits: bool = True) -> Iterator[Hit]:
    for m in _ADDR_CUE.finditer(text):
        s, e = m.start(1), m.end(1)
        yield Hit("ADDRESS", s, e, text[s:e].strip(), PRIORITY["ADDRESS"] + 1)
    for i, rx in enumerate(_RE_ADDR_ZH):
        for m in rx.finditer(text):
            if m.end() - m.start() < 4:
                continue
            seg = m.group(0)
            parts = sum(
                1
                for p in (
                    "省",
                    "市",
                    "区",
                    "县",
                    "镇",
                    "乡",
                    "路",
                    "街",
                    "巷",
                    "号",
                    "村",
                    "室",
                    "楼",
                )
                if p in seg
            )
            # A lone "…市" or "…区" is too weak (心前区, 本市); require two components.
            if parts < 2 and i < 3:
                continue
            s = _trim_prefix(text, m.start(), m.end())
            yield Hit("ADDRESS", s, m.end(), text[s : m.end()], PRIORITY["ADDRESS"])
    for m in _RE_ADDR_EN.finditer(text):
        yield Hit("ADDRESS", m.start(), m.end(), m.group(0), PRIORITY["ADDRESS"])
    if digits:
        for m in _RE_ADDR_US.finditer(text):
            yield Hit("ADDRESS", m.start(), m.end(), m.group(0), PRIORITY["ADDRESS"])


# --------------------------------------------------------------------------------------
_GENERIC_ORGS = {"当地医院", "上级医院", "基层医院", "外院", "本院", "我院", "专科医院", "综合医院"}
_ORG_ALT = "|".join(sorted(ORG_SUFFIXES_ZH, key=len, reverse=True))
_RE_HOSPITAL_ZH = _rx(rf"[{CJK}A-Za-z0-9（）()]{{2,16}}?(?:{_ORG_ALT})")
_RE_HOSPITAL_EN = _rx(
    r"\b(?:[A-Z][a-z'.]+\s){1,5}(?:Hospital|Medical Center|Medical Centre|Clinic|Health Center|"
    r"Infirmary|Children's Hospital)\b|\b(?:Hospital|University) of (?:[A-Z][a-z]+\s?){1,4}"
)
_DEPT_ALT = "|".join(sorted(DEPARTMENT_STEMS, key=len, reverse=True))
_RE_DEPT_ZH = _rx(rf"(?:{_DEPT_ALT})科(?:[一二三四五六七八九十\d]+病区)?")
_RE_DEPT_EN = _rx(r"\bDepartment of (?:[A-Z][a-z]+(?:\s(?:and|&)\s)?\s?){1,4}")
_RE_WARD = [
    _rx(r"[\d一二三四五六七八九十]{1,3}号?(?:病区|病房)"),
    # Named wards (心内一病区); an ICU stay (重症监护室) is clinical context, not a place name.
    _rx(rf"[{CJK}]{{1,4}}?[一二三四五六七八九十\d]病区"),
    _rx(r"\b[Ww]ard\s*\d+[A-Z]?\b|\b[A-Z][a-z]+ Ward\b"),
]


def _org_hits(text: str) -> Iterator[Hit]:
    for m in _RE_HOSPITAL_ZH.finditer(text):
        s = _trim_prefix(text, m.start(), m.end())
        name = text[s : m.end()]
        if name in _GENERIC_ORGS or len(name) < 4:
            continue
        yield Hit("HOSPITAL", s, m.end(), name, PRIORITY["HOSPITAL"])
    for m in _RE_HOSPITAL_EN.finditer(text):
        yield Hit("HOSPITAL", m.start(), m.end(), m.group(0), PRIORITY["HOSPITAL"])
    for rx in (_RE_DEPT_ZH, _RE_DEPT_EN):
        for m in rx.finditer(text):
            yield Hit("DEPARTMENT", m.start(), m.end(), m.group(0).strip(), PRIORITY["DEPARTMENT"])
    for rx in _RE_WARD:
        for m in rx.finditer(text):
            s = _trim_prefix(text, m.start(), m.end())
            if m.end() - s < 3:
                continue
            yield Hit("WARD", s, m.end(), text[s : m.end()], PRIORITY["WARD"])


# --------------------------------------------------------------------------------------
_SURNAME_RE = (
    "(?:" + "|".join(sorted(COMPOUND_SURNAMES)) + "|[" + "".join(sorted(SINGLE_SURNAMES)) + "])"
)
# Surnames that are also everyday function words: only trusted after an explicit colon.
_AMBIGUOUS_SURNAMES = AMBIGUOUS_SURNAMES
# Surnames that are also prepositions, conjunctions or auxiliaries: never a name before a bare
# title (向医生咨询); other ambiguous ones are (黄主任, 高教授).
_FUNCTION_SURNAMES = set("于和向时应常能由都那来相连关与及为以给对把被在查解单成安全")
_NOT_IN_GIVEN = set("科院室部区床号楼级期型性度次天月年日")
# Function words and ward routine that end a clause right before a title: 查房时主任指示 and
# 查房时向主任汇报 hold no name (查 and 房 are surnames, 房时 and 时向 are not given names).
_NOT_BEFORE_TITLE = set("时后前向由请经对给把被在房诊查")
_CUE_ALT = "|".join(sorted(ZH_NAME_CUES, key=len, reverse=True))
_TITLE_ALT = "|".join(sorted(ZH_NAME_TITLES, key=len, reverse=True))
_RE_ZH_CUE = _rx(rf"(?:{_CUE_ALT})\s*([:：])?\s*({_SURNAME_RE})([{CJK}]{{1,2}})")
# After an explicit "label：" (姓名：阎飞, 主治医师：阿洁) the value is a name even when its
# surname is not in the list.
_RE_ZH_LABEL = _rx(rf"(?:{_CUE_ALT})\s*[:：]\s*([{CJK}]{{2,4}})")
_ZH_LABEL_NOT_NAMES = ("不详", "未知", "本人", "同意", "拒绝", "拒签", "家属", "患者", "见上", "无")
_RE_ZH_TITLE = _rx(rf"({_SURNAME_RE})([{CJK}]{{0,2}}?)({_TITLE_ALT})")
_RE_ZH_SEX_AGE = _rx(
    rf"({_SURNAME_RE}[{CJK}]{{1,2}})\s*[，,、]?\s*[男女]\s*[，,、]?\s*\d{{1,3}}\s*岁"
)
# A name word has a lower-case letter after its capital (so "MRN", "DOB", "MD" are not names);
# O'Connor and McDonald still match. Words are separated by one or two spaces, not newlines.
_EN_WORD = r"[A-Z](?:[a-z]|'[A-Z])[a-zA-Z'\-]*"
_EN_NAME = rf"{_EN_WORD}(?:[ \t]{{1,2}}[A-Z]\.)?(?:[ \t]{{1,2}}{_EN_WORD}){{0,2}}"
_RE_EN_TITLE = _rx(rf"\b(?:{'|'.join(EN_TITLES)})\.?\s+({_EN_NAME})")
_RE_EN_CUE = _rx(
    rf"\b(?:{'|'.join(sorted(EN_NAME_CUES, key=len, reverse=True))})\s*[:：]\s*"
    rf"({_EN_WORD}(?:,?[ \t]{{1,2}}{_EN_WORD}){{0,2}})"
)
_RE_EN_RELATION = _rx(
    r"\b(?:daughter|son|wife|husband|mother|father|sister|brother|spouse|partner|"
    rf"grandson|granddaughter|niece|nephew|guardian)[ \t]+({_EN_WORD}(?:[ \t]{_EN_WORD})?)"
)
_SUFFIX_ALT = "|".join(re.escape(s) for s in EN_NAME_SUFFIXES)
_RE_EN_SUFFIX = _rx(
    rf"\b([A-Z][a-z]+(?:\s[A-Z]\.)?\s[A-Z][a-z'\-]+),?\s(?:{_SUFFIX_ALT})(?![A-Za-z])"
)
_RE_DICOM_PN = _rx(r"\b[A-Za-z][A-Za-z'\-]*\^[A-Za-z][A-Za-z'\-^]*")
# Words after a cue that are not names (Patient: Male ...).
_EN_NOT_NAMES = {
    "Male",
    "Female",
    "Unknown",
    "None",
    "The",
    "This",
    "He",
    "She",
    "Patient",
    "Denies",
    "Is",
    "Was",
    "Has",
    "Had",
    "No",
    "Yes",
    "Admitted",
    "Presented",
    "History",
    "Age",
    "Mr",
    "Mrs",
    "Ms",
    "Dr",
}


def _given(text: str, start: int, raw: str) -> int:
    """End index of a Chinese given name of 1-2 chars, stopping at cue/stop characters."""
    if len(raw) == 2 and (raw[1] in ZH_NAME_STOP or raw[1] in _NOT_IN_GIVEN):
        return start + 1
    return start + len(raw)


def _rank_title_name(text: str, m: re.Match[str]) -> bool:
    """Whether a function-word surname + title (``_RE_ZH_TITLE`` with no given name) is a
    person: a rank title at the clause start (or after 由, 请 ...) followed by what the person
    does (向主任查房后, 由常主任主刀), not a preposition phrase (向主任汇报, 应主任要求,
    查房时主任指示, 向医生咨询)."""
    if m.group(3) not in ZH_RANK_TITLES or not text.startswith(ZH_RANK_TITLE_ACTS, m.end()):
        return False
    s = m.start(1)
    return s == 0 or not _is_cjk(text[s - 1]) or text.endswith(ZH_RANK_TITLE_BEFORE, 0, s)


def _is_cjk(ch: str) -> bool:
    return "\u4e00" <= ch <= "\u9fff"


def _rule_person_hits(text: str) -> Iterator[Hit]:
    p = PRIORITY["PERSON"]
    for m in _RE_ZH_CUE.finditer(text):
        colon, sur, given = m.group(1), m.group(2), m.group(3)
        if given[0] in ZH_NAME_STOP or given[0] in _NOT_IN_GIVEN:
            continue
        if not colon and sur in _AMBIGUOUS_SURNAMES:
            # 患者于晨 is a name, 患者于今日 is not: ask the segmenter.
            end = tagged_name_at(text, m.start(2))
            if end is not None:
                yield Hit("PERSON", m.start(2), end, text[m.start(2) : end], p)
            continue
        s = m.start(2)
        e = _given(text, m.start(3), given)
        yield Hit("PERSON", s, e, text[s:e], p)
    for m in _RE_ZH_LABEL.finditer(text):
        value = m.group(1)
        if value.startswith(_ZH_LABEL_NOT_NAMES):
            continue
        limit = 4 if value[:2] in COMPOUND_SURNAMES else 3
        n = 0
        while n < min(limit, len(value)) and not (
            n and (value[n] in ZH_NAME_STOP or value[n] in _NOT_IN_GIVEN)
        ):
            n += 1
        if n >= 2:
            s = m.start(1)
            yield Hit("PERSON", s, s + n, value[:n], p)
    for m in _RE_ZH_TITLE.finditer(text):
        sur, given = m.group(1), m.group(2)
        if any(c in _NOT_IN_GIVEN or c in ZH_NAME_STOP or c in _NOT_BEFORE_TITLE for c in given):
            continue
        if sur in _FUNCTION_SURNAMES and not given and not _rank_title_name(text, m):
            continue  # 向医生咨询, 和护士沟通, 应主任要求
        yield Hit("PERSON", m.start(1), m.end(2), m.group(1) + given, p)
    for m in _RE_ZH_SEX_AGE.finditer(text):
        s = _trim_prefix(text, m.start(1), m.end(1))
        yield Hit("PERSON", s, m.end(1), text[s : m.end(1)], p)
    for rx in (_RE_EN_TITLE, _RE_EN_CUE, _RE_EN_SUFFIX, _RE_EN_RELATION):
        for m in rx.finditer(text):
            name = m.group(1)
            first = re.split(r"[\s,]+", name)[0]
            if first in _EN_NOT_NAMES:
                continue
            # Drop trailing capitalised words that are clinical (e.g. "John Smith Denies").
            yield Hit("PERSON", m.start(1), m.end(1), name.lower(), p)
    for m in _RE_DICOM_PN.finditer(text):
        yield Hit("PERSON", m.start(), m.end(), m.group(0).lower(), p)


_HAS_CJK = re.compile(f"[{CJK}]")


def _person_hits(text: str) -> Iterator[Hit]:
    hits = list(_rule_person_hits(text))
    yield from hits
    # Names without a cue: jieba's person tags, guarded (text/segmenter.py). Names the rules
    # found are blanked first, wherever they recur, so jieba reads only the rest (its HMM is
    # the costly part). Ranked under the rule hits, so an address, hospital or cued name that
    # overlaps keeps its own span.
    blanked = text
    for v in {text[h.start : h.end] for h in hits}:
        if len(v) >= 2 and _HAS_CJK.search(v):
            blanked = blanked.replace(v, " " * len(v))
    for s, e in segmenter_person_spans(blanked):
        yield Hit("PERSON", s, e, text[s:e], PRIORITY["PERSON"] - 1)


# --------------------------------------------------------------------------------------
_HAS_DIGIT = re.compile(r"[0-9]")


def find_hits(text: str, *, detect_names: bool = True, age_threshold: int = 89) -> list[Hit]:
    """All rule hits over ``text`` (overlapping; see :func:`resolve`).

    Families that cannot match are skipped by cheap gates (no digit, no ``@``, no ``://``):
    most DICOM strings are short and digit-free, and the walk calls this for each of them.
    """
    hits: list[Hit] = []
    digits = _HAS_DIGIT.search(text) is not None
    if digits:
        _numeric_hits(text, hits, age_threshold)
    if "@" in text:
        for m in _RE_EMAIL.finditer(text):
            hits.append(Hit("EMAIL", m.start(), m.end(), m.group(0).lower(), PRIORITY["EMAIL"]))
    low = text.lower()
    if "://" in low or "www." in low:
        for m in _RE_URL.finditer(text):
            end = m.end()
            while end > m.start() and text[end - 1] in ".,;:!?":
                end -= 1
            hits.append(Hit("URL", m.start(), end, text[m.start() : end].lower(), PRIORITY["URL"]))
    if ":" in text:
        for m in _RE_IPV6.finditer(text):
            hits.append(Hit("IP", m.start(), m.end(), m.group(0).lower(), PRIORITY["IP"]))
    hits.extend(_address_hits(text, digits))
    hits.extend(_org_hits(text))
    if detect_names:
        hits.extend(_person_hits(text))
    return hits


def _numeric_hits(text: str, hits: list[Hit], age_threshold: int) -> None:
    for m in _RE_RESIDENT_18.finditer(text):
        key = re.sub(r"[ -]", "", m.group(0)).upper()
        hits.append(Hit("RESIDENT_ID", m.start(), m.end(), key, PRIORITY["RESIDENT_ID"]))
    # An ID glued to other digits (OCR output, "I21.9" + ID) hides inside a longer run: any
    # checksum-valid window with a plausible birth date counts.
    for m in _RE_DIGIT_RUN.finditer(text):
        run = m.group(0)
        for i in range(len(run) - 17):
            cand = run[i : i + 18].upper()
            born = cand[6:14]
            if is_valid_resident_id(cand) and _safe_date(
                int(born[:4]), int(born[4:6]), int(born[6:])
            ):
                s = m.start() + i
                hits.append(Hit("RESIDENT_ID", s, s + 18, cand, PRIORITY["RESIDENT_ID"]))
    for m in _RE_RESIDENT_15.finditer(text):
        hits.append(Hit("RESIDENT_ID", m.start(), m.end(), m.group(0), PRIORITY["RESIDENT_ID"] - 1))
    for rx in _RE_PHONE:
        for m in rx.finditer(text):
            key = re.sub(r"\D", "", m.group(0))
            hits.append(Hit("PHONE", m.start(), m.end(), key[-11:], PRIORITY["PHONE"]))
    for m in _RE_PHONE_CUE.finditer(text):
        key = re.sub(r"\D", "", m.group(1))
        if len(key) >= 7:
            hits.append(Hit("PHONE", m.start(1), m.end(1), key[-11:], PRIORITY["PHONE"]))
    for m in _RE_IPV4.finditer(text):
        hits.append(Hit("IP", m.start(), m.end(), m.group(0).lower(), PRIORITY["IP"]))
    for m in _RE_MEDICAL_ID.finditer(text):
        hits.append(
            Hit("MEDICAL_ID", m.start(1), m.end(1), m.group(1).upper(), PRIORITY["MEDICAL_ID"])
        )
    for rx in _RE_BED:
        for m in rx.finditer(text):
            hits.append(Hit("BED", m.start(1), m.end(1), m.group(1).upper(), PRIORITY["BED"]))
    for m in _RE_LONG_NUMBER.finditer(text):
        hits.append(Hit("ID_NUMBER", m.start(), m.end(), m.group(0), PRIORITY["ID_NUMBER"]))
    hits.extend(_date_hits(text))
    hits.extend(_age_hits(text, age_threshold))


def resolve(hits: list[Hit]) -> list[Hit]:
    """Non-overlapping hits: higher priority first, then longer, then earlier.

    A lower-priority hit that overlaps chosen ones is not dropped: its uncovered fragments are
    kept as hits of its own type, so nothing detected is ever left in the output.
    """
    chosen: list[Hit] = []
    taken: list[tuple[int, int]] = []
    for h in sorted(hits, key=lambda h: (-h.priority, -(h.end - h.start), h.start)):
        if h.end <= h.start:
            continue
        pieces = [(h.start, h.end)]
        for s, e in taken:
            nxt: list[tuple[int, int]] = []
            for a, b in pieces:
                if b <= s or e <= a:
                    nxt.append((a, b))
                    continue
                if a < s:
                    nxt.append((a, s))
                if e < b:
                    nxt.append((e, b))
            pieces = nxt
        for a, b in pieces:
            if (a, b) == (h.start, h.end):
                chosen.append(h)
            elif b - a >= 2:
                chosen.append(Hit(h.type, a, b, f"{h.key}#{a - h.start}", h.priority))
            else:
                continue
            taken.append((a, b))
    return sorted(chosen, key=lambda h: h.start)
