"""The Queue page in Chromium: a running job's progress moves and the job leaves the page when it ends."""
from __future__ import annotations

import pytest
from playwright.sync_api import Page
from playwright.sync_api import expect

from history.models import utcnow
from tests.conftest import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.sqlite_only]

WAIT_MS = 8_000  # the list polls every 2 s

# Counts the list's swaps (polls or refreshes), from the page's side.
SWAPS = """
window.__queueSwaps = 0;
document.addEventListener("htmx:after:swap", function () { window.__queueSwaps += 1; });
"""


def wait_for_websocket(app) -> None:
    wait_for(lambda: app.extensions["studio"].bus.subscriber_count >= 1, 5, "the page opening its websocket")


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


def test_websocket_progress_moves_the_bar_without_a_request(page: Page, live_server, app, make_job):
    runner = app.extensions["studio"].runner
    running = make_job(status="running", files=0)
    runner.follow(running.prompt_id, running=True)
    page.add_init_script(SWAPS)
    page.goto(live_server.url + "/admin/queue")
    wait_for_websocket(app)
    # Right after a poll, so the next one is about 2 s away.
    swaps = page.evaluate("() => window.__queueSwaps")
    page.wait_for_function(f"() => window.__queueSwaps > {swaps}", timeout=WAIT_MS)
    swaps = page.evaluate("() => window.__queueSwaps")
    requests = []
    page.on("request", lambda request: requests.append(request.url))

    runner.progress(running.prompt_id, "3", 2, 5)
    bar = page.locator(f'.queue-job[data-prompt-id="{running.prompt_id}"] progress')
    expect(bar).to_have_attribute("max", "5", timeout=1000)
    assert page.evaluate("() => [document.querySelector('.queue-job progress').value, window.__queueSwaps]") == [2, swaps]
    assert not [url for url in requests if "/admin/queue" in url]

    runner.started(make_job(status="queued", files=0).prompt_id, utcnow())  # job.started refreshes the list
    expect(page.locator(".queue-job")).to_have_count(2, timeout=1000)
