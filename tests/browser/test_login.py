"""With a password, in Chromium: the login form, htmx posting on fetch metadata alone, and a lost session sending the
poller back to the login page (401 + HX-Redirect)."""
from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page
from playwright.sync_api import expect

pytestmark = [pytest.mark.browser, pytest.mark.sqlite_only]

PASSWORD = "correct horse battery staple"
WAIT_MS = 10_000


@pytest.fixture
def app_config(app_config):
    return {**app_config, "STUDIO_ADMIN_PASSWORD": PASSWORD}


def test_login_then_htmx_posts_then_an_expired_session_goes_back_to_login(page: Page, live_server, make_job):
    failed = make_job(status="error", files=1)
    page.goto(live_server.url + "/admin/history?status=error")
    expect(page).to_have_url(re.compile(r"/login\?next="))
    page.fill('input[name="password"]', "wrong")
    page.click('form.login-form button[type="submit"]')
    expect(page.locator(".login-error")).to_have_text("Wrong password.")
    page.fill('input[name="password"]', PASSWORD)
    page.click('form.login-form button[type="submit"]')
    expect(page).to_have_url(live_server.url + "/admin/history?status=error")
    card = page.locator(f'.job-card[data-prompt-id="{failed.prompt_id}"]')
    expect(card).to_be_visible()

    # An htmx POST (Retry) gets through on the browser's own fetch metadata: no token anywhere.
    with page.expect_response(lambda response: response.url.endswith("/retry")) as retried:
        card.locator(".retry-btn").click()
    assert retried.value.status == 200, retried.value.text()
    assert retried.value.request.all_headers()["sec-fetch-site"] == "same-origin"

    # The session goes (expired, or logged out elsewhere): the next poll answers 401 with HX-Redirect.
    page.context.clear_cookies()
    # Every poll in flight comes back 401 with HX-Redirect: a second redirect may abort the first navigation,
    # so the URL is awaited (as a person would see it), not the first navigation's load.
    expect(page).to_have_url(re.compile(r"/login\?next=%2Fadmin%2Fhistory%3Fstatus%3Derror|/login\?next=/admin/history"), timeout=WAIT_MS)
    expect(page.locator('input[name="password"]')).to_be_visible()


def test_logout_from_the_page(page: Page, live_server):
    page.goto(live_server.url + "/login")
    page.fill('input[name="password"]', PASSWORD)
    page.click('form.login-form button[type="submit"]')
    expect(page).to_have_url(live_server.url + "/admin/history")
    page.click("form.logout-form button")
    # The login page: straight from the logout's redirect, or with ?next= when a list poll already in flight
    # comes back 401 and its HX-Redirect wins the race (both leave the person logged out on the login form).
    expect(page).to_have_url(re.compile(re.escape(live_server.url) + r"/login(\?next=/admin/history)?$"))
    expect(page.locator('input[name="password"]')).to_be_visible()
    page.goto(live_server.url + "/admin/history")
    expect(page).to_have_url(re.compile(r"/login\?next="))
