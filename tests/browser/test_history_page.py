"""The History page in Chromium: cards, a list that does not flicker, live updates, overlay, scroll, filters."""
from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page
from playwright.sync_api import expect

from history.models import Job

pytestmark = [pytest.mark.browser, pytest.mark.sqlite_only]

XSS = "<img src=x onerror=alert(1)>"
WAIT_MS = 10_000

# Counts the poller's requests from the page's side (added before any page script runs).
COUNTERS = """
window.__studio = {polls: 0, idle: 0, changed: 0};
document.addEventListener("htmx:after:request", function (event) {
  if (event.target.id !== "job-list") return;
  var status = event.detail.ctx.response.status;
  window.__studio.polls += 1;
  if (status === 204) window.__studio.idle += 1; else window.__studio.changed += 1;
});
"""

# Records every mutation inside #job-list except class changes on the poller itself (htmx-request).
OBSERVE = """
() => {
  window.__mutations = [];
  const list = document.getElementById("job-list");
  const observer = new MutationObserver((records) => {
    for (const record of records) {
      if (record.type === "attributes" && record.target === list && record.attributeName === "class") continue;
      window.__mutations.push(record.type + " " + (record.attributeName || "") + " " + (record.target.id || record.target.nodeName));
    }
  });
  observer.observe(list, {subtree: true, childList: true, attributes: true, characterData: true});
}
"""


@pytest.fixture
def history(page: Page, history_url):
    """Open the history page and wait until its first poll has come back unchanged (the list is settled)."""

    def open_page(query: str = ""):
        page.add_init_script(COUNTERS)
        page.goto(history_url + query)
        page.wait_for_function("() => window.__studio && window.__studio.idle >= 1", timeout=WAIT_MS)
        return page

    return open_page


def polls(page: Page) -> int:
    return page.evaluate("window.__studio.polls")


def wait_for_idle_polls(page: Page, count: int) -> None:
    start = page.evaluate("window.__studio.idle")
    page.wait_for_function(f"() => window.__studio.idle >= {start + count}", timeout=WAIT_MS)


def test_cards_and_their_parts(history, make_job):
    stalled = make_job(status="stalled", files=0, minutes_ago=3)
    make_job(status="error", files=1, minutes_ago=2)
    completed = make_job(status="completed", files=4, minutes_ago=1)
    page = history()
    cards = page.locator("#job-list .job-card")
    expect(cards).to_have_count(3)
    first = page.locator(f'.job-card[data-prompt-id="{completed.prompt_id}"]')
    expect(first.locator("input.job-select")).to_be_visible()
    expect(first.locator("img.job-thumb")).to_have_js_property("naturalWidth", 120)
    assert first.locator("img.job-thumb").bounding_box()["width"] == 60
    expect(first.locator(".thumb-count")).to_have_text("4")
    expect(first.locator(".job-id")).to_have_text(completed.prompt_id[:12])
    expect(first.locator(".job-duration")).to_have_text("40s")
    expect(first.locator(".status-badge")).to_have_text("completed")
    expect(first.locator(".retry-btn")).to_have_count(0)
    green = first.locator(".status-badge").evaluate("el => getComputedStyle(el).color")
    assert green == "rgb(68, 255, 136)"
    bisque = first.locator(".job-id").evaluate("el => getComputedStyle(el).color")
    assert bisque == "rgb(255, 228, 196)"
    columns = first.evaluate("el => getComputedStyle(el).gridTemplateColumns.split(' ').length")
    assert columns == 4
    last = page.locator(f'.job-card[data-prompt-id="{stalled.prompt_id}"]')
    expect(last.locator(".thumb-placeholder")).to_be_visible()
    expect(last.locator(".retry-btn")).to_be_visible()
    assert last.locator(".status-badge").evaluate("el => getComputedStyle(el).color") == "rgb(255, 210, 63)"
    queued = last.locator("time.job-queued")
    assert queued.get_attribute("datetime") == stalled.queued_at.isoformat()
    assert queued.get_attribute("title").startswith("Queued 2026-")


def test_idle_polls_change_nothing_in_the_list(history, make_job):
    for minutes in range(12):
        make_job(status=("completed", "error", "stalled")[minutes % 3], files=1, minutes_ago=minutes)
    page = history()
    polls_seen = []
    page.on("response", lambda response: polls_seen.append(response) if "/admin/history/list" in response.url else None)
    page.evaluate(OBSERVE)
    wait_for_idle_polls(page, 4)
    assert page.evaluate("window.__mutations") == []
    assert page.evaluate("window.__studio.changed") <= 1  # at most the time-zone refresh of the first load
    # On the wire: each poll sends the ETag the list shows and gets an empty 204.
    etag = page.locator("#job-list").get_attribute("data-list-etag")
    assert len(polls_seen) >= 4
    for response in polls_seen:
        assert response.request.headers["x-list-etag"] == etag
        assert response.status == 204
        assert response.body() == b""


def test_a_new_job_appears_within_one_poll(history, make_job):
    page = history()
    expect(page.locator("#job-list .empty-state h2")).to_have_text("No jobs yet")
    first = make_job(minutes_ago=30)
    expect(page.locator("#job-list .job-card")).to_have_attribute("data-prompt-id", first.prompt_id, timeout=WAIT_MS)
    expect(page.locator("#job-list .empty-state")).to_have_count(0)
    before = polls(page)
    fresh = make_job(minutes_ago=0, files=1)
    expect(page.locator("#job-list .job-card").first).to_have_attribute("data-prompt-id", fresh.prompt_id, timeout=WAIT_MS)
    assert polls(page) - before <= 2  # the poll in flight at the insert, then the one that shows it


def test_checks_focus_and_scroll_survive_new_jobs(history, make_job):
    jobs = [make_job(files=0, minutes_ago=minutes + 10) for minutes in range(30)]
    page = history()
    anchor = page.locator(f"#job-{jobs[15].prompt_id}")
    anchor.scroll_into_view_if_needed()
    page.evaluate("(id) => document.getElementById(id).scrollIntoView({block: 'start'})", f"job-{jobs[15].prompt_id}")
    box = page.locator(f"#select-{jobs[16].prompt_id}")
    box.check()
    box.focus()
    top_before = anchor.bounding_box()["y"]
    node_before = anchor.evaluate("el => (window.__anchor = el, true)")
    fresh = [make_job(files=0, minutes_ago=minutes) for minutes in range(3)]
    expect(page.locator("#job-list .job-card").first).to_have_attribute("data-prompt-id", fresh[0].prompt_id, timeout=WAIT_MS)
    expect(page.locator("#job-list .job-card")).to_have_count(33)
    assert node_before and anchor.evaluate("el => el === window.__anchor")  # the same node, morphed in place
    expect(box).to_be_checked()
    expect(box).to_be_focused()
    assert abs(anchor.bounding_box()["y"] - top_before) < 2  # what the reader looked at did not move


def test_status_change_rerenders_the_card_and_keeps_checks_and_overlay(history, make_job, db):
    changing = make_job(status="completed", minutes_ago=1)
    checked = make_job(status="completed", minutes_ago=2)
    opened = make_job(status="error", minutes_ago=3)
    page = history()
    page.locator(f"#select-{checked.prompt_id}").check()
    page.locator(f"#job-{opened.prompt_id} .job-excerpt").click()
    expect(page.locator("#job-overlay")).to_be_visible()
    Job.update(status="error", error="boom").where(Job.prompt_id == changing.prompt_id).execute()
    card = page.locator(f"#job-{changing.prompt_id}")
    expect(card).to_have_attribute("data-status", "error", timeout=WAIT_MS)
    expect(card.locator(".status-badge")).to_have_text("error")
    expect(card.locator(".retry-btn")).to_have_count(1)
    expect(page.locator(f"#select-{checked.prompt_id}")).to_be_checked()
    expect(page.locator("#job-overlay")).to_be_visible()
    assert page.locator("#job-overlay").evaluate("el => el.matches(':modal')")
    assert page.locator("#job-overlay").get_attribute("data-prompt-id") == opened.prompt_id


def test_overlay_fields_url_and_escape(history, make_job, settings):
    from tests.conftest import write_image

    write_image(settings.input_dir / "face.png")
    job = make_job(
        status="error",
        files=2,
        input_image="face.png",
        params={"positive_prompt": "first line\n   second line", "seed": -1},
        seeds={"seed": 4242},
    )
    page = history()
    page.locator(f"#job-{job.prompt_id} .job-excerpt").click()
    overlay = page.locator("#job-overlay")
    expect(overlay).to_be_visible()
    expect(page).to_have_url(re.compile(f"/admin/history/jobs/{job.prompt_id}$"))
    expect(overlay.locator("[data-field=prompt_id] code")).to_have_text(job.prompt_id)
    expect(overlay.locator("[data-field=workflow_id] dd")).to_have_text(job.workflow_id)
    expect(overlay.locator("[data-field=status] dd")).to_have_text("error")
    expect(overlay.locator("[data-field=duration] dd")).to_have_text("40s")
    expect(overlay.locator("[data-field=error] dd")).to_contain_text("out of memory")
    expect(overlay.locator("[data-param=seed] td")).to_have_text("-1 (used 4242)")
    prompt = overlay.locator("[data-param=positive_prompt] pre.prompt-text")
    assert prompt.evaluate("el => getComputedStyle(el).whiteSpace") == "pre-wrap"
    assert prompt.inner_text() == "first line\n   second line"
    expect(overlay.locator(".output-gallery img")).to_have_count(2)
    expect(overlay.locator("a.view-in-assets")).to_have_attribute("href", f"/admin/assets?dir={job.output_dir}")
    expect(overlay.locator(".overlay-close")).to_be_focused()
    # The input image: a small preview on hover, the full image on a click; Esc closes that view first.
    image_link = overlay.locator("a.input-image-link")
    expect(overlay.locator(".input-preview")).to_be_hidden()
    image_link.hover()
    expect(overlay.locator(".input-preview img")).to_be_visible()
    image_link.click()
    viewer = page.locator("#image-viewer")
    expect(viewer).to_be_visible()
    expect(viewer.locator("img")).to_have_js_property("naturalWidth", 256)
    page.keyboard.press("Escape")
    expect(viewer).to_be_hidden()
    expect(overlay).to_be_visible()
    page.keyboard.press("Escape")
    expect(overlay).to_have_count(0)
    expect(page).to_have_url(re.compile(r"/admin/history$"))
    expect(page.locator(f"#job-{job.prompt_id} .job-open")).to_be_focused()


def test_overlay_closes_on_its_button_and_the_backdrop_and_has_its_own_url(history, make_job, history_url):
    job = make_job()
    page = history()
    page.locator(f"#job-{job.prompt_id} .job-excerpt").click()
    expect(page.locator("#job-overlay")).to_be_visible()
    page.locator(".overlay-close").click()
    expect(page.locator("#job-overlay")).to_have_count(0)
    page.locator(f"#job-{job.prompt_id} .job-excerpt").click()
    expect(page.locator("#job-overlay")).to_be_visible()
    page.mouse.click(5, 300)  # outside the panel: the backdrop
    expect(page.locator("#job-overlay")).to_have_count(0)
    # Back closes an overlay and Forward opens it again, without reloading the page.
    page.evaluate("() => { window.__samePage = true; }")
    page.locator(f"#job-{job.prompt_id} .job-excerpt").click()
    expect(page).to_have_url(re.compile(f"/jobs/{job.prompt_id}$"))
    page.go_back()
    expect(page.locator("#job-overlay")).to_have_count(0)
    expect(page).to_have_url(re.compile(r"/admin/history$"))
    page.go_forward()
    expect(page.locator("#job-overlay")).to_be_visible()
    assert page.evaluate("() => window.__samePage === true")
    page.keyboard.press("Escape")
    expect(page.locator("#job-overlay")).to_have_count(0)
    page.goto(f"{history_url}/jobs/{job.prompt_id}")
    expect(page.locator("#job-overlay")).to_be_visible()
    assert page.locator("#job-overlay").evaluate("el => el.matches(':modal')")
    page.keyboard.press("Escape")
    expect(page).to_have_url(re.compile(r"/admin/history$"))


def test_copy_button_copies_the_prompt_from_the_dom(history, make_job, context):
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    job = make_job(params={"positive_prompt": "copy \"me\" <b>exactly</b>"})
    page = history()
    page.locator(f"#job-{job.prompt_id} .job-excerpt").click()
    page.locator("[data-param=positive_prompt] .copy-btn").click()
    expect(page.locator("[data-param=positive_prompt] .copy-btn")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == 'copy "me" <b>exactly</b>'


def test_xss_prompt_stays_text(history, make_job):
    job = make_job(status="error", workflow_name=XSS, error=XSS, params={"positive_prompt": XSS, "other": {"x": XSS}})
    page = history()
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    card = page.locator(f"#job-{job.prompt_id}")
    expect(card.locator(".job-excerpt")).to_have_text(XSS)
    expect(card.locator(".job-workflow")).to_have_text(XSS)
    card.locator(".job-excerpt").click()
    expect(page.locator("[data-param=positive_prompt] pre")).to_have_text(XSS)
    wait_for_idle_polls(page, 1)
    assert page.locator("img[src=x]").count() == 0
    assert dialogs == []


def load_next_page(page: Page) -> bool:
    """Scroll the list's sentinel into view and wait for its page to arrive; False when there is none."""
    count = page.locator(".job-card").count()
    present = page.evaluate(
        "() => { const s = document.querySelector('.list-sentinel'); if (s) s.scrollIntoView(); return !!s; }"
    )
    if present:
        page.wait_for_function(
            f"() => document.querySelectorAll('.job-card').length > {count} || !document.querySelector('.list-sentinel')",
            timeout=WAIT_MS,
        )
    return present


def test_infinite_scroll_reaches_job_200_of_250(history, make_job, db):
    jobs = [make_job(files=0, minutes_ago=minutes) for minutes in range(250)]
    page = history()
    target = page.locator(f"#job-{jobs[199].prompt_id}")
    while not target.count() and load_next_page(page):
        pass
    target.scroll_into_view_if_needed()
    expect(target).to_be_visible()
    ids = page.eval_on_selector_all(".job-card", "cards => cards.map(card => card.dataset.promptId)")
    assert ids[:200] == [job.prompt_id for job in jobs[:200]]
    assert len(ids) == len(set(ids))
    # Load the rest; then a job arriving joins the top, and every loaded card stays, none twice, none skipped.
    while load_next_page(page):
        pass
    ids = page.eval_on_selector_all(".job-card", "cards => cards.map(card => card.dataset.promptId)")
    assert ids == [job.prompt_id for job in jobs]
    target.scroll_into_view_if_needed()
    fresh = make_job(files=0, minutes_ago=-1)
    expect(page.locator("#job-list .job-card").first).to_have_attribute("data-prompt-id", fresh.prompt_id, timeout=WAIT_MS)
    after = page.eval_on_selector_all(".job-card", "cards => cards.map(card => card.dataset.promptId)")
    assert after == [fresh.prompt_id] + ids
    expect(target).to_be_in_viewport()


def test_filters_change_the_url_and_the_list(history, make_job):
    failed = make_job(status="error", minutes_ago=1, params={"positive_prompt": "a broken bridge"})
    make_job(status="completed", minutes_ago=2, params={"positive_prompt": "a calm lake"})
    stalled = make_job(status="stalled", minutes_ago=3, params={"positive_prompt": "a broken clock"})
    page = history()
    expect(page.locator(".clear-filters")).to_be_hidden()
    page.locator("input[name=status][value=error]").check()
    expect(page).to_have_url(re.compile(r"status=error"))
    expect(page.locator(".clear-filters")).to_be_visible()
    expect(page.locator("#job-list .job-card")).to_have_count(1)
    expect(page.locator("#job-list .job-card")).to_have_attribute("data-prompt-id", failed.prompt_id)
    page.locator("input[name=status][value=error]").uncheck()
    page.locator("input[name=q]").fill("broken")
    expect(page).to_have_url(re.compile(r"q=broken"))
    expect(page.locator("#job-list .job-card")).to_have_count(2)
    ids = page.eval_on_selector_all("#job-list .job-card", "cards => cards.map(card => card.dataset.promptId)")
    assert ids == [failed.prompt_id, stalled.prompt_id]
    page.reload()
    expect(page.locator("input[name=q]")).to_have_value("broken")
    expect(page.locator("#job-list .job-card")).to_have_count(2)


@pytest.mark.parametrize("poll_seconds", ["60"])
def test_websocket_job_events_refresh_the_list_at_once(page: Page, history_url, make_job, app):
    """With a poll a minute away, a job.completed event alone brings the new job in."""
    make_job(minutes_ago=10)
    page.add_init_script(COUNTERS)
    page.goto(history_url)
    expect(page.locator("#live-indicator")).to_have_class(re.compile(r"\bhas-events\b"), timeout=WAIT_MS)
    fresh = make_job(minutes_ago=0)
    app.extensions["studio"].bus.publish("job.completed", fresh.to_dict())
    expect(page.locator("#job-list .job-card").first).to_have_attribute("data-prompt-id", fresh.prompt_id, timeout=3_000)
    assert page.evaluate("window.__studio.polls") == 1  # the refresh the event asked for, no timed poll
    Job.update(status="error").where(Job.prompt_id == fresh.prompt_id).execute()
    app.extensions["studio"].bus.publish("job.progress", {"prompt_id": fresh.prompt_id})
    app.extensions["studio"].bus.publish("job.failed", fresh.to_dict())
    expect(page.locator(f"#job-{fresh.prompt_id}")).to_have_attribute("data-status", "error", timeout=3_000)


def test_live_indicator_refreshes_now_and_shows_failures_without_emptying_the_list(history, make_job, monkeypatch):
    from history import changes
    from history import jobs

    make_job()
    page = history()
    indicator = page.locator("#live-indicator")
    expect(indicator).to_have_class(re.compile(r"\bis-counting\b"))
    before = polls(page)
    indicator.click()
    page.wait_for_function(f"() => window.__studio.polls > {before}", timeout=WAIT_MS)

    def broken(*args, **kwargs):
        raise RuntimeError("database is away")

    monkeypatch.setattr(jobs, "list_etag", broken)
    # A store that cannot be read cannot say whether it changed either: every poll asks it again.
    monkeypatch.setattr(changes.StoreChanges, "token", lambda self: None)
    expect(indicator).to_have_class(re.compile(r"\bis-failing\b"), timeout=WAIT_MS)
    expect(indicator.locator(".live-status")).to_contain_text("500")
    expect(page.locator("#job-list .job-card")).to_have_count(1)
    monkeypatch.undo()
    expect(indicator).not_to_have_class(re.compile(r"\bis-failing\b"), timeout=WAIT_MS)
    expect(page.locator("#job-list .job-card")).to_have_count(1)


def test_polling_pauses_while_the_tab_is_hidden(history, make_job):
    make_job()
    page = history()
    page.evaluate(
        """() => {
        Object.defineProperty(document, "hidden", {configurable: true, get: () => true});
        Object.defineProperty(document, "visibilityState", {configurable: true, get: () => "hidden"});
        document.dispatchEvent(new Event("visibilitychange"));
        window.__requestsWhileHidden = 0;
        window.__ticksWhileHidden = 0;
        document.addEventListener("htmx:before:request", (event) => {
          if (event.target.id === "job-list") window.__requestsWhileHidden += 1;
        });
        document.addEventListener("htmx:config:request", (event) => {
          if (event.target.id === "job-list" && event.detail.ctx.sourceEvent.type === "every") window.__ticksWhileHidden += 1;
        });
    }"""
    )
    expect(page.locator("#live-indicator")).to_have_class(re.compile(r"\bis-paused\b"))
    page.wait_for_function("() => window.__ticksWhileHidden >= 3", timeout=WAIT_MS)  # three intervals went by
    assert page.evaluate("window.__requestsWhileHidden") == 0
    page.evaluate(
        """() => {
        delete document.hidden;
        delete document.visibilityState;
        document.dispatchEvent(new Event("visibilitychange"));
    }"""
    )
    page.wait_for_function("() => window.__requestsWhileHidden >= 1", timeout=WAIT_MS)
    expect(page.locator("#live-indicator")).not_to_have_class(re.compile(r"\bis-paused\b"))


def test_times_render_in_the_browsers_time_zone(browser, history_url, make_job):
    import datetime

    job = make_job(queued_at=datetime.datetime(2026, 11, 28, 12, 0, 0, tzinfo=datetime.timezone.utc))
    context = browser.new_context(timezone_id="Asia/Tokyo")
    try:
        page = context.new_page()
        page.goto(history_url)
        expect(page.locator(f"#job-{job.prompt_id} time.job-queued")).to_have_text("21:00:00", timeout=WAIT_MS)
        page.reload()
        expect(page.locator(f"#job-{job.prompt_id} time.job-queued")).to_have_text("21:00:00")
    finally:
        context.close()
