"""Pure de-identification library (no Django): DICOM headers and pixels, clinical text in
Chinese and English, EDF/EDF+ and WFDB waveforms.

Typical use by a batch runner::

    engine = DeidEngine(ProjectKey(secret), DeidProfile(), vault=PseudonymVault(vault_key))
    result = engine.process(data, name="IM0001")    # FileResult: status, reason, output ...
"""

from __future__ import annotations

from .api import DeidEngine, detect_kind
from .confidentiality import TABLE_SOURCE, load_table, resolve_action, rule_for
from .dicom import DicomDeidentifier, deidentify_dicom, read_dicom
from .errors import (
    CorruptInputError,
    DeidError,
    UnsafeOutputError,
    UnsupportedInputError,
    VaultError,
)
from .keys import ProjectKey
from .profile import DeidProfile, OcrSettings, SafePrivate, TextSettings
from .result import ERROR, OK, QUARANTINED, FileResult
from .text import Finding, PatientContext, TextDeidentifier, TextResult, deidentify_text
from .vault import PseudonymVault
from .version import ENGINE_VERSION

__all__ = [
    "ENGINE_VERSION",
    "ERROR",
    "OK",
    "QUARANTINED",
    "TABLE_SOURCE",
    "CorruptInputError",
    "DeidEngine",
    "DeidError",
    "DeidProfile",
    "DicomDeidentifier",
    "FileResult",
    "Finding",
    "OcrSettings",
    "PatientContext",
    "ProjectKey",
    "PseudonymVault",
    "SafePrivate",
    "TextDeidentifier",
    "TextResult",
    "TextSettings",
    "UnsafeOutputError",
    "UnsupportedInputError",
    "VaultError",
    "deidentify_dicom",
    "deidentify_text",
    "detect_kind",
    "load_table",
    "read_dicom",
    "resolve_action",
    "rule_for",
]
