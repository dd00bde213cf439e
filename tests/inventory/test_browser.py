"""In a real browser: the batch page follows a scan through htmx polling until it is done, and
the dashboard then draws its plotly charts (one test: a browser session is the slow part)."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from apps.inventory import services
from tests.browser import conftest as browser
from tests.browser.test_navigation import sign_in

# Debian's chromium and the screenshot folder, as in tests/browser/.
browser_type_launch_args = browser.browser_type_launch_args
artifacts = browser.artifacts

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_a_scan_is_followed_live_and_charted(cast, source, live_server, page: Page, artifacts):
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    sign_in(page, live_server.url, cast["data_steward"])

    batch = services.start_scan(source, acting_user=None, enqueue=False)
    page.goto(f"{live_server.url}/inventory/batches/{batch.pk}/")
    progress = page.locator("[data-testid=batch-progress]")
    expect(progress).to_have_attribute("data-status", "pending")
    services.scan_source(batch.pk)
    expect(progress).to_have_attribute("data-status", "done", timeout=5000)
    expect(progress).to_contain_text("10 of 10 files")
    page.screenshot(path=artifacts / "batch.png", full_page=True)
    page.goto(f"{live_server.url}/inventory/batches/{batch.pk}/qa/?result=fail")
    expect(page.locator("[data-testid=qa-results] tbody tr").first).to_be_visible()
    page.screenshot(path=artifacts / "qa.png", full_page=True)
    page.goto(f"{live_server.url}/inventory/sources/{source.pk}/")
    page.screenshot(path=artifacts / "source.png", full_page=True)

    page.goto(f"{live_server.url}/inventory/dashboard/")
    for chart in ("chart-by-type", "chart-by-source", "chart-by-consent"):
        expect(page.locator(f"#{chart} .main-svg").first).to_be_visible()
    page.screenshot(path=artifacts / "dashboard.png", full_page=True)
    assert errors == []
