"""What the review screen is built from: waveform readers, mask segments, boxes, PNGs."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from apps.review import rendering
from tests.review import factories as f


def test_the_edf_reader_returns_physical_units_and_header_fields(tmp_path):
    path = tmp_path / "x.edf"
    path.write_bytes(f.edf_bytes(seconds=3, fs=100))
    data = rendering.read_edf(path)
    assert data["header"]["patient"] == "X X X X" and data["header"]["signals"] == "2"
    first = data["signals"][0]
    assert (first["label"], first["unit"], first["fs"]) == ("ECG I", "mV", 100.0)
    assert len(first["y"]) == 300
    # 3000 digital of a ±32767 → ±5 mV range is ~0.458 mV at the sine's peak.
    assert max(first["y"]) == pytest.approx(3000 * 10 / 65535, abs=0.01)


def test_a_truncated_edf_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.edf"
    path.write_bytes(f.edf_bytes()[:100])
    with pytest.raises(rendering.RenderError, match="truncated"):
        rendering.read_edf(path)


def test_the_npy_reader_plots_channels_by_samples(tmp_path):
    path = tmp_path / "wav.npy"
    path.write_bytes(f.npy_bytes(channels=3, samples=400))
    data = rendering.read_waveform(path, "npy")
    assert [s["label"] for s in data["signals"]] == ["ch0", "ch1", "ch2"]
    assert data["header"]["samples"] == "400"


def test_a_wfdb_header_is_listed_and_its_format_16_signal_plotted(tmp_path):
    (tmp_path / "rec.hea").write_text(
        "rec 2 250 500\nrec.dat 16 200 16 0 0 0 0 I\nrec.dat 16 200 16 0 0 0 0 II\n# age 60\n"
    )
    samples = (np.arange(1000, dtype="<i2") % 200).astype("<i2")
    (tmp_path / "rec.dat").write_bytes(samples.tobytes())
    data = rendering.read_waveform(tmp_path / "rec.hea", "wfdb_header")
    assert data["header"]["sampling_rate"] == "250.0" and data["header"]["comment_1"] == "# age 60"
    assert [s["label"] for s in data["signals"]] == ["I", "II"]


def test_text_segments_follow_the_spans_and_survive_overlaps():
    text, spans = f.note_with_spans()
    spans.append({"type": "name", "start": spans[0]["start"] + 1, "end": spans[0]["end"] + 2})
    segments = rendering.text_segments(text, spans)
    assert "".join(s["text"] for s in segments) == text
    typed = [(s["type"], s["text"]) for s in segments if s["type"]]
    assert typed[0] == ("name", "<NAME_1>")
    assert ("date", "<DATE_1>") in typed and ("phone", "<PHONE_1>") in typed


def test_boxes_are_read_only_when_the_run_stored_coordinates():
    with_boxes = SimpleNamespace(
        actions={"boxes": [[1, 2, 30, 9], [2, 0, 0, 5, 5], "junk"]}, findings={}
    )
    assert rendering.masked_boxes(with_boxes) == [
        {"frame": 0, "x0": 1, "y0": 2, "x1": 30, "y1": 9},
        {"frame": 2, "x0": 0, "y0": 0, "x1": 5, "y1": 5},
    ]
    counts_only = SimpleNamespace(actions={"pixel_boxes_masked": 3}, findings={"PIXEL_TEXT_BOX": 3})
    assert rendering.masked_boxes(counts_only) == []


def test_monochrome1_is_shown_inverted(tmp_path):
    import pydicom

    path = tmp_path / "m1.dcm"
    path.write_bytes(f.dicom_bytes())
    ds = pydicom.dcmread(path)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(path)
    image = rendering.load_image(path)
    png = Image.open(io.BytesIO(rendering.render_png(image, center=0, width=400)))
    assert png.load()[32, 32] == 255 - 153


def test_a_file_without_pixels_is_a_clear_error(tmp_path):
    path = tmp_path / "note.dcm"
    path.write_bytes(b"not dicom at all")
    with pytest.raises(rendering.RenderError, match="no displayable pixels"):
        rendering.load_image(path)
