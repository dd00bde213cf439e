"""Waveforms: EDF/EDF+ headers and annotations, WFDB headers, comments and annotation text.

Signal samples are copied byte for byte; only header text and annotation text change (unless
the optional low-bit scrub for devices that hide IDs in sample LSBs is asked for).
"""

from __future__ import annotations

import re
from datetime import date, timedelta

import numpy as np

from .errors import CorruptInputError
from .keys import ProjectKey
from .profile import DeidProfile
from .result import OK, FileResult, sha256
from .text.engine import PatientContext, TextDeidentifier
from .vault import PseudonymVault

_MON = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
ANON_EDF_DATE = "01.01.85"  # the EDF+ convention for an anonymised start date
_ANNOTATION_LABELS = ("EDF Annotations", "BDF Annotations")


# EDF+ local patient identification: code, sex, birthdate (dd-MMM-yyyy) or X, name (any case).
_EDFPLUS_PATIENT = re.compile(r"\S+ [MFXmfx] (?:\d{2}-[A-Za-z]{3}-\d{4}|X) \S+(?: .*)?\Z")


def _field(raw: bytes, start: int, length: int) -> str:
    return raw[start : start + length].decode("latin-1").strip()


def _pad(text: str, length: int) -> bytes:
    b = text.encode("ascii", "replace")[:length]
    return b + b" " * (length - len(b))


def _shift_edf_date(value: str, shift: int | None) -> str:
    m = re.fullmatch(r"(\d{2})\.(\d{2})\.(\d{2})", value)
    if shift is None or not m:
        return ANON_EDF_DATE
    yy = int(m.group(3))
    year = 2000 + yy if yy < 85 else 1900 + yy  # EDF's 1985-2084 window
    try:
        d = date(year, int(m.group(2)), int(m.group(1))) + timedelta(days=shift)
    except ValueError:
        return ANON_EDF_DATE
    if not 1985 <= d.year <= 2084:
        return ANON_EDF_DATE
    return d.strftime("%d.%m.%y")


def _shift_edfplus_date(value: str, shift: int | None) -> str:
    m = re.fullmatch(r"(\d{2})-([A-Za-z]{3})-(\d{4})", value)
    if shift is None or not m or m.group(2).upper() not in _MON:
        return "X"
    try:
        d = date(int(m.group(3)), _MON.index(m.group(2).upper()) + 1, int(m.group(1)))
    except ValueError:
        return "X"
    d = d + timedelta(days=shift)
    return f"{d.day:02d}-{_MON[d.month - 1]}-{d.year:04d}"


def deidentify_edf(
    data: bytes,
    *,
    key: ProjectKey,
    profile: DeidProfile | None = None,
    vault: PseudonymVault | None = None,
    scrub_low_bits: int = 0,
) -> FileResult:
    """De-identify an EDF or EDF+ file. Raises CorruptInputError for malformed headers."""
    profile = profile or DeidProfile()
    res = FileResult(kind="edf", input_sha256=sha256(data), profile=profile.fingerprint())
    if len(data) < 256:
        raise CorruptInputError("shorter than the EDF header", reason="edf_truncated")
    try:
        header_bytes = int(_field(data, 184, 8))
        ns = int(_field(data, 252, 4))
        nrec = int(_field(data, 236, 8))
    except ValueError:
        raise CorruptInputError("non-numeric header field", reason="edf_bad_header") from None
    if ns <= 0 or ns > 4096 or header_bytes != 256 * (ns + 1) or len(data) < header_bytes:
        raise CorruptInputError(
            f"{ns} signals, header {header_bytes} bytes", reason="edf_bad_header"
        )
    base = 256
    labels = [_field(data, base + i * 16, 16) for i in range(ns)]
    off = base + ns * (16 + 80 + 8 * 5 + 80)
    try:
        nsamp = [int(_field(data, off + i * 8, 8)) for i in range(ns)]
    except ValueError:
        raise CorruptInputError("non-numeric samples per record", reason="edf_bad_header") from None
    # BDF (BioSemi) stores 24-bit samples and marks itself with 0xFF "BIOSEMI".
    width = 3 if data[:1] == b"\xff" else 2
    rec_bytes = width * sum(nsamp)
    body = len(data) - header_bytes
    if rec_bytes <= 0 or (nrec >= 0 and body != nrec * rec_bytes) or body % rec_bytes:
        raise CorruptInputError(
            f"data is {body} bytes, header implies {max(nrec, 0) * rec_bytes}",
            reason="edf_truncated",
        )
    nrec = body // rec_bytes
    out = bytearray(data)
    reserved = _field(data, 192, 44)
    plus = reserved.startswith("EDF+")

    # -- patient and recording identification ---------------------------------------------
    patient = _field(data, 8, 80)
    recording = _field(data, 88, 80)
    pparts = patient.split(" ")
    # Many plain EDF writers follow EDF+'s "code sex birthdate name" in this free-text field;
    # where it reads that way, its code is the patient ID (the one DICOM files are keyed on,
    # so every modality of a patient gets one pseudonym) and its name is a name to remove.
    fields = plus or bool(_EDFPLUS_PATIENT.match(patient))
    code = pparts[0] if fields and pparts else patient
    names = [pparts[3].replace("_", " ")] if fields and len(pparts) > 3 and pparts[3] != "X" else []
    ctx = PatientContext.build(key, patient_id=code or patient, names=names, identifiers=[code])
    shift = ctx.date_shift_days if profile.retain_long_modified_dates else None
    pseudonym = key.pseudonym(code or patient or "unknown")
    if vault is not None and code and code != "X":
        vault.record("patient_id", pseudonym, code)
    if plus:
        sex = pparts[1] if len(pparts) > 1 and profile.retain_patient_characteristics else "X"
        new_patient = f"{pseudonym} {sex if sex in ('M', 'F') else 'X'} X X"
        rparts = recording.split(" ")
        start = _shift_edfplus_date(rparts[1], shift) if len(rparts) > 1 else "X"
        equipment = rparts[4] if len(rparts) > 4 and profile.retain_device_identity else "X"
        new_recording = f"Startdate {start} X X {equipment}"
    else:
        new_patient = pseudonym
        new_recording = "X"
    res.findings["EDF_PATIENT_FIELD"] += int(bool(patient))
    res.findings["EDF_RECORDING_FIELD"] += int(bool(recording))
    out[8:88] = _pad(new_patient, 80)
    out[88:168] = _pad(new_recording, 80)
    out[168:176] = _pad(_shift_edf_date(_field(data, 168, 8), shift), 8)
    res.actions["edf_header_rewritten"] += 1

    # -- annotation signals ----------------------------------------------------------------
    text = TextDeidentifier(key, profile.text)
    ann_text = []
    for r in range(nrec):
        rstart = header_bytes + r * rec_bytes
        for i in [j for j, lab in enumerate(labels) if lab in _ANNOTATION_LABELS]:
            a = rstart + width * sum(nsamp[:i])
            ann_text.append(data[a : a + width * nsamp[i]].decode("utf-8", "replace"))
    ctx = text.learn("\n".join(ann_text).replace("\x14", " ").replace("\x00", " "), ctx)
    offsets = np.cumsum([0] + [width * n for n in nsamp])
    ann = [i for i, lab in enumerate(labels) if lab in _ANNOTATION_LABELS]
    for r in range(nrec):
        rstart = header_bytes + r * rec_bytes
        for i in ann:
            a, b = rstart + int(offsets[i]), rstart + int(offsets[i + 1])
            out[a:b] = _clean_tals(bytes(data[a:b]), text, ctx, res)
        if scrub_low_bits and width == 2:
            mask = np.int16(~((1 << scrub_low_bits) - 1))
            for i in range(ns):
                if i in ann:
                    continue
                a, b = rstart + int(offsets[i]), rstart + int(offsets[i + 1])
                s = np.frombuffer(bytes(out[a:b]), dtype="<i2") & mask
                out[a:b] = s.astype("<i2").tobytes()
    if scrub_low_bits and width == 2:
        res.actions["edf_low_bits_scrubbed"] += 1
    res.output = bytes(out)
    res.patient_pseudonym = pseudonym
    res.status = OK
    return res


def _clean_tals(
    block: bytes, text: TextDeidentifier, ctx: PatientContext, res: FileResult
) -> bytes:
    """Rewrite the TALs of one annotation block with cleaned texts, same block size."""
    size = len(block)
    tals = block.rstrip(b"\x00").split(b"\x00")
    rebuilt: list[bytes] = []
    for tal in tals:
        if not tal:
            continue
        parts = tal.split(b"\x14")
        head, texts = parts[0], parts[1:]
        new_texts = []
        for t in texts:
            s = t.decode("utf-8", "replace")
            if s:
                r = text.deidentify(s, ctx)
                for f in r.findings:
                    res.findings[f.type] += 1
                s = r.text
            new_texts.append(s.encode("utf-8"))
        rebuilt.append(b"\x14".join([head, *new_texts]))
    blob = b"".join(t + b"\x00" for t in rebuilt)
    if len(blob) > size:
        # Masks are longer than the names they replace; when the block is full, keep the
        # timing (onset/duration) and drop the annotation texts rather than the record layout.
        res.actions["edf_annotation_text_dropped"] += 1
        blob = b"".join(t.split(b"\x14")[0] + b"\x14\x14\x00" for t in rebuilt)
        blob = blob[:size]
    return blob + b"\x00" * (size - len(blob))


# ------------------------------------------------------------------------------------------
_ID_LIKE = re.compile(r"\d{5,}|[\u4e00-\u9fff]")


def pseudonymize_name(name: str, key: ProjectKey, known: tuple[str, ...] = ()) -> str:
    """A file or record name with identifier-bearing stems replaced by a keyed pseudonym
    (extension kept); names without identifiers are returned unchanged."""
    stem, dot, ext = name.partition(".")
    lowered = stem.lower()
    if _ID_LIKE.search(stem) or any(k and k.lower() in lowered for k in known):
        return key.pseudonym(stem, kind="filename", prefix="R") + dot + ext
    return name


def deidentify_wfdb_header(
    data: bytes,
    *,
    key: ProjectKey,
    profile: DeidProfile | None = None,
    context: PatientContext | None = None,
) -> FileResult:
    """De-identify a WFDB ``.hea``: comments through the text engine, base date shifted,
    record and signal file names pseudonymised when they carry identifiers."""
    profile = profile or DeidProfile()
    res = FileResult(kind="wfdb_header", input_sha256=sha256(data), profile=profile.fingerprint())
    try:
        lines = data.decode("ascii").splitlines()
    except UnicodeDecodeError:
        try:
            lines = data.decode("utf-8").splitlines()
        except UnicodeDecodeError:
            raise CorruptInputError("header is not text", reason="wfdb_bad_header") from None
    body = [ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not body:
        raise CorruptInputError("no record line", reason="wfdb_bad_header")
    rec = body[0].split()
    if len(rec) < 2 or not rec[1].isdigit():
        raise CorruptInputError("bad record line", reason="wfdb_bad_header")
    record = rec[0].split("/")[0]
    ctx = context or PatientContext.build(key, patient_id=record, identifiers=[record])
    shift = ctx.date_shift_days if profile.retain_long_modified_dates else None
    text = TextDeidentifier(key, profile.text)
    # Names and IDs found by context in one comment ("Patient: Zhang Wei") are removed from
    # every other line too (a signal description "lead I of Zhang Wei" has no cue of its own).
    free = [ln.lstrip()[1:] for ln in lines if ln.lstrip().startswith("#")]
    free += [" ".join(ln.split()[8:]) for ln in body[1:] if len(ln.split()) > 8]
    ctx = text.learn("\n".join(free), ctx)
    known = tuple(ctx.identifiers) + tuple(ctx.names)
    new_record = pseudonymize_name(record, key, known)
    out: list[str] = []
    seen_record = False
    for ln in lines:
        if ln.lstrip().startswith("#"):
            r = text.deidentify(ln.lstrip()[1:], ctx)
            for f in r.findings:
                res.findings[f.type] += 1
            out.append("#" + r.text)
            continue
        if not ln.strip():
            out.append(ln)
            continue
        parts = ln.split()
        if not seen_record:
            seen_record = True
            name_parts = parts[0].split("/")
            name_parts[0] = new_record
            parts[0] = "/".join(name_parts)
            if len(parts) >= 6:
                m = re.fullmatch(r"(\d{1,2})/(\d{1,2})/(\d{4})", parts[5])
                new_date = ""
                if m and shift is not None:
                    try:
                        d = date(int(m.group(3)), int(m.group(2)), int(m.group(1)))
                        d = d + timedelta(days=shift)
                        new_date = f"{d.day:02d}/{d.month:02d}/{d.year:04d}"
                    except ValueError:
                        new_date = ""
                if new_date:
                    parts[5] = new_date
                else:
                    del parts[5:]
                res.findings["DATE"] += 1
            out.append(" ".join(parts))
            continue
        # Signal line: file name first, description (free text) after the 8th field.
        parts[0] = pseudonymize_name(parts[0], key, known)
        if len(parts) > 8:
            desc = " ".join(parts[8:])
            r = text.deidentify(desc, ctx)
            for f in r.findings:
                res.findings[f.type] += 1
            parts = [*parts[:8], r.text]
        out.append(" ".join(parts))
    res.output = ("\n".join(out) + "\n").encode("utf-8")
    res.output_name = new_record + ".hea"
    res.patient_pseudonym = key.pseudonym(ctx.patient_key or record)
    res.actions["wfdb_header_rewritten"] += 1
    return res


def deidentify_wfdb_annotations(
    data: bytes, *, key: ProjectKey, context: PatientContext | None = None
) -> bytes:
    """Blank free-text AUX strings in a WFDB annotation file that contain identifiers
    (same length, so the file layout is unchanged)."""
    text = TextDeidentifier(key)
    out = bytearray(data)
    i = 0
    while i + 1 < len(out):
        word = out[i] | (out[i + 1] << 8)
        a, n = word >> 10, word & 0x3FF
        i += 2
        if a == 0 and n == 0:
            break
        if a == 59:  # SKIP: a 4-byte interval follows
            i += 4
        elif a == 63:  # AUX: n bytes of text, padded to an even length
            raw = bytes(out[i : i + n])
            if text.deidentify(raw.decode("latin-1"), context).findings:
                out[i : i + n] = b"X" * len(raw)
            i += n + (n & 1)
    return bytes(out)


def passthrough_wfdb_signal(data: bytes, *, profile: DeidProfile | None = None) -> FileResult:
    """WFDB signal files are samples only: copied unchanged (bit-identical)."""
    profile = profile or DeidProfile()
    res = FileResult(kind="wfdb_signal", input_sha256=sha256(data), profile=profile.fingerprint())
    res.output = data
    res.actions["wfdb_signal_copied"] += 1
    return res
