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


def test_a_privacy_officer_records_a_consent_withdrawal_from_the_patient_report(
    built, cast, live_server, page: Page
):
    from django_otp.plugins.otp_totp.models import TOTPDevice

    from apps.datasets.models import ConsentReinstatement, ConsentWithdrawal

    officer = cast["privacy_officer"]
    sign_in(page, live_server.url, officer, TOTPDevice.objects.get(user=officer))
    page.goto(f"{live_server.url}/datasets/lineage/")
    page.fill("#id_q", "P-BBBB")
    page.select_option("#id_kind", "patient")
    page.click("form[action='/datasets/lineage/'] button[type=submit]")
    form = page.locator("[data-testid=withdraw-form]")
    expect(form).to_be_visible()
    # Unticked, the browser itself keeps the form from being sent.
    form.locator("input[name=reference]").fill("DPO-2026-041")
    form.locator("[data-testid=withdraw]").click()
    assert not ConsentWithdrawal.objects.exists()
    form.locator("input[name=confirm]").check()
    form.locator("[data-testid=withdraw]").click()
    expect(page.locator("[data-testid=withdrawn]")).to_contain_text("case DPO-2026-041")
    expect(page.locator("[data-testid=withdraw-form]")).to_have_count(0)
    assert ConsentWithdrawal.objects.get().patient_pseudonym == "P-BBBB"
    page.goto(f"{live_server.url}/datasets/{built.pk}/")
    expect(page.locator("[data-testid=withdrawn-samples]")).to_contain_text("1 sample")

    # The patient consents again: recorded from the same report, the flag goes away.
    page.goto(f"{live_server.url}/datasets/lineage/?q=P-BBBB&kind=patient")
    page.locator("[data-testid=reinstate] summary").click()
    again = page.locator("[data-testid=reinstate-form]")
    again.locator("input[name=confirm]").check()
    again.locator("[data-testid=reinstate-submit]").click()  # no case number: the browser stops it
    assert not ConsentReinstatement.objects.exists()
    again.locator("input[name=reference]").fill("DPO-2026-052")
    again.locator("[data-testid=reinstate-submit]").click()
    expect(page.locator("[data-testid=consent-history]")).to_contain_text("case DPO-2026-052")
    expect(page.locator("[data-testid=withdrawn]")).to_have_count(0)
    expect(page.locator("[data-testid=withdraw-form]")).to_be_visible()
    page.goto(f"{live_server.url}/datasets/{built.pk}/")
    expect(page.locator("h1")).to_be_visible()
    expect(page.locator("[data-testid=withdrawn-samples]")).to_have_count(0)
