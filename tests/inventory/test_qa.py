"""Data QA: each check fires on a crafted bad file and stays quiet on a good one; results are
stored per file, shown per source and batch, and a failing file can be excluded (audited)."""

from __future__ import annotations

import numpy as np
import pytest

from apps.audit.models import AuditEvent
from apps.inventory import qa, services
from apps.inventory.models import QACheckResult, RawFile
from tests.inventory.conftest import NOTE, NOTE_ZH, edf_bytes, good_wave, write_dicom, write_wfdb


def failing(outcomes):
    return {o.check: o for o in outcomes if o.result == qa.FAIL}


def checks(outcomes):
    return {o.check: o.result for o in outcomes}


# --- DICOM -------------------------------------------------------------------------------------


def test_a_good_dicom_passes_every_check(tmp_path):
    outcomes = qa.check_file(write_dicom(tmp_path / "a.dcm"), "dicom", "CT")
    assert checks(outcomes) == {
        "format_known": "pass",
        "dicom_readable": "pass",
        "pixel_stats": "pass",
    }


def test_a_dicom_cut_in_its_pixel_data_is_truncated(tmp_path):
    data = write_dicom(tmp_path / "a.dcm").read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[:-100])
    bad = failing(qa.check_file(tmp_path / "cut.dcm", "dicom", "CT"))
    assert bad["dicom_readable"].notes == "pixel data or header is truncated"
    assert bad["dicom_readable"].severity == "error"


def test_a_dicom_cut_in_its_header_is_unreadable(tmp_path):
    data = write_dicom(tmp_path / "a.dcm").read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[:200])
    assert "dicom_readable" in failing(qa.check_file(tmp_path / "cut.dcm", "dicom", "CT"))
    (tmp_path / "garbage.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 50)
    assert "dicom_readable" in failing(qa.check_file(tmp_path / "garbage.dcm", "dicom", ""))


def test_a_blank_ct_slice_fails_the_pixel_statistics(tmp_path):
    blank = write_dicom(tmp_path / "b.dcm", pixels=np.full((16, 16), -1024, np.int16))
    bad = failing(qa.check_file(blank, "dicom", "CT"))
    assert bad["pixel_stats"].notes.startswith("mean -1024, std 0 outside CT bounds")
    assert set(bad) == {"pixel_stats"}


def test_pixel_bounds_are_data_per_modality():
    limits = qa.thresholds()
    assert qa.pixel_bounds("CT") == limits["pixel_bounds"]["CT"]
    assert qa.pixel_bounds("XA") == limits["pixel_bounds"]["*"]


def test_series_gaps_name_the_missing_instances():
    assert qa.series_gaps([1, 2, 3, 4]) == []
    assert qa.series_gaps([1, 2, 5, 7]) == [3, 4, 6]
    assert qa.series_gaps([9]) == []
    outcome = qa.series_outcome([3, 4], 5)
    assert (outcome.result, outcome.notes) == (
        "fail",
        "2 instance(s) missing in the series: 3, 4",
    )


# --- text --------------------------------------------------------------------------------------


def test_notes_with_content_pass_in_either_encoding(tmp_path):
    (tmp_path / "en.txt").write_text(NOTE)
    (tmp_path / "zh.txt").write_bytes(NOTE_ZH.encode("gb18030"))
    assert failing(qa.check_file(tmp_path / "en.txt", "text", "")) == {}
    assert failing(qa.check_file(tmp_path / "zh.txt", "text", "")) == {}


def test_empty_and_near_empty_notes_fail(tmp_path):
    (tmp_path / "empty.txt").write_text(" \n\t\n")
    (tmp_path / "short.txt").write_text("N/A  ok")
    empty = failing(qa.check_file(tmp_path / "empty.txt", "text", ""))["text_not_empty"]
    short = failing(qa.check_file(tmp_path / "short.txt", "text", ""))["text_not_empty"]
    assert (empty.severity, empty.notes) == ("error", "the note is empty")
    assert (short.severity, short.notes) == (
        "warning",
        "near-empty: 5 visible characters (minimum 20)",
    )


# --- waveforms ---------------------------------------------------------------------------------


def edf(tmp_path, name, signals, **kwargs):
    path = tmp_path / name
    path.write_bytes(edf_bytes(signals, **kwargs))
    return path


def test_a_good_edf_passes_every_waveform_check(tmp_path):
    path = edf(tmp_path, "ok.edf", [good_wave(1000), good_wave(1000, 1)])
    outcomes = qa.check_file(path, "edf", "EEG")
    assert failing(outcomes) == {}
    assert set(checks(outcomes)) == {
        "format_known",
        "waveform_readable",
        "waveform_flatline",
        "waveform_nan",
        "waveform_clipping",
    }


def test_a_flat_channel_is_a_flat_line(tmp_path):
    path = edf(tmp_path, "flat.edf", [good_wave(1000), np.full(1000, 7, np.int16)])
    bad = failing(qa.check_file(path, "edf", "EEG"))
    assert set(bad) == {"waveform_flatline"}
    assert bad["waveform_flatline"].notes == "flat-line channels: 1"


def test_a_long_flat_stretch_inside_a_live_channel_is_a_flat_line(tmp_path):
    wave = good_wave(1000)
    wave[200:800] = 3  # six seconds at 100 Hz, over the five-second threshold
    assert "waveform_flatline" in failing(qa.check_file(edf(tmp_path, "s.edf", [wave]), "edf", ""))


def test_a_channel_pinned_at_the_rails_is_clipped(tmp_path):
    wave = np.clip(good_wave(1000).astype(np.int32) * 40, -32768, 32767).astype(np.int16)
    bad = failing(qa.check_file(edf(tmp_path, "clip.edf", [wave]), "edf", "EEG"))
    assert set(bad) == {"waveform_clipping"}
    assert bad["waveform_clipping"].notes.startswith("clipped channels: 0 (")


def test_a_degenerate_calibration_yields_nans(tmp_path):
    path = edf(tmp_path, "nan.edf", [good_wave(1000)], phys=("nan", "3200"))
    bad = failing(qa.check_file(path, "edf", "EEG"))
    assert set(bad) == {"waveform_nan"}
    assert bad["waveform_nan"].notes == "NaN/invalid samples in channels: 0 (1000)"


def test_a_truncated_edf_is_unreadable(tmp_path):
    data = edf_bytes([good_wave(1000)])
    (tmp_path / "cut.edf").write_bytes(data[:-50])
    bad = failing(qa.check_file(tmp_path / "cut.edf", "edf", "EEG"))
    assert bad["waveform_readable"].notes == "EDF is truncated: 9 of 10 data records present"


def test_a_good_wfdb_record_passes(tmp_path):
    header = write_wfdb(tmp_path, "rec", [good_wave(2500), good_wave(2500, 2)])
    assert failing(qa.check_file(header, "wfdb", "ECG")) == {}
    # The signal file is checked through its header, not on its own.
    assert checks(qa.check_file(tmp_path / "rec.dat", "wfdb", "ECG")) == {"format_known": "pass"}


def test_wfdb_invalid_samples_count_as_nans(tmp_path):
    wave = good_wave(2500)
    wave[100:110] = -32768  # WFDB's "no sample" marker in format 16
    header = write_wfdb(tmp_path, "rec", [wave])
    bad = failing(qa.check_file(header, "wfdb", "ECG"))
    assert bad["waveform_nan"].notes == "NaN/invalid samples in channels: 0 (10)"


def test_a_wfdb_header_naming_a_file_outside_its_folder_is_not_a_header(tmp_path):
    from apps.inventory import waveforms

    assert waveforms.parse_wfdb_header("rec 1 250\n../../etc/passwd 16 200 16 0\n") is None
    assert waveforms.parse_wfdb_header("rec 1 250\nrec.dat 16 200 16 0\n") is not None


def test_unknown_and_unreadable_content_fail_format_known(tmp_path):
    assert failing(qa.check_file(tmp_path, "other", ""))["format_known"].severity == "warning"
    assert failing(qa.check_file(tmp_path, "unreadable", ""))["format_known"].severity == "error"


# --- stored results, per source and batch, and exclusion ----------------------------------------


@pytest.fixture
def scanned(source, mixed_tree):
    """The mixed tree plus a gap in the CT series and an empty note, scanned."""
    (mixed_tree / "ct" / "slice2.dcm").unlink()
    (mixed_tree / "notes" / "empty.txt").write_text("")
    batch = services.start_scan(source, acting_user=None, enqueue=False)
    return services.scan_source(batch.pk)


def results(batch, check):
    return dict(
        QACheckResult.objects.filter(raw_file__batch=batch, check_type=check).values_list(
            "raw_file__relpath", "result"
        )
    )


@pytest.mark.django_db
def test_a_scan_stores_one_result_per_file_and_check(scanned):
    assert results(scanned, "series_complete") == {"ct/slice1.dcm": "fail", "ct/slice3.dcm": "fail"}
    assert results(scanned, "text_not_empty") == {
        "notes/empty.txt": "fail",
        "notes/report.txt": "pass",
        "notes/报告.txt": "pass",
    }
    assert results(scanned, "format_known")["junk.bin"] == "fail"
    assert results(scanned, "waveform_flatline") == {
        "ecg/rec1.hea": "pass",
        "eeg/night.edf": "pass",
    }
    notes = QACheckResult.objects.get(
        check_type="series_complete", raw_file__relpath="ct/slice1.dcm"
    )
    assert notes.notes == "1 instance(s) missing in the series: 2"


@pytest.mark.django_db
def test_filling_the_gap_in_a_later_batch_clears_the_series(scanned, source, mixed_tree):
    write_dicom(mixed_tree / "ct" / "slice2.dcm", instance=2)
    batch = services.start_scan(source, acting_user=None, enqueue=False)
    services.scan_source(batch.pk)
    verdicts = QACheckResult.objects.filter(check_type="series_complete").values_list(
        "result", flat=True
    )
    assert sorted(verdicts) == ["pass", "pass", "pass"]


@pytest.mark.django_db
def test_rerunning_qa_replaces_results_instead_of_adding(scanned):
    before = QACheckResult.objects.count()
    services.run_qa(scanned.pk)
    assert QACheckResult.objects.count() == before


@pytest.mark.django_db
def test_a_failing_file_is_excluded_with_a_reason_and_an_audit_event(scanned, cast):
    raw = RawFile.objects.get(batch=scanned, relpath="notes/empty.txt")
    steward = cast["data_steward"]
    assert services.exclude_file(raw, reason="empty note", acting_user=steward)
    raw.refresh_from_db()
    assert (raw.excluded, raw.excluded_reason) == (True, "empty note")
    event = AuditEvent.objects.get(action="inventory.file_excluded")
    assert (event.resource, event.user_id) == (f"inventory.rawfile:{raw.pk}", steward.pk)
    assert "empty note" not in event.details_json  # free text enters only as a hash
    assert not services.exclude_file(raw, reason="again", acting_user=steward)
    assert services.include_file(raw, acting_user=steward)
    raw.refresh_from_db()
    assert not raw.excluded and raw.excluded_reason == ""
    assert AuditEvent.objects.filter(action="inventory.file_included").count() == 1


@pytest.mark.django_db
def test_an_exclusion_needs_a_one_line_reason(scanned):
    from django.core.exceptions import ValidationError

    raw = RawFile.objects.filter(batch=scanned).first()
    for reason in ("", "   ", "two\nlines", "x" * 201):
        with pytest.raises(ValidationError):
            services.exclude_file(raw, reason=reason, acting_user=None)


@pytest.mark.django_db
def test_a_crashing_check_fails_its_file_and_the_batch_goes_on(source, monkeypatch):
    real = qa.check_file

    def explode_on_notes(path, kind, modality):
        if kind == "text":
            raise MemoryError
        return real(path, kind, modality)

    monkeypatch.setattr(qa, "check_file", explode_on_notes)
    batch = services.start_scan(source, acting_user=None, enqueue=False)
    batch = services.scan_source(batch.pk)
    assert batch.status == "done"
    crashed = QACheckResult.objects.get(raw_file__relpath="notes/report.txt")
    assert (crashed.result, crashed.notes) == ("fail", "checks crashed (MemoryError)")
    assert results(batch, "dicom_readable")["ct/slice1.dcm"] == "pass"
