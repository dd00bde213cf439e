"""Keys, the encrypted vault, versioned profiles and the no-Django rule."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from apps.deid.engine import DeidProfile, ProjectKey, PseudonymVault, SafePrivate, VaultError
from apps.deid.engine.profile import OcrSettings

ROOT = Path(__file__).resolve().parents[3]


def test_uids_are_valid_deterministic_and_project_scoped() -> None:
    a, b = ProjectKey(b"a" * 32), ProjectKey(b"b" * 32)
    u = a.uid("1.2.3.4")
    assert u == a.uid("1.2.3.4") != b.uid("1.2.3.4")
    assert u.startswith("2.25.") and len(u) <= 64 and u[5:].isdigit()
    assert a.uid("1.2.3.4\x00") == u  # padding does not change identity


def test_date_shift_is_negative_bounded_and_per_patient() -> None:
    k = ProjectKey(b"k" * 32, max_date_shift_days=30)
    shifts = {k.date_shift_days(f"P{i}") for i in range(200)}
    assert all(-30 <= s <= -1 for s in shifts) and len(shifts) > 10
    assert k.date_shift_days("P1") == k.date_shift_days(" P1 ")


def test_short_secrets_are_refused() -> None:
    with pytest.raises(ValueError):
        ProjectKey(b"short")


def test_vault_round_trips_and_detects_tampering() -> None:
    store: dict[str, bytes] = {}
    v = PseudonymVault(b"k" * 32, store)
    assert v.record("patient_id", "PABC", "ZY123")
    assert not v.record("patient_id", "PABC", "ZY123")
    assert v.reveal("patient_id", "PABC") == "ZY123"
    assert b"ZY123" not in b"".join(store.values())
    # A record moved onto another pseudonym fails authentication (bound as associated data).
    store["patient_id:PXYZ"] = store["patient_id:PABC"]
    with pytest.raises(VaultError) as exc:
        v.reveal("patient_id", "PXYZ")
    assert exc.value.reason == "vault_tampered"
    with pytest.raises(VaultError):
        PseudonymVault(b"k" * 32, store).reveal("patient_id", "PNONE")
    with pytest.raises(VaultError):
        PseudonymVault(b"x" * 32, store).reveal("patient_id", "PABC")
    with pytest.raises(VaultError):
        PseudonymVault(b"short")


def test_vault_export_and_load() -> None:
    v = PseudonymVault(b"k" * 32)
    v.record("patient_id", "P1", "原始ID")
    w = PseudonymVault(b"k" * 32)
    w.load(v.export())
    assert w.reveal("patient_id", "P1") == "原始ID" and ("patient_id", "P1") in w


def test_profiles_are_versioned_hashable_and_diffable() -> None:
    p1 = DeidProfile(safe_private=(SafePrivate("ACME", 0x0019, 0x10),))
    again = DeidProfile.from_dict(p1.to_dict())
    assert again == p1 and again.fingerprint() == p1.fingerprint()
    p2 = p1.evolve(clean_descriptors=False, ocr=OcrSettings(min_score=0.7))
    assert p2.version == 2 and p2.fingerprint() != p1.fingerprint()
    assert p1.diff(p2) == [
        "clean_descriptors: true -> false",
        "ocr.min_score: 0.5 -> 0.7",
        "version: 1 -> 2",
    ]
    with pytest.raises(ValueError):
        DeidProfile.from_dict({"nonsense": 1})
    with pytest.raises(ValueError):
        SafePrivate("ACME", 0x0018, 0x10)


def test_engine_never_imports_django() -> None:
    for path in (ROOT / "apps" / "deid" / "engine").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "import django" not in text and "from django" not in text, path
    code = (
        "import sys, apps.deid.engine, apps.deid.engine.pixels, apps.deid.engine.waveform;"
        "assert not any(m == 'django' or m.startswith('django.') for m in sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
