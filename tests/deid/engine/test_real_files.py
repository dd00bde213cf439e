"""Every DICOM file shipped with pydicom (many syntaxes, charsets, odd and broken files):
the engine returns ok or quarantined, never crashes, and leaks no patient name or ID."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import pydicom
import pydicom.data
import pytest

from apps.deid.engine import DeidEngine, DeidProfile, ProjectKey
from apps.deid.engine.profile import OcrSettings

DATA = Path(pydicom.data.__file__).parent
FILES = sorted(
    p
    for sub in ("test_files", "charset_files")
    for p in (DATA / sub).rglob("*")
    if p.is_file() and p.suffix.lower() in (".dcm", "") and p.name != "README"
)


def _identity(data: bytes) -> list[str]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
            values = [str(ds.get(k, "") or "") for k in ("PatientName", "PatientID")]
    except Exception:
        return []
    return [v for v in values if len(v.strip("^= ")) >= 4]


@pytest.mark.slow
def test_every_pydicom_sample_is_handled_without_leaks() -> None:
    assert len(FILES) > 100
    engine = DeidEngine(
        ProjectKey(b"real-files-secret-0123456789abcdef"),
        DeidProfile(ocr=OcrSettings(enabled=False)),
        ocr=None,
    )
    statuses: dict[str, int] = {}
    for path in FILES:
        data = path.read_bytes()
        res = engine.process(data, name=path.name)
        statuses[res.status] = statuses.get(res.status, 0) + 1
        assert res.status in ("ok", "quarantined"), (path.name, res.reason)
        if res.status != "ok" or res.kind != "dicom":
            continue
        out = pydicom.dcmread(io.BytesIO(res.output))
        assert out.PatientIdentityRemoved == "YES"
        text = "\n".join(str(e.value) for e in out.iterall() if e.VR in ("PN", "LO", "SH", "LT"))
        for value in _identity(data):
            assert value not in text, (path.name, "identity survived")
    assert statuses.get("ok", 0) > 80
