"""A clinician works a batch in the real browser with the keyboard alone, fails one item with
a category, and sees the gate's verdict; the review screen is saved as a screenshot."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from apps.core.testing import PASSWORD
from apps.review import services
from apps.review.models import Verdict

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def sign_in(page: Page, base: str, user) -> None:
    page.goto(f"{base}/accounts/login/")
    page.fill("#id_username", user.username)
    page.fill("#id_password", PASSWORD)
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{base}/")


def test_a_clinician_reviews_a_batch_with_the_keyboard_only(
    mixed_run, cast, live_server, page: Page, artifacts
):
    batch = services.create_batch(
        mixed_run,
        acting_user=cast["data_steward"],
        fraction=0.05,
        min_per_stratum=1,
        double_review_fraction=0,
        seed=4,
    )
    clinician = cast["clinician_reviewer"]
    base = live_server.url
    sign_in(page, base, clinician)
    page.goto(f"{base}/review/batches/{batch.pk}/work/")

    seen = []
    for _ in range(batch.items_total):
        screen = page.locator("[data-testid=review-screen]")
        expect(screen).to_have_attribute("data-live", "1")
        kind = screen.get_attribute("data-kind")
        seen.append(kind)
        if len(seen) == 1:
            page.keyboard.press("?")
            expect(page.locator("[data-testid=help]")).to_be_visible()
            page.keyboard.press("Escape")
            expect(page.locator("[data-testid=help]")).to_be_hidden()
        if kind == "dicom":
            img = page.locator("[data-testid=dicom-img]")
            page.wait_for_function("() => document.getElementById('dicom-img').naturalWidth > 0")
            before = img.get_attribute("src")
            page.keyboard.press("w")  # next window preset
            expect(img).not_to_have_attribute("src", before)
            page.keyboard.press("+")
            expect(page.locator("#zoom-readout")).to_have_text("125%")
            page.keyboard.press("o")  # overlay off and on again
            page.keyboard.press("o")
            page.wait_for_function("() => document.getElementById('dicom-img').complete")
            page.screenshot(path=artifacts / "review-screen-dicom.png", full_page=True)
            assert (artifacts / "review-screen-dicom.png").stat().st_size > 0
        if kind == "text":
            expect(page.locator("mark.mask[data-type=phone]")).to_be_visible()
            page.screenshot(path=artifacts / "review-screen-text.png", full_page=True)
            page.keyboard.press("f")
            expect(page.locator("#fail-panel")).to_have_class("fail-panel active")
            with page.expect_navigation():
                page.keyboard.press("3")  # phone
        else:
            if kind == "waveform":
                expect(page.locator("#wave-chart[data-drawn='1']")).to_have_count(1)
            with page.expect_navigation():
                page.keyboard.press("p")

    assert sorted(seen) == ["dicom", "text", "waveform"]
    expect(page.locator("[data-testid=queue-empty]")).to_be_visible()
    verdict = page.locator("[data-testid=gate-verdict]")
    expect(verdict).to_have_attribute("data-releasable", "false")
    expect(verdict).to_have_text("Release blocked")
    expect(page.locator("[data-testid=gate-findings]")).to_have_text("1")
    expect(page.locator("[data-testid=gate-reasons]")).to_contain_text("1 finding is unresolved")
    page.screenshot(path=artifacts / "gate.png", full_page=True)

    # The dashboard charts the failure by category.
    page.goto(f"{base}/review/batches/{batch.pk}/")
    expect(page.locator("[data-testid=failure-chart][data-drawn='1']")).to_have_count(1)
    expect(page.locator("[data-testid=reviewers]")).to_contain_text(clinician.username)
    page.screenshot(path=artifacts / "dashboard.png", full_page=True)

    # "k" walks back to the reviewer's own last verdict, read-only.
    page.goto(
        f"{base}/review/items/{Verdict.objects.filter(reviewer=clinician).latest('created').item_id}/"
    )
    expect(page.locator("[data-testid=past-verdict]")).to_be_visible()
    with page.expect_navigation():
        page.keyboard.press("k")
    expect(page.locator("[data-testid=review-screen]")).to_have_attribute("data-live", "0")

    verdicts = Verdict.objects.filter(item__batch=batch, reviewer=clinician)
    assert verdicts.count() == 3
    failed = verdicts.get(decision="fail")
    assert (failed.category, failed.item.result.kind) == ("phone", "text")
    assert not services.gate(batch).releasable


def test_dragging_sets_the_window_and_shift_drag_marks_a_region(
    root, cast, live_server, page: Page
):
    from tests.review import factories as f

    run = f.make_run(root, status="running")
    f.add_result(run, kind="dicom", modality="CT", content=f.dicom_bytes(rows=128, cols=128))
    f.finish(run)
    batch = services.create_batch(
        run, acting_user=cast["data_steward"], fraction=0.05, min_per_stratum=1
    )
    sign_in(page, live_server.url, cast["clinician_reviewer"])
    page.goto(f"{live_server.url}/review/batches/{batch.pk}/work/")
    img = page.locator("[data-testid=dicom-img]")
    page.wait_for_function("() => document.getElementById('dicom-img').naturalWidth > 0")
    box = img.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2

    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 50, y + 20, steps=5)
    page.mouse.up()
    expect(page.locator("#wl-readout")).to_have_text("C 80 / W 600")  # 40+20*2, 400+50*4
    expect(img).to_have_attribute(
        "src", f"/review/items/{batch.items.get().pk}/image.png?frame=0&c=80&w=600"
    )

    page.keyboard.down("Shift")
    page.mouse.move(box["x"] + 1, box["y"] + 1)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 4, box["y"] + box["height"] / 8, steps=4)
    page.mouse.up()
    page.keyboard.up("Shift")
    region = page.locator("#region").input_value()
    assert region.startswith('{"frame":0,"x0":0,"y0":0,"x1":32,"y1":16')
    page.keyboard.press("f")
    with page.expect_navigation():
        page.keyboard.press("7")  # burned-in text
    verdict = Verdict.objects.get(item__batch=batch)
    assert verdict.category == "burned_in_text"
    assert verdict.region == {"frame": 0, "x0": 0, "y0": 0, "x1": 32, "y1": 16}
