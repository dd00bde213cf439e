"""Pages and API of the data map: who may use which, and what each does."""

from __future__ import annotations

import io
from unittest import mock

import pytest

from apps.audit.models import AuditEvent
from apps.core import access
from apps.core.roles import ALL_ROLES
from apps.inventory import services
from apps.inventory.models import DataSource, IngestBatch, RawFile

pytestmark = pytest.mark.django_db

READ = {"data_steward", "privacy_officer", "project_manager", "auditor"}
WRITE = {"data_steward", "privacy_officer"}


def inventory_endpoints():
    return [
        ep
        for ep in access.iter_endpoints()
        if (ep["sample"] or ep["route"]).startswith(("/inventory/", "/api/inventory/"))
    ]


@pytest.fixture
def scanned(source):
    batch = services.start_scan(source, acting_user=None, enqueue=False)
    return services.scan_source(batch.pk)


# --- roles ---------------------------------------------------------------------------------------


def test_every_inventory_endpoint_declares_roles_and_has_a_sample_url():
    eps = inventory_endpoints()
    assert len(eps) >= 20
    assert [ep["route"] for ep in eps if ep["roles"] is None or ep["sample"] is None] == []


def test_read_pages_admit_readers_and_write_pages_only_writers():
    roles = {ep["name"]: ep["roles"] for ep in inventory_endpoints() if not ep["api"]}
    assert roles["inventory:sources"] == READ
    assert roles["inventory:dashboard"] == READ
    assert roles["inventory:source_create"] == WRITE
    assert roles["inventory:csv_import"] == WRITE
    assert roles["inventory:file_exclude"] == WRITE
    assert roles["inventory:files"] == WRITE  # paths can carry names
    assert roles["inventory:batch_qa"] == WRITE


@pytest.mark.parametrize("role", sorted(ALL_ROLES))
def test_each_role_gets_what_its_declaration_allows_with_real_objects(role, client_as, scanned):
    client = client_as(role)
    for ep in inventory_endpoints():
        response = client.get(ep["sample"])
        if role in ep["roles"]:
            assert response.status_code in (200, 302, 404, 405), (ep["route"], response.status_code)
        else:
            assert response.status_code == 403, (ep["route"], response.status_code)


def test_anonymous_callers_are_sent_to_login_or_refused(client, scanned):
    for ep in inventory_endpoints():
        response = client.get(ep["sample"])
        if ep["api"]:
            assert response.status_code in (401, 403), ep["route"]
        else:
            assert response.status_code == 302, ep["route"]


def test_a_read_only_role_cannot_post(client_as, source):
    client = client_as("project_manager")
    assert client.post("/inventory/sources/new/", {"source": "x"}).status_code == 403
    assert client.post(f"/inventory/sources/{source.pk}/scan/").status_code == 403
    assert client.post("/api/inventory/sources/", {"source": "x"}).status_code == 403
    assert not IngestBatch.objects.exists()


# --- pages ---------------------------------------------------------------------------------------


def form_data(**overrides):
    data = {
        "source": "Cardiology ECG carts",
        "type": "ECG",
        "avg_size_mb": "0.25",
        "estimated_count": "40000",
        "owner": "Cardiology",
        "consent_status": "obtained",
        "notes": "12-lead resting ECG",
        "legal_basis": "PIPL art. 13(1); ethics approval 2025-17",
        "raw_root": "/data/raw/ecg",
        "deid_root": "",
        "working_root": "",
        "allowed_roles": ["data_steward"],
    }
    return {**data, **overrides}


def test_a_steward_adds_a_source_through_the_form(client_as):
    response = client_as("data_steward").post("/inventory/sources/new/", form_data())
    source = DataSource.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/inventory/sources/{source.pk}/"
    assert source.allowed_roles == ["data_steward"]
    assert AuditEvent.objects.get(action="inventory.source_created").resource == (
        f"inventory.datasource:{source.pk}"
    )


def test_the_form_refuses_a_relative_root(client_as):
    response = client_as("data_steward").post(
        "/inventory/sources/new/", form_data(raw_root="../etc")
    )
    assert response.status_code == 400
    assert "must be an absolute path" in response.content.decode()
    assert not DataSource.objects.exists()


def test_a_steward_edits_a_source(client_as, source):
    client = client_as("privacy_officer")
    response = client.post(f"/inventory/sources/{source.pk}/edit/", form_data(source="Renamed"))
    assert response.status_code == 302
    source.refresh_from_db()
    assert source.source == "Renamed"
    assert AuditEvent.objects.filter(action="inventory.source_updated").count() == 1


def test_the_list_filters_and_reports_bad_filters(client_as, source):
    DataSource.objects.create(source="Notes", type="TEXT", owner="Records")
    client = client_as("auditor")
    page = client.get("/inventory/?type=TEXT").content.decode()
    assert "Notes" in page and "PACS radiology" not in page
    assert client.get("/inventory/?type=BOGUS").status_code == 400
    partial = client.get("/inventory/?q=pacs", HTTP_HX_REQUEST="true").content.decode()
    assert "PACS radiology" in partial and "<html" not in partial


def test_the_import_page_lists_bad_lines_and_imports_nothing(client_as):
    bad = (
        b"source,type,avg_size_MB,estimated_count,owner,consent_status,notes\r\n"
        b"A,DICOM,1,1,Radiology,obtained,\r\n"
        b"B,DICOM,x,1,Radiology,obtained,\r\n"
    )
    upload = io.BytesIO(bad)
    upload.name = "data_inventory.csv"
    response = client_as("data_steward").post(
        "/inventory/import/", {"file": upload, "encoding": "auto"}
    )
    assert response.status_code == 400
    assert "line 3, avg_size_MB: &#x27;x&#x27; is not a number" in response.content.decode()
    assert not DataSource.objects.exists()


def test_the_import_page_imports_a_good_file(client_as):
    upload = io.BytesIO(
        "source,type,avg_size_MB,estimated_count,owner,consent_status,notes\r\n"
        "超声,DICOM,1.5,10,超声科,已同意,\r\n".encode("gb18030")
    )
    upload.name = "data_inventory.csv"
    response = client_as("data_steward").post(
        "/inventory/import/", {"file": upload, "encoding": "gb18030"}
    )
    assert response.status_code == 302
    assert DataSource.objects.get().owner == "超声科"


def test_the_export_downloads_data_inventory_csv(client_as, source):
    response = client_as("project_manager").get("/inventory/data_inventory.csv")
    assert response["Content-Disposition"] == 'attachment; filename="data_inventory.csv"'
    assert response.content == services.export_inventory_csv()


def test_starting_a_scan_from_the_page_opens_the_batch(
    client_as, source, django_capture_on_commit_callbacks
):
    client = client_as("data_steward")
    with (
        mock.patch("apps.inventory.tasks.scan_source.delay") as delay,
        django_capture_on_commit_callbacks(execute=True),
    ):
        response = client.post(f"/inventory/sources/{source.pk}/scan/")
    batch = IngestBatch.objects.get()
    assert response["Location"] == f"/inventory/batches/{batch.pk}/"
    delay.assert_called_once_with(batch.pk)


def test_the_batch_page_polls_while_running_and_stops_when_done(client_as, source):
    batch = services.start_scan(source, acting_user=None, enqueue=False)
    client = client_as("auditor")
    pending = client.get(f"/inventory/batches/{batch.pk}/progress/").content.decode()
    assert 'hx-trigger="every 1s"' in pending and "<html" not in pending
    services.scan_source(batch.pk)
    page = client.get(f"/inventory/batches/{batch.pk}/").content.decode()
    assert 'data-status="done"' in page and "hx-trigger" not in page
    assert "10 of 10 files" in page


def test_cancel_from_the_page(client_as, source):
    batch = services.start_scan(source, acting_user=None, enqueue=False)
    client_as("data_steward").post(f"/inventory/batches/{batch.pk}/cancel/")
    batch.refresh_from_db()
    assert batch.status == IngestBatch.Status.CANCELLED


def test_the_qa_pages_show_failures_per_source_and_batch(client_as, scanned):
    client = client_as("data_steward")
    by_batch = client.get(f"/inventory/batches/{scanned.pk}/qa/?result=fail").content.decode()
    by_source = client.get(f"/inventory/sources/{scanned.source_id}/qa/").content.decode()
    assert 'data-check="format_known" data-outcome="fail"' in by_batch
    assert "junk.bin" in by_batch and "report.txt" not in by_batch
    assert "report.txt" in by_source


def test_excluding_from_the_qa_page_returns_to_it(client_as, scanned):
    raw = RawFile.objects.get(relpath="junk.bin")
    back = f"/inventory/batches/{scanned.pk}/qa/?result=fail"
    response = client_as("data_steward").post(
        f"/inventory/files/{raw.pk}/exclude/", {"reason": "not a clinical file", "next": back}
    )
    assert response["Location"] == back
    raw.refresh_from_db()
    assert raw.excluded
    hostile = client_as("data_steward").post(
        f"/inventory/files/{raw.pk}/include/", {"next": "https://evil.example/"}
    )
    assert hostile["Location"] == f"/inventory/batches/{scanned.pk}/qa/"


def test_a_source_limited_to_other_roles_hides_its_files(client_as, scanned, source):
    source.allowed_roles = ["privacy_officer"]
    source.save()
    steward = client_as("data_steward")
    assert "junk.bin" not in steward.get("/inventory/files/").content.decode()
    assert steward.get(f"/inventory/sources/{source.pk}/qa/").status_code == 404
    assert steward.get("/api/inventory/files/").json()["count"] == 0
    assert "junk.bin" in client_as("privacy_officer").get("/inventory/files/").content.decode()


def test_readers_without_file_access_see_counts_but_no_paths(client_as, scanned, source):
    page = client_as("project_manager").get(f"/inventory/sources/{source.pk}/").content.decode()
    assert "Data QA" not in page and "junk.bin" not in page
    assert client_as("project_manager").get("/inventory/files/").status_code == 403


def test_the_dashboard_renders_charts_from_vendored_plotly(client_as, scanned):
    page = client_as("project_manager").get("/inventory/dashboard/").content.decode()
    assert "/static/vendor/plotly/plotly.min.js" in page
    assert "/static/js/inventory-dashboard.js" in page
    assert 'id="inventory-dashboard-data" type="application/json"' in page
    assert "<script>" not in page  # CSP: no inline scripts
    data = client_as("auditor").get("/inventory/dashboard.json").json()
    assert data["by_type"]["labels"] == ["DICOM"]
    assert data["by_type"]["planned_mb"] == [50.0]
    assert data["by_source"]["labels"] == ["PACS radiology"]
    assert data["files_by_kind"]["dicom"] == 3


# --- API -----------------------------------------------------------------------------------------


def test_the_api_creates_updates_and_deletes_sources_through_services(client_as):
    client = client_as("data_steward")
    created = client.post(
        "/api/inventory/sources/",
        {"source": "EEG lab", "type": "EEG", "owner": "Neurology", "allowed_roles": []},
        content_type="application/json",
    )
    assert created.status_code == 201, created.content
    pk = created.json()["id"]
    patched = client.patch(
        f"/api/inventory/sources/{pk}/",
        {"consent_status": "pending"},
        content_type="application/json",
    )
    assert patched.json()["consent_status"] == "pending"
    assert client.delete(f"/api/inventory/sources/{pk}/").status_code == 204
    assert list(
        AuditEvent.objects.filter(action__startswith="inventory.")
        .order_by("seq")
        .values_list("action", flat=True)
    ) == ["inventory.source_created", "inventory.source_updated", "inventory.source_deleted"]


def test_the_api_refuses_to_delete_a_source_with_batches(client_as, scanned, source):
    response = client_as("data_steward").delete(f"/api/inventory/sources/{source.pk}/")
    assert response.status_code == 400
    assert DataSource.objects.filter(pk=source.pk).exists()


def test_readers_list_sources_but_cannot_write(client_as, source):
    client = client_as("auditor")
    assert client.get("/api/inventory/sources/?consent_status=waived").json()["count"] == 1
    assert client.get("/api/inventory/sources/?consent_status=nope").status_code == 400
    assert (
        client.patch(
            f"/api/inventory/sources/{source.pk}/", {"owner": "x"}, content_type="application/json"
        ).status_code
        == 403
    )


def test_the_api_starts_and_cancels_a_scan(client_as, source):
    client = client_as("data_steward")
    with mock.patch("apps.inventory.tasks.scan_source.delay"):
        started = client.post(
            "/api/inventory/batches/", {"source": source.pk}, content_type="application/json"
        )
        again = client.post(
            "/api/inventory/batches/", {"source": source.pk}, content_type="application/json"
        )
    assert started.status_code == 202 and started.json()["status"] == "pending"
    assert again.status_code == 400
    pk = started.json()["id"]
    assert client.post(f"/api/inventory/batches/{pk}/cancel/").json()["status"] == "cancelled"
    assert client.post(f"/api/inventory/batches/{pk}/cancel/").status_code == 409
    assert client_as("auditor").post(f"/api/inventory/batches/{pk}/cancel/").status_code == 403


def test_the_api_filters_files_with_the_page_filters(client_as, scanned):
    client = client_as("privacy_officer")
    dicoms = client.get("/api/inventory/files/?kind=dicom").json()
    assert dicoms["count"] == 3
    assert {f["modality"] for f in dicoms["results"]} == {"CT"}
    assert client.get("/api/inventory/files/?kind=xray").status_code == 400
    failing = client.get("/api/inventory/files/?qa_failed=true").json()
    assert [f["relpath"] for f in failing["results"]] == ["junk.bin"]


def test_the_api_lists_qa_results_and_excludes_files(
    client_as, scanned, django_assert_max_num_queries
):
    client = client_as("data_steward")
    with django_assert_max_num_queries(12):
        fails = client.get(f"/api/inventory/qa-results/?batch={scanned.pk}&result=fail").json()
    assert [(r["check_type"], r["severity"]) for r in fails["results"]] == [
        ("format_known", "warning")
    ]
    raw_id = fails["results"][0]["raw_file"]
    excluded = client.post(
        f"/api/inventory/files/{raw_id}/exclude/",
        {"reason": "junk"},
        content_type="application/json",
    )
    assert excluded.json()["excluded"] is True
    assert (
        client.post(
            f"/api/inventory/files/{raw_id}/exclude/", {}, content_type="application/json"
        ).status_code
        == 400
    )
