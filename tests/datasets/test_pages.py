"""The datasets pages: who may use them, and that they refuse what the services refuse."""

from __future__ import annotations

import pytest

from apps.core.roles import ALL_ROLES
from apps.datasets.models import DatasetVersion

pytestmark = pytest.mark.django_db

# (url, roles allowed to GET it); "{pk}" is the built version.
PAGES = [
    ("/datasets/", {"data_steward", "privacy_officer", "operator", "auditor"}),
    ("/datasets/{pk}/", {"data_steward", "privacy_officer", "operator", "auditor"}),
    ("/datasets/{pk}/lineage/", {"data_steward", "privacy_officer", "operator", "auditor"}),
    ("/datasets/{pk}/status/", {"data_steward", "privacy_officer", "operator", "auditor"}),
    (
        "/datasets/{pk}/verify/status/",
        {"data_steward", "privacy_officer", "operator", "auditor"},
    ),
    ("/datasets/build/", {"data_steward"}),
    ("/datasets/lineage/", {"privacy_officer", "data_steward", "auditor"}),
    ("/datasets/lineage.csv?q=P-AAAA", {"privacy_officer", "data_steward", "auditor"}),
    (
        "/datasets/{pk}/labels/",
        {"data_steward", "privacy_officer", "operator", "auditor", "clinician_reviewer"},
    ),
    ("/datasets/{pk}/labels/new/", {"data_steward", "clinician_reviewer"}),
]


@pytest.mark.parametrize("role", sorted(ALL_ROLES))
def test_each_role_sees_exactly_its_pages(role, built, as_role):
    client = as_role(role)
    for url, allowed in PAGES:
        response = client.get(url.format(pk=built.pk))
        expected = 200 if role in allowed else 403
        assert response.status_code == expected, (url, role, response.status_code)


def test_only_verifiers_may_post_verify(built, as_role):
    url = f"/datasets/{built.pk}/verify/"
    for role in sorted(ALL_ROLES):
        response = as_role(role).post(url)
        allowed = role in {"data_steward", "privacy_officer", "operator"}
        assert response.status_code == (302 if allowed else 403), role


def test_only_stewards_may_cancel_a_build(world, as_role):
    from apps.datasets import services

    version = services.request_build("c", [world.run], target_shard_mb=1, acting_user=None)
    assert as_role("operator").post(f"/datasets/{version.pk}/cancel/").status_code == 403
    response = as_role("data_steward").post(f"/datasets/{version.pk}/cancel/")
    assert response.status_code == 302
    version.refresh_from_db()
    assert version.status == "failed"


def test_pages_of_a_missing_version_are_404(db, as_role):
    client = as_role("data_steward")
    for url in (
        "/datasets/999/",
        "/datasets/999/lineage/",
        "/datasets/999/labels/",
        "/datasets/999/labels/new/",
        "/datasets/999/status/",
    ):
        assert client.get(url).status_code == 404, url


def test_the_detail_page_shows_counts_manifest_and_lineage(built, world, as_role):
    page = as_role("operator").get(f"/datasets/{built.pk}/").content.decode()
    assert built.manifest_sha256 in page
    assert f'data-raw-file="{world.raws["a_ct1"].pk}"' in page
    assert 'data-verify="never"' in page
    assert "P-AAAA/" not in page  # no de-identified paths, let alone raw ones


def test_the_verify_button_queues_a_check_and_the_panel_polls_until_it_is_done(
    built, as_role, verify_queue, django_capture_on_commit_callbacks
):
    client = as_role("operator")
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/datasets/{built.pk}/verify/", HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    panel = response.content.decode()
    assert 'data-verify="queued"' in panel
    assert f'hx-get="/datasets/{built.pk}/verify/status/"' in panel
    assert len(verify_queue) == 1
    verify_queue.run()
    panel = client.get(f"/datasets/{built.pk}/verify/status/").content.decode()
    assert 'data-verify="ok"' in panel and "hx-get" not in panel  # done: polling stops
    page = client.get(f"/datasets/{built.pk}/").content.decode()
    assert 'data-verify="ok"' in page


def test_a_running_check_shows_its_progress_in_bytes(built, as_role):
    from apps.datasets.models import VerifyCheck

    VerifyCheck.objects.create(
        version=built, status="running", bytes_done=3 << 20, bytes_total=12 << 20
    )
    panel = as_role("auditor").get(f"/datasets/{built.pk}/verify/status/").content.decode()
    assert 'data-verify="running"' in panel and "hx-get" in panel
    assert f'max="{12 << 20}" value="{3 << 20}"' in panel


def test_the_build_form_offers_only_released_runs(world, unreleased_world, as_role):
    page = as_role("data_steward").get("/datasets/build/").content.decode()
    assert f'value="{world.run.pk}"' in page
    assert f'value="{unreleased_world.run.pk}"' not in page


def test_the_build_form_refuses_a_posted_unreleased_run_naming_it(unreleased_world, as_role):
    response = as_role("data_steward").post(
        "/datasets/build/",
        {"name": "x", "runs": [unreleased_world.run.pk], "target_shard_mb": "1"},
    )
    assert response.status_code == 400
    assert f"de-id run {unreleased_world.run.pk} is not released" in response.content.decode()
    assert not DatasetVersion.objects.exists()


def test_the_build_form_queues_a_build_of_released_runs(
    world, as_role, monkeypatch, django_capture_on_commit_callbacks
):
    from apps.datasets import tasks

    queued = []
    monkeypatch.setattr(tasks.pack_version, "delay", queued.append)
    with django_capture_on_commit_callbacks(execute=True):
        response = as_role("data_steward").post(
            "/datasets/build/",
            {"name": "from-form", "runs": [world.run.pk], "target_shard_mb": "1"},
        )
    version = DatasetVersion.objects.get(name="from-form")
    assert response.status_code == 302 and response["Location"] == f"/datasets/{version.pk}/"
    assert version.status == "building" and queued == [version.pk]
    tasks.pack_version(version.pk)  # what the worker does
    version.refresh_from_db()
    assert version.status == "ready" and version.sample_count == 3


def test_lineage_search_by_sha256_and_by_patient(built, world, as_role):
    client = as_role("privacy_officer")
    page = client.get("/datasets/lineage/", {"q": world.raws["a_ct1"].sha256}).content.decode()
    assert f'data-version="{built.pk}"' in page
    page = client.get("/datasets/lineage/", {"q": "P-BBBB"}).content.decode()
    assert f'data-version="{built.pk}"' in page
    page = client.get("/datasets/lineage/", {"q": "P-NOBODY"}).content.decode()
    assert 'data-testid="not-found"' in page


def test_a_label_set_is_uploaded_from_the_page(built, as_role):
    import json
    from pathlib import Path

    from django.core.files.uploadedfile import SimpleUploadedFile

    keys = [
        k
        for f in sorted((Path(built.root) / "index").glob("*.json"))
        for k in json.loads(f.read_text())["samples"]
    ]
    data = "".join(json.dumps({"key": k, "label": "x"}) + "\n" for k in keys).encode()
    client = as_role("clinician_reviewer")
    response = client.post(
        f"/datasets/{built.pk}/labels/new/",
        {
            "name": "nodules",
            "quality_score": "0.8",
            "file": SimpleUploadedFile("labels.jsonl", data),
        },
    )
    assert response.status_code == 302
    page = client.get(f"/datasets/{built.pk}/labels/").content.decode()
    assert "nodules" in page and "v1" in page
    bad = client.post(
        f"/datasets/{built.pk}/labels/new/",
        {
            "name": "nodules",
            "quality_score": "0.8",
            "file": SimpleUploadedFile("labels.jsonl", b'{"key": "nope"}\n'),
        },
    )
    assert bad.status_code == 400 and "line 1" in bad.content.decode()


def test_the_reach_report_exports_as_csv_with_ids_only(built, world, as_role):
    import csv
    import io

    from apps.datasets import services

    services.record_dataset_use(
        built, consumer_kind="jobs.trainingrun", consumer_id="5", acting_user=None
    )
    response = as_role("privacy_officer").get("/datasets/lineage.csv", {"q": "P-AAAA"})
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    files = [r for r in rows if r["row"] == "file"]
    assert {int(r["raw_file_id"]) for r in files} == {
        world.raws[k].pk for k in ("a_ct1", "a_ct2", "a_ct3", "a_report", "a_ecg")
    }
    assert [(r["consumer_kind"], r["consumer_id"]) for r in rows if r["row"] == "use"] == [
        ("jobs.trainingrun", "5")
    ]
    assert all(r["version"] == "ct-demo v1" for r in rows)


def _used_by_run(version, run_id="5"):
    from apps.datasets import services

    services.record_dataset_use(
        version, consumer_kind="jobs.trainingrun", consumer_id=run_id, acting_user=None
    )


@pytest.mark.parametrize("role", sorted(ALL_ROLES))
def test_the_data_behind_a_run_is_shown_to_the_roles_that_read_versions(role, built, as_role):
    _used_by_run(built)
    allowed = role in {"data_steward", "privacy_officer", "operator", "auditor"}
    client = as_role(role)
    for url in (
        "/datasets/lineage/of/jobs.trainingrun/5/",
        "/datasets/lineage/of/jobs.trainingrun/5/files.csv",
    ):
        assert client.get(url).status_code == (200 if allowed else 403), (url, role)


def test_the_data_behind_a_run_lists_its_versions_and_every_file(built, world, as_role):
    from apps.datasets import services

    other = services.build_version("other", [world.run], target_shard_mb=1, acting_user=None)
    _used_by_run(built)
    _used_by_run(other)
    page = as_role("operator").get("/datasets/lineage/of/jobs.trainingrun/5/").content.decode()
    assert 'href="/jobs/runs/5/"' in page  # the registered consumer's own page
    for version in (built, other):
        assert f'href="/datasets/{version.pk}/"' in page
    packed = services.lineage_of_version(built).count()
    assert packed == 11
    # Two versions of the same files: 22 rows, each naming its version.
    files = page.split('id="files-title"')[1]
    assert files.count("<tr data-raw-file=") == 2 * packed
    assert files.count(">ct-demo v1</a></td>") == files.count(">other v1</a></td>") == packed
    for raw in ("a_ct1", "b_dat", "c_note"):
        assert f'data-raw-file="{world.raws[raw].pk}"' in page
    assert f'data-raw-file="{world.raws["q_dicom"].pk}"' not in page  # quarantined, never packed


def test_the_data_behind_a_run_pages_through_large_versions(built, as_role, monkeypatch):
    from apps.datasets import views

    monkeypatch.setattr(views, "PAGE_SIZE", 4)
    _used_by_run(built)
    client = as_role("auditor")
    url = "/datasets/lineage/of/jobs.trainingrun/5/"
    first = client.get(url).content.decode()
    assert first.count("<tr data-raw-file=") == 4 and "Page 1 of 3" in first
    assert f'hx-get="{url}?page=2"' in first
    last = client.get(url, {"page": 3}, HTTP_HX_REQUEST="true").content.decode()
    assert last.count("<tr data-raw-file=") == 3 and "<html" not in last


def test_the_data_behind_a_run_exports_every_file_as_csv(built, world, as_role):
    import csv
    import io

    from apps.datasets import services

    _used_by_run(built)
    response = as_role("operator").get("/datasets/lineage/of/jobs.trainingrun/5/files.csv")
    assert response["Content-Disposition"].startswith("attachment;")
    body = b"".join(response.streaming_content).decode()
    rows = list(csv.DictReader(io.StringIO(body)))
    expected = {(m.raw_file_id, m.raw_file.sha256) for m in services.lineage_of_version(built)}
    assert {(int(r["raw_file_id"]), r["raw_sha256"]) for r in rows} == expected
    assert {r["version"] for r in rows} == {"ct-demo v1"}
    assert {int(r["deid_run_id"]) for r in rows} == {world.run.pk}


def test_a_consumer_that_read_nothing_or_a_hostile_kind_is_404(built, as_role):
    _used_by_run(built)
    client = as_role("operator")
    for url in (
        "/datasets/lineage/of/jobs.trainingrun/6/",
        "/datasets/lineage/of/jobs.trainingrun/6/files.csv",
        "/datasets/lineage/of/Jobs.TrainingRun/5/",
        "/datasets/lineage/of/jobs/5/",
        "/datasets/lineage/of/jobs.trainingrun;drop/5/",
        "/datasets/lineage/of/jobs.trainingrun/" + "9" * 65 + "/",
    ):
        assert client.get(url).status_code == 404, url
