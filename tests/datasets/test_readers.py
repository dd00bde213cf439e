"""The Django-free half of packing: grouping, waveform readers, the token estimate."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from apps.datasets import packing


def _file(tmp_path: Path, n: int, kind: str, relpath: str, data: bytes, **kw) -> packing.SourceFile:
    path = tmp_path / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    fields = dict(patient_pseudonym="", study_key="", modality="", profile="p")
    fields.update(kw)
    return packing.SourceFile(
        result_id=n,
        raw_file_id=n,
        raw_sha256=f"r{n}",
        run_id=1,
        kind=kind,
        path=path,
        relpath=relpath,
        output_sha256=f"o{n}",
        **fields,
    )


def test_files_group_by_study_else_by_patient_and_kind_else_alone(tmp_path):
    files = [
        _file(tmp_path, 1, "text", "a.txt", b"a", study_key="s1", patient_pseudonym="P1"),
        _file(tmp_path, 2, "text", "b.txt", b"b", study_key="s1", patient_pseudonym="P1"),
        _file(tmp_path, 3, "text", "c.txt", b"c", patient_pseudonym="P1"),
        _file(tmp_path, 4, "text", "d.txt", b"d", patient_pseudonym="P1"),
        _file(tmp_path, 5, "text", "e.txt", b"e"),
        _file(tmp_path, 6, "wfdb_annotation", "f.atr", b"f", patient_pseudonym="P1"),
    ]
    planned, skipped = packing.plan_samples(files)
    groups = sorted(sorted(f.result_id for f in p.files) for p in planned)
    assert groups == [[1, 2], [3, 4], [5]]
    assert skipped == {"not_packable_kind": 1}
    assert [p.key for p in planned] == sorted(p.key for p in planned)


def test_a_study_with_two_waveforms_gets_a_follow_on_sample(tmp_path, factories):
    rng = np.random.default_rng(1)
    hea1, dat1 = factories.wfdb_files("r1", rng.integers(-9, 9, size=(20, 1)).astype(np.int16))
    hea2, dat2 = factories.wfdb_files("r2", rng.integers(-9, 9, size=(30, 2)).astype(np.int16))
    files = [
        _file(tmp_path, 1, "wfdb_header", "x/r1.hea", hea1, study_key="s"),
        _file(tmp_path, 2, "wfdb_signal", "x/r1.dat", dat1),
        _file(tmp_path, 3, "wfdb_header", "x/r2.hea", hea2, study_key="s"),
        _file(tmp_path, 4, "wfdb_signal", "x/r2.dat", dat2),
    ]
    (planned,), skipped = packing.plan_samples(files)
    assert skipped == {}
    samples, _tokens = packing.build_sample(planned)
    assert [s.key for s in samples] == [planned.key, f"{planned.key}-w1"]
    assert samples[0].wave.shape == (1, 20) and samples[1].wave.shape == (2, 30)
    assert samples[1].meta["follows"] == planned.key
    assert packing.member_of(planned, files[3]) == (f"{planned.key}-w1", "wav")


def test_wfdb_format_212_decodes_packed_12_bit_pairs(tmp_path):
    # Samples 1 and -2 packed: byte0 = low 8 bits of s0, byte1 = high nibbles, byte2 = s1 low.
    s0, s1 = 1, (-2) & 0xFFF
    raw = bytes([s0 & 0xFF, ((s1 >> 8) << 4) | (s0 >> 8), s1 & 0xFF])
    (tmp_path / "r.dat").write_bytes(raw)
    (tmp_path / "r.hea").write_text(
        "r 2 100 1\nr.dat 212 100(0)/mV 12 0 0 0 0 a\nr.dat 212 100(0)/mV 12 0 0 0 0 b\n"
    )
    wave, meta = packing.read_wfdb(tmp_path / "r.hea")
    np.testing.assert_allclose(wave, [[0.01], [-0.02]])
    assert meta["channels"] == ["a", "b"] and meta["sampling_rate"] == 100


def test_edf_channels_at_another_rate_are_dropped_and_named(tmp_path, factories):
    data = factories.edf_bytes(
        {"A": np.arange(4, dtype=np.int16), "B": np.ones(4, np.int16)}, rate=4, seconds=1
    )
    (tmp_path / "x.edf").write_bytes(data)
    wave, meta = packing.read_edf(tmp_path / "x.edf")
    assert wave.shape == (2, 4) and meta["dropped_channels"] == []
    np.testing.assert_allclose(wave[0], np.arange(4) * 0.1, atol=1e-4)


def test_the_token_estimate_counts_words_and_chinese_characters():
    assert packing.estimate_tokens("") == 0
    assert packing.estimate_tokens("ten words " * 5) == 13  # 10 words x 1.3
    assert packing.estimate_tokens("右上叶结节") == 5
    assert packing.estimate_tokens("CT 右肺") == 3  # 1 word x 1.3 -> 1, plus 2 characters


def test_sample_keys_are_stable_and_pseudonymous():
    key = packing.sample_key("study:abc")
    assert key == packing.sample_key("study:abc") != packing.sample_key("study:abd")
    assert "abc" not in key and len(key) == 25


def test_the_transfer_syntax_is_read_from_the_file_meta_group(factories):
    data = factories.dicom_bytes(np.zeros((2, 2)), study="1", series="1", instance=1, z=0.0)
    assert packing.transfer_syntax(data[:1024]) == "1.2.840.10008.1.2.1"
    assert packing.transfer_syntax(b"DICM but not really") is None
    assert packing.transfer_syntax(data[:140]) is None  # cut short before the element
