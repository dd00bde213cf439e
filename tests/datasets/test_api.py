"""The datasets API: builds refuse unreleased runs, verify, lineage, append-only label sets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from apps.datasets.models import AnnotationSet, DatasetVersion

pytestmark = pytest.mark.django_db


def test_creating_a_version_refuses_an_unreleased_run_naming_it(unreleased_world, as_role):
    response = as_role("data_steward").post(
        "/api/datasets/versions/",
        {"name": "x", "runs": [unreleased_world.run.pk], "target_shard_mb": 1},
        content_type="application/json",
    )
    assert response.status_code == 400
    assert f"de-id run {unreleased_world.run.pk} is not released" in response.json()["detail"]
    assert not DatasetVersion.objects.exists()


def test_creating_a_version_queues_a_build(
    world, as_role, monkeypatch, django_capture_on_commit_callbacks
):
    from apps.datasets import tasks

    queued = []
    monkeypatch.setattr(tasks.pack_version, "delay", queued.append)
    with django_capture_on_commit_callbacks(execute=True):
        response = as_role("data_steward").post(
            "/api/datasets/versions/",
            {"name": "api-built", "runs": [world.run.pk], "target_shard_mb": 1},
            content_type="application/json",
        )
    assert response.status_code == 202, response.content
    assert response.json()["status"] == "building" and queued == [response.json()["id"]]


def test_only_stewards_may_create_versions(world, as_role):
    response = as_role("operator").post(
        "/api/datasets/versions/",
        {"name": "x", "runs": [world.run.pk]},
        content_type="application/json",
    )
    assert response.status_code == 403


def test_versions_are_listed_and_retrieved_with_counts(built, as_role):
    client = as_role("auditor")
    listed = client.get("/api/datasets/versions/?status=ready").json()
    assert [v["id"] for v in listed["results"]] == [built.pk]
    one = client.get(f"/api/datasets/versions/{built.pk}/").json()
    assert one["modality_counts"] == {"text": 3, "image": 2, "waveform": 2}
    assert one["manifest_sha256"] == built.manifest_sha256


def test_the_verify_action_queues_a_check_that_reports_differences(
    built, as_role, verify_queue, django_capture_on_commit_callbacks
):
    client = as_role("operator")

    def verify() -> dict:
        with django_capture_on_commit_callbacks(execute=True):
            response = client.post(f"/api/datasets/versions/{built.pk}/verify/")
        assert response.status_code == 202, response.content
        return response.json()

    queued = verify()
    assert queued["status"] == "queued" and queued["ok"] is None
    assert verify()["id"] == queued["id"]  # asked twice before a worker took it: one check
    assert verify_queue == [queued["id"]]
    verify_queue.run()
    done = as_role("auditor").get(f"/api/datasets/checks/{queued['id']}/").json()
    assert done["status"] == "done" and done["ok"] is True
    assert done["bytes_done"] == done["bytes_total"] > 0

    shard = sorted(Path(built.root).glob("shard-*.tar"))[0]
    shard.chmod(0o644)
    data = bytearray(shard.read_bytes())
    data[600] ^= 0xFF
    shard.write_bytes(bytes(data))
    again = verify()
    assert again["id"] != queued["id"]
    verify_queue.run()
    listed = client.get(f"/api/datasets/checks/?version={built.pk}").json()["results"]
    assert [c["id"] for c in listed] == [again["id"], queued["id"]]  # newest first
    assert listed[0]["ok"] is False and listed[0]["problems"][0]["file"] == shard.name
    assert as_role("auditor").post(f"/api/datasets/versions/{built.pk}/verify/").status_code == 403
    assert client.get("/api/datasets/checks/?version=x").status_code == 400


def test_verifying_a_version_still_building_is_refused(world, as_role):
    from apps.datasets import services

    version = services.request_build("c", [world.run], target_shard_mb=1, acting_user=None)
    response = as_role("operator").post(f"/api/datasets/versions/{version.pk}/verify/")
    assert response.status_code == 409 and "only ready versions verify" in response.json()["detail"]


def test_the_version_lineage_endpoint_lists_raw_files(built, world, as_role):
    body = (
        as_role("privacy_officer")
        .get(f"/api/datasets/versions/{built.pk}/lineage/?limit=100")
        .json()
    )
    assert body["count"] == 11
    assert {r["raw_file"] for r in body["results"]} >= {world.raws["b_dat"].pk}


def test_the_lineage_endpoints_answer_by_raw_file_and_patient(built, world, as_role):
    client = as_role("privacy_officer")
    by_id = client.get(f"/api/datasets/lineage/raw-file/?id={world.raws['a_ecg'].pk}").json()
    assert [v["id"] for v in by_id[0]["versions"]] == [built.pk]
    by_sha = client.get(
        f"/api/datasets/lineage/raw-file/?sha256={world.raws['a_ecg'].sha256}"
    ).json()
    assert by_sha == by_id
    by_patient = client.get("/api/datasets/lineage/patient/?pseudonym=P-CCCC").json()
    assert [v["id"] for v in by_patient["versions"]] == [built.pk]
    assert client.get("/api/datasets/lineage/raw-file/?id=999999").status_code == 404
    assert (
        as_role("operator").get("/api/datasets/lineage/patient/?pseudonym=P-CCCC").status_code
        == 403
    )


def test_label_sets_are_uploaded_and_listed_but_never_updated(built, as_role):
    keys = [
        k
        for f in sorted((Path(built.root) / "index").glob("*.json"))
        for k in json.loads(f.read_text())["samples"]
    ]
    from django.core.files.uploadedfile import SimpleUploadedFile

    client = as_role("clinician_reviewer")
    for label in ("a", "b"):
        data = "".join(json.dumps({"key": k, "label": label}) + "\n" for k in keys).encode()
        response = client.post(
            "/api/datasets/annotations/",
            {
                "version": built.pk,
                "name": "nodules",
                "quality_score": 0.7,
                "file": SimpleUploadedFile("l.jsonl", data),
            },
        )
        assert response.status_code == 201, response.content
    listed = client.get(f"/api/datasets/annotations/?version={built.pk}").json()["results"]
    assert [s["number"] for s in listed] == [2, 1]
    first = AnnotationSet.objects.get(number=1)
    assert client.put(f"/api/datasets/annotations/{first.pk}/", {}).status_code == 405
    assert client.delete(f"/api/datasets/annotations/{first.pk}/").status_code == 405


def test_the_version_list_makes_a_constant_number_of_queries(world, as_role):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from apps.datasets import services

    client = as_role("operator")
    services.request_build("q", [world.run], target_shard_mb=1, acting_user=None)
    with CaptureQueriesContext(connection) as one:
        client.get("/api/datasets/versions/")
    for _ in range(3):
        services.request_build("q", [world.run], target_shard_mb=1, acting_user=None)
    with CaptureQueriesContext(connection) as four:
        assert client.get("/api/datasets/versions/").json()["count"] == 4
    assert len(four) == len(one)


def test_the_cancel_action_is_for_stewards(world, as_role):
    from apps.datasets import services

    version = services.request_build("c", [world.run], target_shard_mb=1, acting_user=None)
    url = f"/api/datasets/versions/{version.pk}/cancel/"
    assert as_role("operator").post(url).status_code == 403
    body = as_role("data_steward").post(url).json()
    assert body["status"] == "failed" and body["cancel_requested"] is True
    assert as_role("data_steward").post(url).status_code == 409


def test_the_files_behind_a_training_run_are_listed_across_its_versions(built, world, as_role):
    from apps.datasets import services

    other = services.build_version("other", [world.run], target_shard_mb=1, acting_user=None)
    for version in (built, other):
        services.record_dataset_use(
            version, consumer_kind="jobs.trainingrun", consumer_id="5", acting_user=None
        )
    url = "/api/datasets/consumer-lineage/?kind=jobs.trainingrun&id=5&limit=100"
    body = as_role("operator").get(url).json()
    assert body["count"] == 22
    assert {r["version"] for r in body["results"]} == {built.pk, other.pk}
    assert {r["raw_file"] for r in body["results"]} == {
        m.raw_file_id for m in services.lineage_of_version(built)
    }
    assert as_role("project_manager").get(url).status_code == 403
    client = as_role("auditor")
    assert client.get(url.replace("id=5", "id=6")).status_code == 404
    for bad in (
        "?kind=jobs&id=5",
        "?kind=jobs.trainingrun",
        "?kind=jobs.trainingrun&id=" + "1" * 65,
    ):
        assert client.get("/api/datasets/consumer-lineage/" + bad).status_code == 400, bad
