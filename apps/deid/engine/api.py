"""One entry point per file for batch runners: detect the kind, de-identify, never raise."""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Any

from .errors import DeidError
from .keys import ProjectKey
from .profile import DeidProfile
from .result import ERROR, OK, QUARANTINED, FileResult, sha256
from .text.engine import PatientContext, TextDeidentifier
from .text.rules import own_record_numbers
from .vault import PseudonymVault

KINDS = ("dicom", "text", "edf", "wfdb_header", "wfdb_signal", "wfdb_annotation", "unknown")


def detect_kind(data: bytes, name: str = "") -> str:
    """Classify a file by content (the name is only a tie-breaker for WFDB signal files)."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    if _looks_like_headerless_dicom(data):
        return "dicom"
    lower = name.lower()
    if data[:8] == b"0       " or lower.endswith((".edf", ".bdf", ".rec")):
        return "edf"
    if lower.endswith(".hea") or _looks_like_wfdb_header(data):
        return "wfdb_header"
    if lower.endswith(".dat"):
        return "wfdb_signal"
    if lower.endswith((".atr", ".qrs", ".ann", ".ecg", ".wabp")):
        return "wfdb_annotation"
    if _decode_text(data) is not None:
        return "text"
    return "unknown"


def _looks_like_headerless_dicom(data: bytes) -> bool:
    """A raw data set (no preamble) starts with a low even group element, either endianness."""
    if len(data) < 12:
        return False
    for order in ("little", "big"):
        group = int.from_bytes(data[0:2], order)  # type: ignore[arg-type]
        elem = int.from_bytes(data[2:4], order)  # type: ignore[arg-type]
        if group in (0x0002, 0x0008) and elem <= 0x0100:
            return True
    return False


def _looks_like_wfdb_header(data: bytes) -> bool:
    try:
        first = data[:200].decode("ascii").splitlines()[0].split()
    except (UnicodeDecodeError, IndexError):
        return False
    return len(first) >= 2 and first[1].isdigit() and not first[0].startswith("#")


def _decode_text(data: bytes) -> str | None:
    if b"\x00" in data[:4096]:
        return None
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    for enc in ("utf-8", "gb18030"):
        try:
            return data.decode(enc)
        except UnicodeDecodeError:
            continue
    return None


class DeidEngine:
    """Project-scoped de-identifier: one key, one profile, optional vault and OCR.

    ``ocr`` is ``"auto"`` (RapidOCR, loaded on first need), an object with the
    :class:`apps.deid.engine.pixels.OcrEngine` protocol, or ``None`` (no OCR: files whose
    pixels need it are quarantined when the profile requires OCR).
    """

    def __init__(
        self,
        key: ProjectKey,
        profile: DeidProfile | None = None,
        *,
        vault: PseudonymVault | None = None,
        ocr: Any = "auto",
    ) -> None:
        self.key = key
        self.profile = profile or DeidProfile()
        self.vault = vault
        self._ocr = ocr
        self._pixel_cleaner: Any = None
        self.text = TextDeidentifier(
            key, self.profile.text, vault=vault if self.profile.text.reversible else None
        )

    @property
    def pixel_cleaner(self) -> Any:
        """The lazily-built pixel cleaner (None when OCR is switched off)."""
        if self._pixel_cleaner is None and self._ocr is not None and self.profile.ocr.enabled:
            from .pixels import PixelCleaner, RapidOcrEngine

            ocr = RapidOcrEngine() if self._ocr == "auto" else self._ocr
            self._pixel_cleaner = PixelCleaner(ocr, self.profile.ocr)
        return self._pixel_cleaner

    # ------------------------------------------------------------------------------------
    def process(
        self, data: bytes, *, name: str = "", context: PatientContext | None = None
    ) -> FileResult:
        """De-identify one file's bytes. Never raises: bad input is quarantined, bugs are
        reported as ``error`` with the exception class name only."""
        kind = detect_kind(data, name)
        try:
            if kind == "dicom":
                from .dicom import deidentify_dicom

                res = deidentify_dicom(
                    data,
                    key=self.key,
                    profile=self.profile,
                    vault=self.vault,
                    pixel_cleaner=self.pixel_cleaner,
                )
            elif kind == "text":
                res = self._text(data, context)
            elif kind == "edf":
                from .waveform import deidentify_edf

                res = deidentify_edf(data, key=self.key, profile=self.profile, vault=self.vault)
            elif kind == "wfdb_header":
                from .waveform import deidentify_wfdb_header

                res = deidentify_wfdb_header(
                    data, key=self.key, profile=self.profile, context=context
                )
            elif kind == "wfdb_signal":
                from .waveform import passthrough_wfdb_signal

                res = passthrough_wfdb_signal(data, profile=self.profile)
            elif kind == "wfdb_annotation":
                from .waveform import deidentify_wfdb_annotations

                res = FileResult(kind=kind, input_sha256=sha256(data))
                res.output = deidentify_wfdb_annotations(data, key=self.key, context=context)
                res.actions["wfdb_annotation_cleaned"] += 1
            elif b"\x00" in data[:4096]:
                # Binary and unrecognised: a data set with an unusual first element still
                # parses as DICOM; anything else is quarantined as unknown.
                from .dicom import deidentify_dicom

                res = deidentify_dicom(
                    data,
                    key=self.key,
                    profile=self.profile,
                    vault=self.vault,
                    pixel_cleaner=self.pixel_cleaner,
                )
                if res.status != OK:
                    res = FileResult(
                        kind="unknown",
                        status=QUARANTINED,
                        reason="unknown_kind: binary content is not DICOM, EDF or WFDB",
                    )
            else:
                res = FileResult(
                    kind="unknown",
                    status=QUARANTINED,
                    reason="unknown_kind: content is not DICOM, text, EDF or WFDB",
                    input_sha256=sha256(data),
                    profile=self.profile.fingerprint(),
                )
        except DeidError as exc:
            res = FileResult(kind=kind, status=QUARANTINED, reason=str(exc))
        except Exception as exc:  # a bug must not lose the file or leak a value
            res = FileResult(
                kind=kind, status=ERROR, reason=f"internal_error: {type(exc).__name__}"
            )
        res.input_sha256 = res.input_sha256 or sha256(data)
        res.profile = res.profile or self.profile.fingerprint()
        if res.status != OK:
            res.output = None
            res.extra_outputs = {}
        return res

    def pseudonymize_path(self, rel_path: str, *, context: PatientContext | None = None) -> str:
        """The output path for ``rel_path``: components that carry an identifier (long digit
        runs, CJK text, the patient's known identifiers) become keyed pseudonyms, the rest and
        the extensions stay, so companion files (``.hea``/``.dat``) keep matching names."""
        from .waveform import pseudonymize_name

        known = (*context.identifiers, *context.names) if context else ()
        parts = Path(rel_path).parts
        return str(Path(*[pseudonymize_name(p, self.key, known) for p in parts])) if parts else ""

    def process_path(
        self, path: str | Path, *, context: PatientContext | None = None
    ) -> FileResult:
        """Read ``path`` and :meth:`process` it; an unreadable file is quarantined."""
        p = Path(path)
        try:
            data = p.read_bytes()
        except OSError as exc:
            return FileResult(
                kind="unknown", status=ERROR, reason=f"unreadable: {type(exc).__name__}"
            )
        return self.process(data, name=p.name, context=context)

    def _text(self, data: bytes, context: PatientContext | None) -> FileResult:
        text = _decode_text(data)
        if text is None:
            return FileResult(kind="text", status=QUARANTINED, reason="undecodable_text")
        if context is None or not context.patient_key:
            # No study links this note to a patient: a note that labels exactly one record
            # number as the patient's own (under the site's Patient ID label, when the profile
            # names one) is that patient's: same pseudonym and date shift as their DICOM files,
            # so lineage and consent withdrawal reach it.
            own = own_record_numbers(text, self.profile.text.patient_id_labels)
            if len(own) == 1:
                context = PatientContext.build(self.key, patient_id=own[0], identifiers=own)
                if self.vault is not None:
                    self.vault.record("patient_id", self.key.pseudonym(own[0]), own[0])
        res = self.text.deidentify(text, context)
        out = FileResult(kind="text", input_sha256=sha256(data), profile=self.profile.fingerprint())
        out.output = res.text.encode("utf-8")
        out.spans = res.findings
        out.findings.update(res.counts)
        out.actions["text_spans_replaced"] = len(res.findings)
        if context is not None and context.patient_key:
            out.patient_pseudonym = self.key.pseudonym(context.patient_key)
        return out
