"""The Queue page in Chromium: a running job's progress moves and the job leaves the page when it ends."""
from __future__ import annotations

import pytest
from playwright.sync_api import Page
from playwright.sync_api import expect

from history.models import utcnow

pytestmark = [pytest.mark.browser, pytest.mark.sqlite_only]

WAIT_MS = 8_000  # the list polls every 2 s


def test_progress_updates_and_an_ended_job_leaves(page: Page, live_server, app, make_job):
    runner = app.extensions["studio"].runner
    running = make_job(status="running", files=0)
    waiting = make_job(status="queued", files=0)
    runner.follow(running.prompt_id, running=True)
    runner.progress(running.prompt_id, "1", 1, 3)

    page.goto(live_server.url + "/admin/queue")
    row = page.locator(f'.queue-job[data-prompt-id="{running.prompt_id}"]')
    expect(row.locator(".progress-text")).to_have_text("node #1 · 1/3")
    expect(page.locator(f'.queue-job[data-prompt-id="{waiting.prompt_id}"] .progress-text')).to_have_text("waiting")

    runner.progress(running.prompt_id, "2", 2, 3)
    expect(row.locator(".progress-text")).to_have_text("node #2 · 2/3", timeout=WAIT_MS)

    runner.completed(running.prompt_id, [], utcnow())
    expect(row).to_have_count(0, timeout=WAIT_MS)
    expect(page.locator(".queue-job")).to_have_count(1)
