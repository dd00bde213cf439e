"""Content sniffing for the scanner: what a file is, decided by its bytes, never its name.

Pure (no Django): the scanner and the QA checks call these with paths or bytes. Nothing here
returns raw identifiers; DICOM UIDs leave only as keyed hashes (:func:`keyed_hash`).
"""

from __future__ import annotations

import codecs
import hashlib
import hmac
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

# Kinds, as RawFile.Kind values (kept as strings so this module needs no Django).
DICOM, TEXT, EDF, WFDB, WSI, OTHER, UNREADABLE = (
    "dicom",
    "text",
    "edf",
    "wfdb",
    "wsi",
    "other",
    "unreadable",
)

HEAD_BYTES = 64 * 1024
HASH_CHUNK = 1024 * 1024
# A text file may hold a few control characters (form feeds, stray escapes) but not many.
MAX_CONTROL_RATIO = 0.01
_MODALITY_RE = re.compile(r"^[A-Z0-9]{1,16}$")
_EDF_NUMERIC = re.compile(rb"^\s*[0-9]+\s*$")


@dataclass(frozen=True)
class Detected:
    """What the scanner learned about one file. ``study_uid``/``series_uid`` never leave the
    scanner: it stores only their keyed hashes."""

    kind: str
    modality: str = ""
    study_uid: str = ""
    series_uid: str = ""
    instance_number: int | None = None
    encoding: str = ""


def sha256_file(path: Path | str, chunk: int = HASH_CHUNK) -> tuple[str, int]:
    """Streaming SHA-256 and size (the file may be gigabytes; never read it whole)."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def keyed_hash(key: bytes, label: str, value: str) -> str:
    """HMAC-SHA256 of an identifier, domain-separated by ``label`` ("study", "series")."""
    if not value:
        return ""
    msg = label.encode() + b"\x00" + value.encode("utf-8", "surrogatepass")
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def text_encoding(data: bytes, *, final: bool) -> str | None:
    """'utf-8' or 'gb18030' when ``data`` reads as text in it, else None.

    ``final=False`` lets a multi-byte character be cut at the end of a head sample.
    """
    if b"\x00" in data:
        return None
    for encoding in ("utf-8", "gb18030"):
        decoder = codecs.getincrementaldecoder(encoding)()
        try:
            text = decoder.decode(data, final=final)
        except UnicodeDecodeError:
            continue
        if _looks_like_text(text):
            return encoding
        return None
    return None


def _looks_like_text(text: str) -> bool:
    if not text:
        return True
    controls = sum(1 for ch in text if unicodedata.category(ch) == "Cc" and ch not in "\t\n\r\f\v")
    return controls / len(text) <= MAX_CONTROL_RATIO


def is_edf_header(head: bytes) -> bool:
    """EDF/EDF+ (and BDF is not accepted): version '0' padded to 8, numeric header counts."""
    if len(head) < 256 or head[:8] != b"0       ":
        return False
    header_bytes, n_signals = head[184:192], head[252:256]
    if not (_EDF_NUMERIC.match(header_bytes) and _EDF_NUMERIC.match(n_signals)):
        return False
    return int(header_bytes) == 256 * (int(n_signals) + 1)


def is_dicom(head: bytes) -> bool:
    return len(head) >= 132 and head[128:132] == b"DICM"


def is_tiff(head: bytes) -> bool:
    # Whole-slide images are (Big)TIFF pyramids: II*\0, MM\0*, and BigTIFF's 43.
    return head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def read_head(path: Path | str, size: int = HEAD_BYTES) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(size)


def dicom_header(path: Path | str) -> Detected:
    """Modality, UIDs and InstanceNumber from the header only; kind DICOM even when the header
    is damaged (the QA check ``dicom_readable`` reports that)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(
            path,
            stop_before_pixels=True,
            specific_tags=["Modality", "StudyInstanceUID", "SeriesInstanceUID", "InstanceNumber"],
        )
        modality = str(ds.get("Modality", "") or "").strip().upper()
        instance = ds.get("InstanceNumber", None)
        try:
            instance_number = int(instance) if instance not in (None, "") else None
        except (TypeError, ValueError):
            instance_number = None
        return Detected(
            kind=DICOM,
            modality=modality if _MODALITY_RE.match(modality) else "",
            study_uid=str(ds.get("StudyInstanceUID", "") or ""),
            series_uid=str(ds.get("SeriesInstanceUID", "") or ""),
            instance_number=instance_number,
        )
    except (
        InvalidDicomError,
        OSError,
        ValueError,
        TypeError,
        EOFError,
        AttributeError,
        KeyError,
        IndexError,
        OverflowError,
    ):
        return Detected(kind=DICOM)


def detect(path: Path | str, *, wfdb_files: frozenset[str] = frozenset()) -> Detected:
    """The kind of the file at ``path`` by content.

    ``wfdb_files`` holds the absolute paths of signal files that a WFDB header in the same
    tree names: a ``.dat`` file is raw samples with no magic of its own, so it is a WFDB file
    because a header says so.
    """
    from apps.inventory import waveforms

    try:
        head = read_head(path)
    except OSError:
        return Detected(kind=UNREADABLE)
    if is_dicom(head):
        return dicom_header(path)
    if is_edf_header(head):
        return Detected(kind=EDF, modality=waveforms.edf_modality(head))
    if is_tiff(head):
        return Detected(kind=WSI, modality="SM")
    if os.fspath(path) in wfdb_files:
        return Detected(kind=WFDB, modality="ECG")
    encoding = text_encoding(head, final=len(head) < HEAD_BYTES)
    if encoding is not None:
        header = waveforms.parse_wfdb_header(head.decode(encoding, "replace"))
        if header is not None:
            return Detected(kind=WFDB, modality=waveforms.wfdb_modality(header), encoding=encoding)
        return Detected(kind=TEXT, encoding=encoding)
    return Detected(kind=OTHER)
