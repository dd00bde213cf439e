"""Lineage both ways: version -> raw files, raw file / patient -> versions and consumers."""

from __future__ import annotations

import pytest
from django.test.utils import CaptureQueriesContext

from apps.datasets import services
from apps.datasets.models import DatasetUse

pytestmark = pytest.mark.django_db


def test_a_version_leads_to_every_raw_file_its_source_batch_and_run(built, world, factories):
    rows = list(services.lineage_of_version(built))
    assert {m.raw_file_id for m in rows} == {world.raws[k].pk for k in factories.PACKED}
    member = next(m for m in rows if m.raw_file_id == world.raws["b_dat"].pk)
    assert member.run_id == world.run.pk
    assert member.raw_file.source == world.source and member.raw_file.batch == world.batch
    assert member.patient_pseudonym == "P-BBBB"  # the signal file's own result has none
    assert member.member == "wav"


def test_the_version_lineage_query_is_one_query_whatever_its_size(built):
    from django.db import connection

    with CaptureQueriesContext(connection) as queries:
        rows = [
            (m.raw_file.sha256, m.raw_file.source.source, m.run_id)
            for m in services.lineage_of_version(built)
        ]
    assert len(rows) == 11 and len(queries) == 1


def test_a_raw_file_leads_to_every_version_that_holds_it(built, world):
    second = services.build_version("other", [world.run], target_shard_mb=1, acting_user=None)
    reach = services.reach_of_raw_file(world.raws["a_ct2"])
    assert [r.version for r in reach.versions] == [built, second]
    assert all(len(r.samples) == 1 for r in reach.versions)


def test_a_raw_file_that_was_never_packed_reaches_nothing(built, world):
    for name in ("q_dicom", "x_note"):
        reach = services.reach_of_raw_file(world.raws[name])
        assert reach.versions == [] and reach.uses == []


def test_the_same_bytes_registered_twice_count_as_the_same_file(built, world, factories):
    copy = factories.make_raw(
        world.batch, "raw/elsewhere.dcm", "dicom", sha256=world.raws["a_ct1"].sha256
    )
    reach = services.reach_of_raw_file(copy)
    assert [r.version for r in reach.versions] == [built]
    assert world.raws["a_ct1"].pk in reach.raw_file_ids


def test_a_patient_leads_to_every_version_training_run_and_checkpoint(built, world, steward):
    services.record_dataset_use(
        built, consumer_kind="jobs.trainingrun", consumer_id=42, acting_user=steward
    )
    services.record_dataset_use(
        built, consumer_kind="checkpoints.checkpoint", consumer_id="42-step-100", acting_user=None
    )
    reach = services.reach_of_patient("P-BBBB")
    assert [r.version for r in reach.versions] == [built]
    assert reach.versions[0].files == 5  # two slices, report, header, signal file
    assert {(u.consumer_kind, u.consumer_id) for u in reach.uses} == {
        ("jobs.trainingrun", "42"),
        ("checkpoints.checkpoint", "42-step-100"),
    }
    assert {world.raws[k].pk for k in ("b_mr1", "b_hea", "b_dat")} <= set(reach.raw_file_ids)


def test_an_excluded_patient_reaches_no_version(built):
    reach = services.reach_of_patient("P-XXXX")
    assert reach.versions == [] and reach.raw_file_ids  # known raw file, never packed


def test_a_training_run_leads_back_to_every_raw_file(built, world, factories):
    services.record_dataset_use(
        built, consumer_kind="jobs.trainingrun", consumer_id="7", acting_user=None
    )
    assert list(services.versions_used_by("jobs.trainingrun", "7")) == [built]
    rows = services.lineage_of_consumer("jobs.trainingrun", "7")
    assert {m.raw_file_id for m in rows} == {world.raws[k].pk for k in factories.PACKED}


def test_recording_a_use_is_idempotent_and_audited(built):
    from apps.audit.models import AuditEvent

    for _ in range(2):
        services.record_dataset_use(
            built, consumer_kind="jobs.trainingrun", consumer_id="9", acting_user=None
        )
    assert DatasetUse.objects.count() == 1
    assert AuditEvent.objects.filter(action="datasets.dataset_use_recorded").count() == 1


def test_a_registered_consumer_kind_gets_its_label_and_link():
    from apps.datasets import registry

    registry.register_consumer("test.thing", "Thing", url=lambda pk: f"/things/{pk}/")
    assert registry.consumer_kind("test.thing").label == "Thing"
    assert registry.consumer_url("test.thing", "3") == "/things/3/"
    assert registry.consumer_url("unknown.kind", "3") is None


def test_raw_files_are_found_by_id_or_sha256(world):
    raw = world.raws["a_report"]
    assert list(services.find_raw_files(str(raw.pk))) == [raw]
    assert list(services.find_raw_files(raw.sha256.upper())) == [raw]
    assert list(services.find_raw_files("not a thing")) == []


def test_rows_of_other_apps_that_point_at_a_version_join_its_reach(built, monkeypatch):
    """A training run's foreign key to the version is found without datasets importing it."""
    from types import SimpleNamespace

    class Rows(list):
        def filter(self, **lookup):
            assert lookup == {"dataset_version__in": [built.pk]}
            return self

        def order_by(self, *fields):
            return self

        def values_list(self, *fields):
            assert fields == ("pk", "dataset_version_id")
            return self

    run_model = SimpleNamespace(
        _meta=SimpleNamespace(app_label="jobs", label_lower="jobs.trainingrun"),
        _default_manager=Rows([(31, built.pk)]),
    )
    field = SimpleNamespace(name="dataset_version", attname="dataset_version_id")
    monkeypatch.setattr(services, "consumer_relations", lambda: [(run_model, field)])
    reach = services.reach_of_patient("P-AAAA")
    assert [(u.consumer_kind, u.consumer_id, u.version) for u in reach.uses] == [
        ("jobs.trainingrun", "31", built)
    ]
    services.record_dataset_use(
        built, consumer_kind="jobs.trainingrun", consumer_id="31", acting_user=None
    )
    services.record_dataset_use(
        built, consumer_kind="checkpoints.checkpoint", consumer_id="31-step-9", acting_user=None
    )
    reach = services.reach_of_patient("P-AAAA")
    assert [(u.consumer_kind, u.consumer_id) for u in reach.uses] == [
        ("checkpoints.checkpoint", "31-step-9"),
        ("jobs.trainingrun", "31"),  # recorded and linked: listed once
    ]


def test_the_real_relation_graph_is_read_without_importing_consumer_apps():
    for model, field in services.consumer_relations():
        assert model._meta.app_label != "datasets"
        assert field.related_model._meta.label_lower == "datasets.datasetversion"


def test_a_training_run_with_a_foreign_key_leads_back_to_its_raw_files(built, monkeypatch):
    from types import SimpleNamespace

    class Rows(list):
        def filter(self, **lookup):
            assert lookup == {"pk": 31}
            return self

        def exclude(self, **lookup):
            return self

        def values_list(self, *fields, flat=False):
            return self

    run_model = SimpleNamespace(
        _meta=SimpleNamespace(app_label="jobs", label_lower="jobs.trainingrun"),
        _default_manager=Rows([built.pk]),
    )
    field = SimpleNamespace(name="dataset_version", attname="dataset_version_id")
    monkeypatch.setattr(services, "consumer_relations", lambda: [(run_model, field)])
    assert list(services.versions_used_by("jobs.trainingrun", 31)) == [built]
    assert services.lineage_of_consumer("jobs.trainingrun", 31).count() == 11
