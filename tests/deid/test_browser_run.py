"""In a real browser: the run page's progress bar follows the worker live (htmx polling) and
the findings chart renders under the site's CSP."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from apps.core.roles import STEWARD
from apps.deid import services
from tests.browser.conftest import browser_type_launch_args  # noqa: F401 - Debian chromium
from tests.browser.test_navigation import sign_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_the_progress_bar_follows_the_run_and_the_chart_renders(
    cast, live_server, page: Page, mixed, no_ocr_profile
):
    problems: list[str] = []
    # Script errors and CSP refusals; a missing resource is reported by URL (the browser's
    # own favicon request is not ours).
    page.on(
        "console",
        lambda m: (
            problems.append(m.text)
            if m.type == "error" and "Failed to load resource" not in m.text
            else None
        ),
    )
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on(
        "response",
        lambda r: (
            problems.append(f"{r.status} {r.url}")
            if r.status >= 400 and not r.url.endswith("/favicon.ico")
            else None
        ),
    )
    run = services.start_run(mixed.batch, profile=no_ocr_profile, acting_user=None, enqueue=False)
    sign_in(page, live_server.url, cast[STEWARD])

    page.goto(f"{live_server.url}/deid/runs/{run.pk}/")
    progress = page.locator("[data-testid=run-progress]")
    expect(progress).to_have_attribute("data-status", "pending")

    services.process_run(run.pk, ocr=None)  # the "worker", while the page polls
    expect(progress).to_have_attribute("data-status", "done", timeout=10_000)
    expect(page.locator("[data-count=done]")).to_have_text("7")
    expect(page.locator("[data-count=quarantined]")).to_have_text("4")

    page.reload()
    expect(page.locator("#deid-findings-chart .main-svg").first).to_be_visible(timeout=10_000)
    assert problems == []
