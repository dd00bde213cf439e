"""Each role signs in through the real browser and sees only its own navigation."""

from __future__ import annotations

import pytest
from django_otp.oath import totp
from playwright.sync_api import Page, expect

from apps.core import navigation
from apps.core.roles import ALL_ROLES
from apps.core.testing import PASSWORD, mfa_required

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def sign_in(page: Page, base: str, user, device=None) -> None:
    page.goto(f"{base}/accounts/login/")
    page.fill("#id_username", user.username)
    page.fill("#id_password", PASSWORD)
    page.click("[data-testid=login-form] button[type=submit]")
    if device is not None:
        expect(page).to_have_url(f"{base}/accounts/mfa/?next=/")
        code = totp(device.bin_key, step=device.step, t0=device.t0, digits=device.digits)
        page.fill("#id_code", f"{code:06d}")
        page.click("[data-testid=mfa-form] button[type=submit]")
    expect(page).to_have_url(f"{base}/")


@pytest.mark.parametrize("role", sorted(ALL_ROLES))
def test_each_role_sees_only_its_navigation(role, cast, live_server, page: Page, artifacts):
    from django_otp.plugins.otp_totp.models import TOTPDevice

    user = cast[role]
    device = TOTPDevice.objects.get(user=user) if mfa_required(role) else None
    sign_in(page, live_server.url, user, device)

    shown = set(
        page.locator("[data-testid=nav] a").evaluate_all("els => els.map(e => e.dataset.nav)")
    )
    expected = {item.key for item in navigation.items_for(frozenset({role}))}
    assert shown == expected
    others = {item.key for item in navigation.all_items()} - expected
    for key in others:
        expect(page.locator(f"[data-nav={key}]")).to_have_count(0)
    page.screenshot(path=artifacts / f"home-{role}.png", full_page=True)


def test_the_language_switch_turns_the_page_chinese(cast, live_server, page: Page):
    sign_in(page, live_server.url, cast["clinician_reviewer"])
    page.select_option("#lang-select", "zh-hans")
    expect(page.locator("html")).to_have_attribute("lang", "zh-hans")
    expect(page.locator("h1")).to_have_text("概览")
