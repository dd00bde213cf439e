"""In a real browser: the verify button queues a re-hash, and the panel follows it to the
result without a reload."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import browser_type_launch_args  # noqa: F401 - Debian chromium
from tests.browser.test_navigation import sign_in

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_the_verify_button_follows_the_queued_check_to_its_result(
    built, cast, live_server, page: Page, settings
):
    settings.CELERY_TASK_ALWAYS_EAGER = True  # the worker's task runs as the request commits
    sign_in(page, live_server.url, cast["data_steward"])
    page.goto(f"{live_server.url}/datasets/{built.pk}/")
    expect(page.locator("[data-verify=never]")).to_be_visible()
    page.click("[data-testid=verify]")
    # The POST answers with the queued check; the panel's own polling brings the verdict.
    expect(page.locator("[data-verify=ok]")).to_contain_text(
        f"all {1 + 2 * built.shard_count} files match the manifest", timeout=15000
    )
    expect(page.locator("#verify-result[hx-get]")).to_have_count(0)  # done: polling stopped
