"""The shard format, tokenizer, sampler, cache and batches."""

from __future__ import annotations

import hashlib
import json
import tarfile
import time

import numpy as np
import pytest
import webdataset as wds
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer.config import load_config
from trainer.data.batching import IGNORE_INDEX, Collator, normalise_image
from trainer.data.cache import ShardCache
from trainer.data.dicom import stored_values, to_int16_units
from trainer.data.sampler import ResumableSampler
from trainer.data.shards import DicomFile, Sample, ShardFormatError, ShardReader, ShardWriter
from trainer.data.tokenizer import (
    BOS_ID,
    EOS_ID,
    IMAGE_PATCH_ID,
    WAVE_PATCH_ID,
    Tokenizer,
    dataset_texts,
    reference_merges,
)


def sample(i: int, **kw) -> Sample:
    return Sample(key=f"k{i:04d}", text=f"note {i}", **kw)


def test_index_offsets_point_at_each_members_bytes(dataset) -> None:
    index = json.loads((dataset / "index" / "shard-000001.json").read_text())
    raw = (dataset / "shard-000001.tar").read_bytes()
    with tarfile.open(dataset / "shard-000001.tar") as tar:
        for key, members in index["samples"].items():
            for ext, (offset, length) in members.items():
                assert raw[offset : offset + length] == tar.extractfile(f"{key}.{ext}").read()


def test_manifest_has_sha256_per_shard_and_counts_per_modality(dataset) -> None:
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert manifest["format_version"] == 2
    assert manifest["samples"] == 64 and len(manifest["shards"]) == 4
    for shard in manifest["shards"]:
        assert hashlib.sha256((dataset / shard["name"]).read_bytes()).hexdigest() == shard["sha256"]
    # synthetic: text always, image for 3 in 4, waveform for 2 in 3
    assert manifest["modalities"] == {"text": 64, "image": 48, "waveform": 43}


def test_webdataset_reads_the_shards_as_they_are(dataset) -> None:
    reader = ShardReader(dataset)
    urls = [str(dataset / name) for name in reader.shard_names]
    pipeline = wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode()
    keys, texts = [], []
    for item in pipeline:
        keys.append(item["__key__"])
        texts.append(item["txt"])
        if "img.npy" in item:
            assert item["img.npy"].dtype == np.int16
    assert keys == reader.keys
    assert texts == [reader[i].text for i in range(len(reader))]


def test_reader_round_trips_every_member(tmp_path) -> None:
    img = np.arange(2 * 4 * 4, dtype=np.int16).reshape(2, 4, 4)
    colour = np.zeros((1, 4, 4, 3), dtype=np.uint8)
    wav = np.ones((3, 10), dtype=np.float32)
    with ShardWriter(tmp_path, samples_per_shard=2) as w:
        w.write(sample(0, images=[img, colour], wave=wav, meta={"patient": "P1"}))
        w.write(sample(1))
        w.write(Sample(key="k0002", text="中文报告 CT 胸部"))
    reader = ShardReader(tmp_path, verify=True)
    got = reader[0]
    assert got.meta["patient"] == "P1" and got.meta["modalities"] == ["text", "image", "waveform"]
    assert np.array_equal(got.images[0], img) and np.array_equal(got.images[1], colour)
    assert np.array_equal(got.wave, wav)
    assert reader[1].images == [] and reader[1].wave is None
    assert reader[2].text == "中文报告 CT 胸部"
    assert len(reader.shard_names) == 2


def test_writer_refuses_bad_keys_and_dtypes(tmp_path) -> None:
    with ShardWriter(tmp_path) as w:
        with pytest.raises(ShardFormatError, match=r"key 'a\.b'"):
            w.write(Sample(key="a.b", text="x"))
        with pytest.raises(ShardFormatError, match="image must be int16"):
            w.write(Sample(key="k", images=[np.zeros((1, 2, 2), dtype=np.float32)]))
        w.write(Sample(key="k", text="x"))
        with pytest.raises(ShardFormatError, match="written twice"):
            w.write(Sample(key="k", text="y"))


def test_reader_refuses_a_newer_format_version(tmp_path) -> None:
    with ShardWriter(tmp_path) as w:
        w.write(sample(0))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["format_version"] = 3
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardFormatError, match="format_version 3 is not readable"):
        ShardReader(tmp_path)


def _dicom(path, pixels, *, instance: int, intercept: float = -1024.0, series: str = "1.2.3"):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID, ds.Modality, ds.InstanceNumber = series, "CT", instance
    ds.ImagePositionPatient, ds.PixelSpacing, ds.SliceThickness = [0, 0, instance], [0.5, 0.5], 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, intercept
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return DicomFile(path, hashlib.sha256(path.read_bytes()).hexdigest(), f"file {instance}")


def test_dicom_members_are_copied_as_they_are_and_read_back_as_hu_stacks(tmp_path) -> None:
    stored = np.arange(3 * 4 * 4, dtype=np.uint16).reshape(3, 4, 4) * 100
    (tmp_path / "in").mkdir()
    files = [_dicom(tmp_path / "in" / f"{n}.dcm", stored[n - 1], instance=n) for n in (2, 3, 1)]
    with ShardWriter(tmp_path / "out") as w:
        w.write(sample(0, dicom=files))
    reader = ShardReader(tmp_path / "out", verify=True)
    assert reader.read_member(0, "0000.dcm") == files[0].path.read_bytes()  # as given
    got = reader[0]
    assert got.meta["modalities"] == ["text", "image"]
    (stack,) = got.images
    np.testing.assert_array_equal(stack, stored.astype(np.int16) - 1024)  # instance order
    record = got.meta["images"][0]
    assert record["shape"] == [3, 4, 4] and record["spacing"] == [0.5, 0.5, 1.0]
    assert record["window"] == [40.0, 400.0]  # CT default
    assert record["sources"] == [files[2].sha256, files[0].sha256, files[1].sha256]
    with tarfile.open(tmp_path / "out" / "shard-000000.tar") as tar:  # a plain tar
        assert tar.getnames() == [
            "k0000.json",
            "k0000.txt",
            "k0000.0000.dcm",
            "k0000.0001.dcm",
            "k0000.0002.dcm",
        ]


def test_early_writeback_changes_no_byte_of_the_shards(tmp_path, monkeypatch) -> None:
    from trainer.data import shards

    (tmp_path / "in").mkdir()
    files = [_dicom(tmp_path / "in" / f"{n}.dcm", np.full((8, 8), n), instance=n) for n in (1, 2)]
    for name, writeback in (("late", shards._WRITEBACK), ("early", 1)):
        monkeypatch.setattr(shards, "_WRITEBACK", writeback)  # 1: after every DICOM file
        with ShardWriter(tmp_path / name) as w:
            w.write(sample(0, dicom=files))
            w.write(sample(1, dicom=files[:1]))
    late, early = (
        (tmp_path / "late" / "shard-000000.tar"),
        (tmp_path / "early" / "shard-000000.tar"),
    )
    assert early.read_bytes() == late.read_bytes()
    ShardReader(tmp_path / "early", verify=True)  # the sha256 hashed while writing holds


def test_the_writer_refuses_a_dicom_file_that_differs_from_its_sha256(tmp_path) -> None:
    (tmp_path / "in").mkdir()
    good = _dicom(tmp_path / "in" / "1.dcm", np.zeros((2, 2)), instance=1)
    changed = DicomFile(good.path, "0" * 64, "de-id result 7")
    match = "de-id result 7: file does not match"
    with pytest.raises(ShardFormatError, match=match), ShardWriter(tmp_path / "out") as w:
        w.write(sample(0, dicom=[changed]))
    assert not list((tmp_path / "out").glob("*.tar*"))  # the unfinished shard is removed
    assert not (tmp_path / "out" / "manifest.json").exists()


def _mixed_samples(tmp_path, n: int) -> list[Sample]:
    """Samples of varied sizes: DICOM files (copied), text, arrays and waveforms (in memory)."""
    rng = np.random.default_rng(n)
    (tmp_path / "in").mkdir(exist_ok=True)
    out = []
    for i in range(n):
        files = [
            _dicom(
                tmp_path / "in" / f"{i}-{j}.dcm", rng.integers(0, 900, (4 + i % 5, 6)), instance=j
            )
            for j in range(i % 4)
        ]
        kw = {"dicom": files}
        if i % 3 == 0:
            kw["wave"] = rng.standard_normal((2, 50 + 7 * i)).astype(np.float32)
        if i % 5 == 1:
            kw["images"] = [np.full((1, 3, 3), i, dtype=np.int16)]
        out.append(Sample(key=f"k{i:04d}", text="note " * (i % 7), **kw))
    return out


def _folder_bytes(root) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize(("per_shard", "max_bytes"), [(3, 1 << 30), (1000, 9000), (4, 6000)])
def test_shards_written_in_parallel_are_byte_identical_to_one_writer(
    tmp_path, per_shard, max_bytes
) -> None:
    samples = _mixed_samples(tmp_path, 23)
    folders = {}
    for workers in (1, 3):
        out = tmp_path / f"w{workers}"
        with ShardWriter(out, per_shard, max_bytes, workers=workers) as w:
            for s in samples:
                w.write(s)
        folders[workers] = _folder_bytes(out)
    assert len([n for n in folders[1] if n.endswith(".tar")]) >= 4  # really several shards
    assert folders[3] == folders[1]  # tars, index files and manifest, byte for byte
    reader = ShardReader(tmp_path / "w3", verify=True)
    assert reader.keys == [s.key for s in samples]
    assert reader.read_member(22, "0000.dcm") == samples[22].dicom[0].path.read_bytes()


def test_a_bad_file_in_a_later_shard_fails_a_parallel_write_and_leaves_no_partial_shard(
    tmp_path,
) -> None:
    samples = _mixed_samples(tmp_path, 12)
    bad = samples[9].dicom[0]
    samples[9].dicom[0] = DicomFile(bad.path, "0" * 64, "de-id result 99")
    out = tmp_path / "out"
    with (
        pytest.raises(ShardFormatError, match="de-id result 99: file does not match"),
        ShardWriter(out, samples_per_shard=2, workers=3) as w,
    ):
        for s in samples:
            w.write(s)
    assert not list(out.glob(".*.tmp"))  # every unfinished shard is removed
    assert not (out / "manifest.json").exists()  # the folder is not a version


def test_a_file_that_changes_size_after_it_was_planned_is_refused(tmp_path) -> None:
    samples = _mixed_samples(tmp_path, 8)
    grown = samples[6].dicom[1]
    with (
        pytest.raises(ShardFormatError, match="changed size"),
        ShardWriter(tmp_path / "out", samples_per_shard=2, workers=2) as w,
    ):
        for s in samples:
            w.write(s)
            if s is samples[6]:
                with open(grown.path, "ab") as fh:  # before its shard is written
                    fh.write(b"\0" * 4)


@pytest.mark.parametrize(
    ("bits_stored", "signed", "frames"),
    [(12, 0, 1), (12, 1, 1), (16, 0, 1), (16, 1, 3), (12, 1, 2)],
)
def test_stored_values_read_from_the_bytes_equal_pydicoms_pixel_array(
    tmp_path, bits_stored, signed, frames
) -> None:
    from pydicom import dcmread

    raw = np.random.default_rng(bits_stored + frames).integers(0, 1 << 16, (frames, 3, 5))
    path = tmp_path / "x.dcm"
    _dicom(path, raw[0], instance=1)
    ds = dcmread(path)
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_stored, bits_stored - 1, signed
    ds.NumberOfFrames, ds.PixelData = frames, raw.astype("<u2").tobytes()  # high bits set
    ds.save_as(path, enforce_file_format=True)
    ds = dcmread(path)
    fast, reference = stored_values(ds), ds.pixel_array
    assert fast.dtype == reference.dtype and fast.shape == reference.shape
    np.testing.assert_array_equal(fast, reference)


def test_rescaling_to_int16_units_is_exact_and_clips() -> None:
    stored = np.array([0, 1024, 40000], dtype=np.uint16)
    np.testing.assert_array_equal(to_int16_units(stored, 1.0, -1024.0), [-1024, 0, 32767])
    np.testing.assert_array_equal(to_int16_units(stored, 0.5, 0.0), [0, 512, 20000])
    assert to_int16_units(stored, 1.0, -1024.0).dtype == np.int16


def test_reader_still_reads_format_1_datasets(tmp_path) -> None:
    img = np.arange(8, dtype=np.int16).reshape(2, 2, 2)
    with ShardWriter(tmp_path) as w:
        w.write(sample(0, images=[img]))  # format 1 had these members only
    for path in (tmp_path / "manifest.json", tmp_path / "index" / "shard-000000.json"):
        path.write_text(path.read_text().replace('"format_version": 2', '"format_version": 1'))
    reader = ShardReader(tmp_path)
    assert reader.manifest["format_version"] == 1
    np.testing.assert_array_equal(reader[0].images[0], img)


def test_verify_catches_a_corrupted_shard(tmp_path) -> None:
    with ShardWriter(tmp_path) as w:
        w.write(sample(0))
    path = tmp_path / "shard-000000.tar"
    data = bytearray(path.read_bytes())
    data[600] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ShardFormatError, match="sha256"):
        ShardReader(tmp_path, verify=True)


def test_tokenizer_round_trips_english_and_chinese(tmp_path) -> None:
    tok = Tokenizer.train(["the lesion in the left lobe", "胸部CT 未见异常"] * 5, 300)
    for text in ("the left lesion", "胸部CT 未见异常, HU 40", "emoji 🙂 ok"):
        assert tok.decode(tok.encode(text)) == text
    tok.save(tmp_path / "t.json")
    again = Tokenizer.load(tmp_path / "t.json")
    assert again.encode("the lesion") == tok.encode("the lesion")
    assert len(tok.encode("the lesion")) < len(b"the lesion")  # merges learned
    assert tok.vocab_size == 300


def test_tokenizer_training_is_deterministic() -> None:
    texts = ["aa bb aa bb cc", "bb cc dd"] * 3
    assert Tokenizer.train(texts, 280).merges == Tokenizer.train(texts, 280).merges


@settings(max_examples=80, deadline=None)
@given(
    texts=st.lists(st.text(alphabet="aab 胸部1\n", max_size=40), min_size=1, max_size=25),
    extra=st.integers(min_value=0, max_value=60),
)
def test_incremental_bpe_training_learns_the_reference_merges(texts, extra) -> None:
    """Overlaps (aaaa, 胸胸) and ties included: the fast trainer learns the same merges."""
    assert Tokenizer.train(texts, 265 + extra).merges == reference_merges(texts, 265 + extra)


def test_the_tokenizer_command_trains_on_a_dataset_versions_text(tmp_path, capsys) -> None:
    from trainer.__main__ import main
    from trainer.data.synthetic import write_synthetic

    data = write_synthetic(tmp_path / "v1", samples=24, per_shard=8)
    out = tmp_path / "tok.json"
    assert main(["tokenizer", "--data", str(data), "--vocab-size", "400", "--out", str(out)]) == 0
    tok = Tokenizer.load(out)
    assert tok.vocab_size == 400 and tok.fingerprint()[:12] in capsys.readouterr().out
    text = ShardReader(data)[0].text
    assert text and len(tok.encode(text)) < len(text.encode())  # merges learned from it
    capped = list(dataset_texts([data], max_bytes=1))
    assert capped == [text]  # the cap stops after the sample that crosses it
    assert main(["tokenizer", "--vocab-size", "400", "--out", str(out)]) == 2


def test_threads_sharing_one_reader_read_the_right_bytes(tmp_path) -> None:
    """A loader's prefetch thread and its caller may read through one reader at once."""
    from concurrent.futures import ThreadPoolExecutor

    from trainer.data.synthetic import write_synthetic

    reader = ShardReader(write_synthetic(tmp_path / "v1", samples=32, per_shard=8))
    members = [(i, ext) for i in range(len(reader)) for ext in reader.locations[i][1]]
    expected = {m: reader.read_member(*m) for m in members}

    def read_all(seed: int) -> int:
        order = sorted(members, key=lambda m: hash((m, seed)))
        return sum(reader.read_member(*m) != expected[m] for _ in range(20) for m in order)

    try:
        with ThreadPoolExecutor(4) as pool:
            assert sum(pool.map(read_all, range(4))) == 0
    finally:
        reader.close()


def test_a_dataset_without_a_tokenizer_is_read_with_byte_ids(tmp_path) -> None:
    trained = Tokenizer.train(["the lesion in the left lobe"] * 5, 300)
    trained.save(tmp_path / "own.json")
    bare = Tokenizer.for_dataset(tmp_path)  # a packed version: no tokenizer.json
    assert bare.vocab_size == 265 and bare.decode(bare.encode("胸部CT 40HU")) == "胸部CT 40HU"
    assert Tokenizer.for_dataset(tmp_path, tmp_path / "own.json").merges == trained.merges
    trained.save(tmp_path / "tokenizer.json")
    assert Tokenizer.for_dataset(tmp_path).merges == trained.merges


def test_sampler_splits_each_global_batch_across_ranks() -> None:
    one = ResumableSampler(range(20), micro_batch=4, seed=3)
    ranks = [ResumableSampler(range(20), micro_batch=2, rank=r, world=2, seed=3) for r in (0, 1)]
    for _ in range(12):  # crosses two epoch boundaries
        assert one.next() == ranks[0].next() + ranks[1].next()


def test_sampler_resumes_at_the_exact_next_sample() -> None:
    a = ResumableSampler(range(10, 30), micro_batch=3, seed=7)
    seen = [a.next() for _ in range(5)]
    b = ResumableSampler(range(10, 30), micro_batch=3, seed=7)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert [b.next() for _ in range(4)] == [a.next() for _ in range(4)]
    assert seen[0] != seen[1]


def test_each_epoch_visits_every_sample_once() -> None:
    s = ResumableSampler(range(12), micro_batch=4, seed=1)
    first = sorted(i for _ in range(3) for i in s.next())
    second = sorted(i for _ in range(3) for i in s.next())
    assert first == second == list(range(12))


def test_sampler_refuses_state_from_another_dataset() -> None:
    state = ResumableSampler(range(10), 2).state_dict()
    with pytest.raises(ValueError, match="10 samples"):
        ResumableSampler(range(11), 2).load_state_dict(state)


def test_cache_prefetches_the_shards_asked_for_and_verifies_them(dataset, tmp_path) -> None:
    cache = ShardCache(dataset, tmp_path / "nvme", prefetch=2)
    try:
        cache.want(["shard-000002.tar", "shard-000003.tar", "shard-000000.tar"])
        deadline = time.monotonic() + 10
        while cache.queue_depth() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cache.queue_depth() == 0
        assert sorted(p.name for p in (tmp_path / "nvme").iterdir()) == [
            "shard-000002.tar",
            "shard-000003.tar",
        ]
        path = cache.path("shard-000000.tar")  # not prefetched: copied now
        assert path.read_bytes() == (dataset / "shard-000000.tar").read_bytes()
        assert cache.copied == 3
    finally:
        cache.close()


def test_reader_through_the_cache_returns_the_same_samples(dataset, tmp_path) -> None:
    cache = ShardCache(dataset, tmp_path / "nvme")
    try:
        cached = ShardReader(dataset, resolve=cache.path)
        direct = ShardReader(dataset)
        for i in (0, 17, 63):
            assert cached[i].text == direct[i].text
        assert (tmp_path / "nvme" / "shard-000003.tar").exists()
    finally:
        cache.close()


def test_collator_lays_out_modalities_and_masks_the_loss(dataset) -> None:
    cfg = load_config("tiny")
    tok = Tokenizer.load(dataset / "tokenizer.json")
    reader = ShardReader(dataset)
    batch = Collator(cfg.model, tok, 64)([reader[0], reader[3]], [0, 3])
    ids, labels = batch.input_ids, batch.labels
    assert ids.shape == labels.shape == (2, 64)
    assert ids[0, 0] == BOS_ID
    assert int((ids[0] == IMAGE_PATCH_ID).sum()) == cfg.model.image.tokens  # 8
    assert int((ids[0] == WAVE_PATCH_ID).sum()) == cfg.model.waveform.tokens  # 8
    assert int((ids[1] == IMAGE_PATCH_ID).sum()) == 0  # sample 3 has no image
    assert batch.image_mask.tolist() == [True, False]
    assert batch.images.shape == (2, 2, 32, 32)
    # Labels are the next text token; patches and markers carry no loss.
    targets = labels[0][labels[0] != IGNORE_INDEX].tolist()
    assert targets[-1] == EOS_ID
    assert IMAGE_PATCH_ID not in targets and WAVE_PATCH_ID not in targets
    assert tok.decode(targets) == reader[0].text


def test_image_window_maps_hounsfield_units_to_unit_range() -> None:
    stack = np.array([[[-160, 40], [240, 1000]]], dtype=np.int16)  # window 40 +- 200
    out = normalise_image(stack, {"images": [{"window": [40, 400]}]}, slices=1, size=2)
    assert out.shape == (1, 2, 2)
    assert out.flatten().tolist() == pytest.approx([0.0, 0.5, 1.0, 1.0])
