"""The review pages and API: each kind of file on the review screen, the image endpoint,
who may open what, the privacy officer's audited original, dashboards and batch drawing."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from apps.audit.models import AuditEvent
from apps.review import services
from apps.review.models import Finding, ReviewItem, Verdict
from tests.review import factories as f

pytestmark = pytest.mark.django_db


@pytest.fixture
def batch(mixed_run, steward):
    return services.create_batch(
        mixed_run, acting_user=steward, fraction=0.05, min_per_stratum=1, double_review_fraction=0
    )


def item_of(batch, kind):
    return batch.items.get(result__kind=kind)


def lease(batch, reviewer, kind):
    """Lease exactly the item of ``kind`` to ``reviewer`` (others stay free)."""
    item = item_of(batch, kind)
    ReviewItem.objects.filter(pk=item.pk).update(
        lease_user_id=reviewer.pk,
        leased_at=services.timezone.now(),
        lease_expires_at=services.timezone.now() + services.timedelta(minutes=5),
    )
    return item


def test_the_sample_has_the_three_kinds_and_not_the_quarantined_file(batch):
    assert sorted(batch.items.values_list("result__kind", flat=True)) == ["dicom", "edf", "text"]


def test_a_clinician_gets_the_review_screen_of_their_next_item(batch, client_as):
    response = client_as("clinician_reviewer").get(f"/review/batches/{batch.pk}/work/")
    assert response.status_code == 200
    html = response.content.decode()
    assert 'data-testid="review-screen"' in html and 'data-live="1"' in html
    assert 'data-testid="verdict-form"' in html
    assert "/static/js/review.js" in html and "<script>" not in html  # CSP: no inline code


def test_the_dicom_screen_has_presets_header_and_the_masked_box_overlay(batch, cast, client_as):
    item = lease(batch, cast["clinician_reviewer"], "dicom")
    html = client_as("clinician_reviewer").get(f"/review/items/{item.pk}/").content.decode()
    assert 'data-testid="dicom-viewer"' in html
    assert "DICOM" in html and "Lung" in html and "Bone" in html  # CT presets
    assert "PatientName" in html and "ANON^7F3A" in html  # the de-identified header
    assert 'id="overlay"' in html and 'class="box"' in html
    assert "left:3.125%" in html  # box x0=2 of 64 columns


def test_the_overlay_toggle_is_hidden_without_stored_boxes(root, steward, cast, client_as):
    run = f.make_run(root, status="running")
    f.add_result(run, kind="dicom", content=f.dicom_bytes(), actions={"pixel_boxes_masked": 2})
    f.finish(run)
    batch = services.create_batch(run, acting_user=steward, fraction=0.05, min_per_stratum=1)
    item = lease(batch, cast["clinician_reviewer"], "dicom")
    html = client_as("clinician_reviewer").get(f"/review/items/{item.pk}/").content.decode()
    assert 'id="overlay"' not in html


def test_the_image_is_a_windowed_png_of_the_requested_frame(batch, cast, client_as):
    item = lease(batch, cast["clinician_reviewer"], "dicom")
    client = client_as("clinician_reviewer")
    response = client.get(f"/review/items/{item.pk}/image.png?c=0&w=400&frame=0")
    assert response["Content-Type"] == "image/png"
    assert "no-store" in response["Cache-Control"]
    png = Image.open(io.BytesIO(response.content))
    assert png.size == (64, 64) and png.mode == "L"
    pixels = png.load()
    assert pixels[32, 32] == 153  # 40 HU (after the -1024 rescale) in 0/400: 240 * 255 / 400
    assert pixels[0, 63] == 0  # air
    bone = Image.open(
        io.BytesIO(client.get(f"/review/items/{item.pk}/image.png?c=400&w=10").content)
    )
    assert bone.load()[32, 32] == 0  # soft tissue is black in a narrow bone window
    assert client.get(f"/review/items/{item.pk}/image.png?frame=9").status_code == 422
    assert client.get(f"/review/items/{item.pk}/image.png?c=nan&w=inf").status_code == 200


def test_a_multi_frame_image_offers_a_frame_slider(root, steward, cast, client_as):
    run = f.make_run(root, status="running")
    f.add_result(run, kind="dicom", content=f.dicom_bytes(frames=3))
    f.finish(run)
    batch = services.create_batch(run, acting_user=steward, fraction=0.05, min_per_stratum=1)
    item = lease(batch, cast["clinician_reviewer"], "dicom")
    client = client_as("clinician_reviewer")
    assert 'id="frame"' in client.get(f"/review/items/{item.pk}/").content.decode()
    third = Image.open(
        io.BytesIO(client.get(f"/review/items/{item.pk}/image.png?frame=2&c=60&w=400").content)
    )
    assert third.load()[32, 32] == 127  # frame 2 is 60 HU: the window's middle


def test_the_note_shows_each_mask_highlighted_and_typed(batch, cast, client_as):
    item = lease(batch, cast["clinician_reviewer"], "text")
    html = client_as("clinician_reviewer").get(f"/review/items/{item.pk}/").content.decode()
    assert '<mark class="mask" data-type="name" title="name">&lt;NAME_1&gt;</mark>' in html
    assert 'data-type="date"' in html and 'data-type="phone"' in html


def test_the_waveform_is_plotted_with_its_header(batch, cast, client_as):
    item = lease(batch, cast["clinician_reviewer"], "edf")
    html = client_as("clinician_reviewer").get(f"/review/items/{item.pk}/").content.decode()
    assert 'data-chart="wave"' in html and "plotly.min.js" in html
    assert '"label": "ECG I"' in html and "ECG II" in html
    assert 'data-testid="wave-header"' in html and "Startdate X X X X" in html


def test_a_verdict_from_the_page_goes_to_the_next_item(batch, cast, client_as):
    client = client_as("clinician_reviewer")
    client.get(f"/review/batches/{batch.pk}/work/")
    item = ReviewItem.objects.get(batch=batch, lease_user_id=cast["clinician_reviewer"].pk)
    response = client.post(
        f"/review/items/{item.pk}/verdict/",
        {"decision": "fail", "category": "phone", "region": '{"start": 3, "end": 9}'},
    )
    assert (
        response.status_code == 302 and response["Location"] == f"/review/batches/{batch.pk}/work/"
    )
    verdict = Verdict.objects.get(item=item)
    assert (verdict.decision, verdict.category, verdict.region) == (
        "fail",
        "phone",
        {"start": 3, "end": 9},
    )


def test_a_clinician_cannot_open_an_item_that_is_not_theirs(batch, clinicians, cast, client_as):
    other = clinicians(1)[0]
    item = lease(batch, other, "text")
    client = client_as("clinician_reviewer")
    assert client.get(f"/review/items/{item.pk}/").status_code == 404
    assert client.get(f"/review/items/{item.pk}/image.png").status_code == 404
    taken = client.post(f"/review/items/{item.pk}/verdict/", {"decision": "pass"})
    assert taken.status_code == 302 and taken["Location"] == f"/review/batches/{batch.pk}/work/"
    assert not Verdict.objects.filter(item=item).exists()


def test_unknown_ids_are_404_for_every_page(client_as):
    steward, clinician = client_as("data_steward"), client_as("clinician_reviewer")
    assert steward.get("/review/batches/999/").status_code == 404
    assert clinician.get("/review/batches/999/work/").status_code == 404
    assert steward.get("/review/items/999/").status_code == 404
    assert steward.post("/review/findings/999/resolve/").status_code == 404


def test_only_privacy_officers_may_open_originals(batch, client_as):
    item = item_of(batch, "text")
    for role in ("clinician_reviewer", "data_steward", "auditor"):
        assert client_as(role).get(f"/review/items/{item.pk}/original/").status_code == 403


def test_opening_an_original_needs_a_reason_and_is_audited(batch, cast, client_as):
    item = item_of(batch, "text")
    client = client_as("privacy_officer")
    form = client.get(f"/review/items/{item.pk}/original/")
    assert form.status_code == 200 and "Zhang Wei" not in form.content.decode()
    assert client.post(f"/review/items/{item.pk}/original/", {"reason": ""}).status_code == 400
    assert not AuditEvent.objects.filter(action="review.original_opened").exists()
    opened = client.post(
        f"/review/items/{item.pk}/original/", {"reason": "dispute", "ticket": "INC-42"}
    )
    html = opened.content.decode()
    assert "Zhang Wei" in html and "&lt;NAME_1&gt;" in html  # side by side
    event = AuditEvent.objects.get(action="review.original_opened")
    assert event.user_id == cast["privacy_officer"].pk
    assert event.details["reason"] == "dispute" and event.details["ticket"] == "INC-42"
    assert "Zhang" not in event.details_json


def test_the_original_image_needs_an_audited_opening_first(batch, client_as):
    item = item_of(batch, "dicom")
    client = client_as("privacy_officer")
    assert client.get(f"/review/items/{item.pk}/original.png").status_code == 404
    client.post(f"/review/items/{item.pk}/original/", {"reason": "incident"})
    response = client.get(f"/review/items/{item.pk}/original.png")
    assert response.status_code == 200 and response["Content-Type"] == "image/png"


def test_the_dashboard_shows_gate_reviewers_and_failures(batch, cast, client_as):
    reviewer = cast["clinician_reviewer"]
    f.review_everything(
        batch,
        [reviewer],
        decide=lambda item, r: (
            ("fail", "burned_in_text") if item.result.kind == "dicom" else ("pass", "")
        ),
    )
    html = client_as("data_steward").get(f"/review/batches/{batch.pk}/").content.decode()
    assert 'data-testid="gate-verdict" data-releasable="false"' in html
    assert "Release blocked" in html
    assert reviewer.username in html
    assert '"Burned-in text"' in html  # the plotly bar chart's data
    assert 'data-testid="release"' in html  # stewards get the button
    auditor_html = client_as("auditor").get(f"/review/batches/{batch.pk}/").content.decode()
    assert 'data-testid="release"' not in auditor_html


def test_a_steward_resolves_a_finding_from_the_dashboard(batch, cast, client_as):
    f.review_everything(
        batch,
        [cast["clinician_reviewer"]],
        decide=lambda item, r: ("fail", "name") if item.result.kind == "text" else ("pass", ""),
    )
    finding = Finding.objects.get(batch=batch)
    response = client_as("data_steward").post(
        f"/review/findings/{finding.pk}/resolve/", {"resolution": "fixed", "scope": "item"}
    )
    assert response.status_code == 302
    assert Finding.objects.get(pk=finding.pk).status == "resolved"


def test_a_steward_draws_a_batch_from_the_page(mixed_run, client_as):
    client = client_as("data_steward")
    assert client.get("/review/new/").status_code == 200
    bad = client.post(
        "/review/new/",
        {
            "run": mixed_run.pk,
            "fraction": 0.2,
            "min_per_stratum": 1,
            "threshold": 0.99,
            "double_review_fraction": 0,
        },
    )
    assert bad.status_code == 400 and "outside the policy" in bad.content.decode()
    ok = client.post(
        "/review/new/",
        {
            "run": mixed_run.pk,
            "fraction": 0.02,
            "min_per_stratum": 1,
            "threshold": 0.99,
            "double_review_fraction": 0,
            "seed": 7,
        },
    )
    assert ok.status_code == 302
    assert mixed_run.review_batches.get().seed == 7


def test_the_api_leases_and_takes_verdicts(batch, client_as, cast):
    client = client_as("clinician_reviewer")
    leased = client.post(
        "/api/review/leases/", {"batch": batch.pk}, content_type="application/json"
    )
    assert leased.status_code == 200
    item_id = leased.json()["id"]
    made = client.post(
        "/api/review/verdicts/",
        {"item": item_id, "decision": "pass"},
        content_type="application/json",
    )
    assert made.status_code == 201, made.content
    again = client.post(
        "/api/review/verdicts/",
        {"item": item_id, "decision": "pass"},
        content_type="application/json",
    )
    assert again.status_code == 409
    mine = client.get("/api/review/verdicts/").json()["results"]
    assert [v["item"] for v in mine] == [item_id]
    gate = client_as("auditor").get(f"/api/review/batches/{batch.pk}/gate/").json()
    assert gate["reviewed"] == 1 and gate["releasable"] is False


def test_the_api_draws_batches_for_stewards_only(mixed_run, client_as):
    body = {"run": mixed_run.pk, "fraction": 0.01, "seed": 3}
    assert (
        client_as("clinician_reviewer")
        .post("/api/review/batches/", body, content_type="application/json")
        .status_code
        == 403
    )
    made = client_as("data_steward").post(
        "/api/review/batches/", body, content_type="application/json"
    )
    assert made.status_code == 201 and made.json()["seed"] == 3
    dup = client_as("data_steward").post(
        "/api/review/batches/", body, content_type="application/json"
    )
    assert dup.status_code == 400


def test_the_batch_list_counts_progress_and_open_findings(batch, cast, client_as):
    f.review_everything(
        batch,
        [cast["clinician_reviewer"]],
        decide=lambda item, r: ("pass", "") if item.result.kind == "edf" else ("fail", "other"),
    )
    html = client_as("clinician_reviewer").get("/review/").content.decode()
    row = html[html.index(f'data-batch="{batch.pk}"') :]
    assert 'aria-valuenow="100"' in row[:600] and "3 / 3" in row[:600]
    assert "<td>2</td>" in row[:800]


def test_why_the_engine_flagged_an_item_reads_in_words(batch, cast, client_as):
    from apps.deid.models import DeidFileResult

    item = lease(batch, cast["clinician_reviewer"], "dicom")
    DeidFileResult.objects.filter(pk=item.result_id).update(
        flagged=True, flag_reasons=["ocr_boxes", "name_hits", "some_new_code"]
    )
    html = client_as("clinician_reviewer").get(f"/review/items/{item.pk}/").content.decode()
    assert (
        "text found in the pixels and masked; person names found in the text; some_new_code" in html
    )
