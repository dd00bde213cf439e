"""Packing released de-identified data into shards: grouping, content, determinism, refusal."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from apps.audit.models import AuditEvent
from apps.datasets import services
from apps.datasets.models import DatasetMember, DatasetVersion
from trainer.data.shards import ShardReader, read_manifest

pytestmark = pytest.mark.django_db


def _samples(version):
    reader = ShardReader(version.root, verify=True)
    try:
        return {sample.key: sample for sample in reader}
    finally:
        reader.close()


def _by_patient(samples):
    return {s.meta["patient"]: s for s in samples.values()}


def test_it_packs_one_sample_per_study_with_images_report_and_waveform(built):
    samples = _by_patient(_samples(built))
    assert sorted(samples) == ["P-AAAA", "P-BBBB", "P-CCCC"]
    a, b, c = samples["P-AAAA"], samples["P-BBBB"], samples["P-CCCC"]
    assert a.meta["modalities"] == ["text", "image", "waveform"]
    assert b.meta["modalities"] == ["text", "image", "waveform"]
    assert c.meta["modalities"] == ["text"]
    assert "右上叶结节" in a.text
    assert built.sample_count == 3
    assert built.modality_counts == {"text": 3, "image": 2, "waveform": 2}


def test_it_stacks_ct_slices_in_instance_order_as_int16_hounsfield_units(built, world):
    a = _by_patient(_samples(built))["P-AAAA"]
    (stack,) = a.images
    assert stack.dtype == np.int16 and stack.shape == (3, 8, 8)
    np.testing.assert_array_equal(stack, world.ct_hu)
    record = a.meta["images"][0]
    assert record["modality"] == "CT"
    assert record["shape"] == [3, 8, 8]
    assert record["spacing"] == [0.7, 0.7, 2.5]
    assert record["rescale"] == {"slope": 1.0, "intercept": -1024.0, "applied": True}
    assert record["window"] == [40.0, 400.0]


def test_it_reads_edf_and_wfdb_waveforms_as_float32_channels_by_samples(built, world):
    samples = _by_patient(_samples(built))
    ecg = samples["P-AAAA"]
    assert ecg.wave.dtype == np.float32 and ecg.wave.shape == (2, 512)
    np.testing.assert_allclose(ecg.wave, world.ecg, atol=1e-3)
    assert ecg.meta["waveform"]["sampling_rate"] == 256
    assert ecg.meta["waveform"]["channels"] == ["I", "II"]
    assert ecg.meta["waveform"]["units"] == ["uV", "uV"]
    rec = samples["P-BBBB"]
    np.testing.assert_allclose(rec.wave, world.wfdb, atol=1e-6)
    assert rec.meta["waveform"]["channels"] == ["lead0", "lead1"]
    assert rec.meta["waveform"]["units"] == ["mV", "mV"]


def test_its_metadata_record_carries_profile_and_source_hashes_but_no_paths(built, world):
    a = _by_patient(_samples(built))["P-AAAA"]
    assert a.meta["format_version"] == 2
    assert a.meta["deid_profile"] == "profile-test-1"
    expected = sorted(
        world.results[k].output_sha256 for k in ("a_ct1", "a_ct2", "a_ct3", "a_report", "a_ecg")
    )
    assert a.meta["sources"] == expected
    assert "P-AAAA/" not in json.dumps(a.meta)  # no output paths


def test_it_stores_the_released_dicom_bytes_as_they_are_in_path_order(built, world):
    reader = ShardReader(built.root)
    try:
        i = next(i for i in range(len(reader)) if reader[i].meta["patient"] == "P-AAAA")
        root = Path(world.run.output_root)
        for n, name in enumerate(("a_ct1", "a_ct2", "a_ct3")):  # 001.dcm, 002.dcm, 003.dcm
            result = world.results[name]
            assert (
                reader.read_member(i, f"{n:04d}.dcm") == (root / result.output_relpath).read_bytes()
            )
            assert reader[i].meta["dicom"][n] == result.output_sha256
        assert (
            reader.read_member(i, "0003.dcm") is None and reader.read_member(i, "img.npy") is None
        )
    finally:
        reader.close()


def test_it_keys_samples_by_a_pseudonymous_stable_id(built):
    for key in _samples(built):
        assert key.startswith("s") and len(key) == 25
        assert "study" not in key and "P-" not in key


def test_it_never_packs_quarantined_errored_or_qa_excluded_files(built, world):
    packed = set(DatasetMember.objects.filter(version=built).values_list("raw_file_id", flat=True))
    for name in ("q_dicom", "e_note", "x_note"):
        assert world.raws[name].pk not in packed
    assert built.skipped == {"error": 1, "qa_excluded": 1, "quarantined": 1}
    assert "P-XXXX" not in _by_patient(_samples(built))
    manifest_files = {f["raw_file"] for f in read_manifest(built.root)["lineage"]["files"]}
    assert manifest_files == {world.raws[name].pk for name in world.raws} - {
        world.raws[n].pk for n in ("q_dicom", "e_note", "x_note")
    }


def test_it_skips_files_of_a_source_whose_consent_was_withdrawn(world):
    world.source.consent_status = "withdrawn"
    world.source.save()
    version = services.build_version("c", [world.run], target_shard_mb=1, acting_user=None)
    assert version.status == "failed"
    assert "nothing to pack" in version.error and "consent_withdrawn: 11" in version.error


def test_it_writes_a_manifest_with_hashes_counts_tokens_and_lineage(built, world):
    manifest = read_manifest(built.root)
    assert len(manifest["shards"]) == built.shard_count > 1  # small target size: several
    assert manifest["samples"] == 3
    assert manifest["token_estimate"] == built.token_estimate > 0
    assert set(manifest["index_sha256"]) == {s["name"] for s in manifest["shards"]}
    runs = manifest["lineage"]["runs"]
    assert runs == [{"run": world.run.pk, "batch": world.batch.pk, "profile": "profile-test-1"}]
    entry = next(f for f in manifest["lineage"]["files"] if f["raw_file"] == world.raws["b_dat"].pk)
    assert entry["run"] == world.run.pk
    assert entry["raw_sha256"] == world.raws["b_dat"].sha256
    assert entry["output_sha256"] == world.results["b_dat"].output_sha256
    assert built.manifest_sha256 and built.file_count == 11


def test_it_is_deterministic_same_inputs_give_byte_identical_shards(world, tmp_path):
    one = services.build_version(
        "det", [world.run], target_shard_mb=0.004, acting_user=None, root=tmp_path / "one"
    )
    two = services.build_version(
        "det", [world.run], target_shard_mb=0.004, acting_user=None, root=tmp_path / "two"
    )
    assert (one.number, two.number) == (1, 2)
    files_one = sorted(p.relative_to(one.root) for p in Path(one.root).rglob("*") if p.is_file())
    files_two = sorted(p.relative_to(two.root) for p in Path(two.root).rglob("*") if p.is_file())
    assert files_one == files_two and len(files_one) > 3
    for rel in files_one:
        assert (Path(one.root) / rel).read_bytes() == (Path(two.root) / rel).read_bytes(), rel
    assert one.manifest_sha256 == two.manifest_sha256


def test_the_index_reads_every_sample_back_exactly(built):
    reader = ShardReader(built.root)
    try:
        for i in range(len(reader)):
            sample = reader[i]
            again = reader[i]
            assert sample.meta == again.meta
            number, members = reader.locations[i]
            with tarfile.open(Path(built.root) / reader.shard_names[number]) as tar:
                for ext in members:
                    member = tar.extractfile(f"{reader.keys[i]}.{ext}")
                    assert reader.read_member(i, ext) == member.read(), ext
    finally:
        reader.close()


def test_the_shards_are_plain_tars_webdataset_reads(built):
    import webdataset as wds

    names = sorted(str(p) for p in Path(built.root).glob("shard-*.tar"))
    keys = {s["__key__"] for s in wds.WebDataset(names, shardshuffle=False)}
    assert keys == set(_samples(built))


def test_it_refuses_an_unreleased_run_and_names_it(unreleased_world):
    with pytest.raises(
        services.UnreleasedRunError, match=f"run {unreleased_world.run.pk} is not released"
    ):
        services.build_version("nope", [unreleased_world.run], target_shard_mb=1, acting_user=None)
    assert not DatasetVersion.objects.exists()


def test_it_refuses_a_mix_of_released_and_unreleased_runs(world, unreleased_world):
    with pytest.raises(services.UnreleasedRunError, match=str(unreleased_world.run.pk)):
        services.build_version(
            "mix", [world.run, unreleased_world.run], target_shard_mb=1, acting_user=None
        )


def test_it_fails_the_build_when_a_released_output_changed_after_release(world):
    path = Path(world.run.output_root) / world.results["a_report"].output_relpath
    path.write_bytes(b"tampered")
    version = services.build_version("t", [world.run], target_shard_mb=1, acting_user=None)
    assert version.status == "failed"
    assert f"de-id result {world.results['a_report'].pk}" in version.error
    assert not Path(version.root).exists()
    assert not list(Path(version.root).parent.glob(".*partial"))


def test_it_fails_the_build_when_a_released_dicom_changed_after_release(world):
    path = Path(world.run.output_root) / world.results["b_mr2"].output_relpath
    data = bytearray(path.read_bytes())
    data[-1] ^= 1  # one pixel bit: the DICOM still parses, only the hash can tell
    path.write_bytes(bytes(data))
    version = services.build_version("t", [world.run], target_shard_mb=1, acting_user=None)
    assert version.status == "failed"
    assert version.error == (
        f"de-id result {world.results['b_mr2'].pk}: file does not match its recorded sha256"
    )
    assert not Path(version.root).exists()
    assert not list(Path(version.root).parent.glob(".*partial"))


def test_a_ready_version_is_immutable_in_the_database_and_on_disk(built):
    from django.db import DatabaseError, transaction

    with pytest.raises(DatabaseError), transaction.atomic():
        DatasetVersion.objects.filter(pk=built.pk).update(sample_count=999)
    with pytest.raises(DatabaseError), transaction.atomic():
        DatasetMember.objects.filter(version=built).update(sample_key="x")
    shard = next(Path(built.root).glob("shard-*.tar"))
    assert shard.stat().st_mode & 0o222 == 0


def test_it_writes_the_audit_events_of_a_build(built, steward):
    actions = list(
        AuditEvent.objects.filter(resource=f"datasets.datasetversion:{built.pk}")
        .order_by("seq")
        .values_list("action", "user_id")
    )
    assert actions == [
        ("datasets.version_build_requested", steward.pk),
        ("datasets.version_built", None),
    ]


def test_a_second_build_of_the_same_name_gets_the_next_number(built, world):
    again = services.build_version("ct-demo", [world.run], target_shard_mb=1, acting_user=None)
    assert again.number == 2 and again.status == "ready"
    assert Path(again.root).name == "v2" and Path(built.root).name == "v1"


def test_the_worker_refuses_a_run_whose_release_was_withdrawn_after_the_request(world):
    from apps.deid.models import DeidRun

    version = services.request_build("late", [world.run], target_shard_mb=1, acting_user=None)
    DeidRun.objects.filter(pk=world.run.pk).update(released_at=None)
    version = services.pack_version(version.pk)
    assert version.status == "failed"
    assert f"de-id run {world.run.pk} is not released" in version.error
    assert not Path(version.root).exists()


def test_packing_twice_is_a_no_op_once_the_version_is_ready(built):
    again = services.pack_version(built.pk)
    assert again.status == "ready" and again.manifest_sha256 == built.manifest_sha256
    assert DatasetMember.objects.filter(version=built).count() == 11


def test_a_build_another_worker_holds_is_left_alone(world):
    from django.utils import timezone

    version = services.request_build("held", [world.run], target_shard_mb=1, acting_user=None)
    DatasetVersion.objects.filter(pk=version.pk).update(claimed_at=timezone.now())
    assert services.pack_version(version.pk).status == "building"


def test_cancelling_a_queued_build_stops_it_at_once(world, steward):
    version = services.request_build("c", [world.run], target_shard_mb=1, acting_user=None)
    version = services.cancel_build(version, acting_user=steward)
    assert version.status == "failed" and version.error == "cancelled on request"
    assert services.pack_version(version.pk).status == "failed"  # the queued task: a no-op
    assert AuditEvent.objects.filter(action="datasets.version_cancel_requested").exists()


@pytest.mark.parametrize("workers", [1, 2])
def test_cancelling_a_running_build_stops_it_at_the_next_sample(world, settings, workers):
    settings.DATASETS_PACK_WORKERS = workers  # 2: shards being written on threads are stopped
    version = services.request_build("c", [world.run], target_shard_mb=0.004, acting_user=None)

    def cancel_midway(done, total):
        services.cancel_build(DatasetVersion.objects.get(pk=version.pk), acting_user=None)

    version = services.pack_version(version.pk, progress=cancel_midway)
    assert version.status == "failed" and version.error == "cancelled on request"
    assert not Path(version.root).exists()
    assert not list(Path(version.root).parent.glob(".*partial"))


def test_a_ready_version_cannot_be_cancelled(built):
    with pytest.raises(services.DatasetError, match="only builds can be cancelled"):
        services.cancel_build(built, acting_user=None)


def test_an_unreadable_released_file_costs_its_sample_and_is_counted(world, factories):
    run, raw = world.run, factories.make_raw(world.batch, "raw/broken.dcm", "dicom")
    factories.add_result(
        run,
        raw,
        "P-DDDD/broken.dcm",
        b"DICM but not really",
        kind="dicom",
        pseudonym="P-DDDD",
        study_key="study-d",
    )
    version = services.build_version("u", [run], target_shard_mb=1, acting_user=None)
    assert version.status == "ready" and version.sample_count == 3
    assert version.skipped["dicom_unreadable"] == 1
    assert not DatasetMember.objects.filter(raw_file=raw).exists()


def test_a_compressed_dicom_costs_its_sample_and_is_counted(world, factories):
    import io

    from pydicom import dcmread
    from pydicom.encaps import encapsulate
    from pydicom.uid import MPEG4HP41  # video: no reader decodes it into slices

    plain = factories.dicom_bytes(np.ones((4, 4)), study="9", series="1", instance=1, z=0.0)
    ds = dcmread(io.BytesIO(plain))
    ds.file_meta.TransferSyntaxUID = MPEG4HP41
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3 not decoded at packing"])
    ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    raw = factories.make_raw(world.batch, "raw/jpeg.dcm", "dicom")
    factories.add_result(
        world.run, raw, "P-DDDD/jpeg.dcm", data, kind="dicom", pseudonym="P-DDDD", study_key="d"
    )
    version = services.build_version("j", [world.run], target_shard_mb=1, acting_user=None)
    assert version.status == "ready" and version.sample_count == 3
    assert version.skipped["dicom_compressed"] == 1
    assert not DatasetMember.objects.filter(raw_file=raw).exists()


@pytest.mark.parametrize(
    "sample",
    [
        "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless (pylibjpeg-libjpeg)
        "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless (pylibjpeg-openjpeg)
        "JPEG2000.dcm",  # JPEG 2000 lossy, NM
    ],
)
def test_a_jpeg_compressed_dicom_is_packed_and_read_back_as_pydicom_decodes_it(
    world, factories, sample
):
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    path = get_testdata_file(sample)  # ships inside pydicom
    data = Path(path).read_bytes()
    ds = dcmread(path)
    expected = ds.pixel_array.astype(np.float64) * float(ds.get("RescaleSlope", 1)) + float(
        ds.get("RescaleIntercept", 0)
    )
    raw = factories.make_raw(world.batch, "raw/mr-jls.dcm", "dicom")
    factories.add_result(
        world.run, raw, "P-EEEE/mr.dcm", data, kind="dicom", pseudonym="P-EEEE", study_key="e"
    )
    version = services.build_version("jls", [world.run], target_shard_mb=1, acting_user=None)
    assert version.status == "ready" and version.sample_count == 4
    assert "dicom_compressed" not in version.skipped
    (stack,) = _by_patient(_samples(version))["P-EEEE"].images
    assert stack.shape == (1, *expected.shape)
    assert np.array_equal(stack[0], np.rint(expected).astype(np.int16))


def test_packing_in_worker_processes_gives_the_same_bytes(world, tmp_path, settings):
    serial = services.build_version(
        "par", [world.run], target_shard_mb=0.004, acting_user=None, root=tmp_path / "one"
    )
    settings.DATASETS_PACK_WORKERS = 2
    parallel = services.build_version(
        "par", [world.run], target_shard_mb=0.004, acting_user=None, root=tmp_path / "two"
    )
    assert parallel.status == "ready", parallel.error
    assert parallel.manifest_sha256 == serial.manifest_sha256
    for shard in Path(serial.root).glob("shard-*.tar"):
        assert shard.read_bytes() == (Path(parallel.root) / shard.name).read_bytes()
