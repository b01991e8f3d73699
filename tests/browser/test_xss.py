"""XSS payloads in every user-controlled field, rendered in Chromium: no script runs, no dialog opens.

Prompts, scene prompts, negative prompts, params keys and values (nested too), workflow names, error
messages, output file names and the input image name all carry payloads; the history list, the overlay
(opened by a click through htmx and by its own URL), the assets page, the queue page and a search that
reflects the payload are all rendered. Each page runs twice: with the app's CSP, and with the CSP header
stripped on the way to the browser, so that it is the escaping (not only the policy) that holds. A page
under the CSP must also raise no violation report at all (no inline style or script of our own).
"""
from __future__ import annotations

import datetime
from urllib.parse import quote

import pytest
from playwright.sync_api import Page
from playwright.sync_api import expect

from tests.conftest import write_image

pytestmark = [pytest.mark.browser, pytest.mark.sqlite_only]

WAIT_MS = 10_000
PAYLOADS = [
    '<img src=x onerror="window.__xss.push(1);alert(1)">',
    "<script>window.__xss.push(2);alert(2)</script>",
    '"><svg onload="window.__xss.push(3);alert(3)">',
    "'><iframe srcdoc=\"<script>parent.__xss.push(4);parent.alert(4)</script>\"></iframe>",
    '<a href="javascript:window.__xss.push(5)" id="xss-link">click me</a>',
    '<div hx-get="/api/admin/history" hx-trigger="load" hx-on:htmx:after:request="window.__xss.push(6)">htmx</div>',
    "</pre></textarea></title><b onmouseover=window.__xss.push(7) id=xss-hover>hover</b>",
    "{{ 7*7 }}{% print 'ssti' %}${alert(8)}",
    "javascript:window.__xss.push(9)",
    "<style>body{display:none}</style><link rel=stylesheet href=//evil.test/x.css>",
    "\u202e<img src=x onerror=window.__xss.push(10)>\x00after-nul",
]
# File names cannot hold "/", so these payloads do without closing tags.
FILE_PAYLOADS = ['<img src=x onerror="window.__xss.push(21)">.png', '"><svg onload=window.__xss.push(22)>.png']

WATCH = """
window.__xss = [];
window.__violations = [];
document.addEventListener("securitypolicyviolation", function (event) {
  window.__violations.push(event.violatedDirective + " " + (event.blockedURI || "") + " " + (event.sample || ""));
});
"""

INJECTED = """() => Array.from(document.querySelectorAll(
  '[onerror], [onload], [onmouseover], iframe, svg, #xss-link, #xss-hover, [hx-trigger="load"], style:not([data-htmx]), link[href*="evil"], script:not([src])'
)).map(e => e.outerHTML.slice(0, 120))"""


@pytest.fixture
def hostile_jobs(make_job, settings):
    """Jobs whose every user-controlled field carries payloads, with real files under payload names.

    Each job holds every payload in its params (as keys and as values, nested, in scenes) and in its
    error; its workflow name and prompts take one payload each, so the cards show them all between them.
    """
    jobs = []
    base = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    everything = {payload: payload for payload in PAYLOADS}
    for index in range(3):
        output_dir = f"20261128_12000{index}_xss"
        refs = []
        for number, name in enumerate(FILE_PAYLOADS + ["final_00001_.png"]):
            write_image(settings.output_dir / "comfyui-studio" / output_dir / name, size=(32, 32), color=(200, 40 * number, 90))
            refs.append({"filename": name, "subfolder": f"comfyui-studio/{output_dir}", "type": "output"})
        input_name = FILE_PAYLOADS[index % 2]
        write_image(settings.input_dir / input_name, size=(32, 32))
        jobs.append(make_job(
            status=["completed", "error", "stalled"][index],
            queued_at=base - datetime.timedelta(seconds=index),
            output_dir=output_dir,
            outputs=refs,
            workflow_name=PAYLOADS[index],
            error=" | ".join(PAYLOADS) if index else None,
            input_image=input_name,
            params={
                "positive_prompt": PAYLOADS[index + 3],
                "negative_prompt": PAYLOADS[index + 6],
                **everything,
                "nested": {"list": PAYLOADS, "object": everything},
                "scenes": [{"prompt": payload, "duration": payload, "seed": -1} for payload in PAYLOADS],
                "seed": PAYLOADS[index],
                "input_image": input_name,
            },
            seeds={"seed": PAYLOADS[index]},
        ))
    queued = make_job(status="queued", files=0, workflow_name=PAYLOADS[0], params={"positive_prompt": PAYLOADS[1], **everything})
    running = make_job(status="running", files=0, workflow_name=PAYLOADS[2], params={"positive_prompt": PAYLOADS[0]})
    return jobs, [queued, running]


def without_csp(page: Page) -> None:
    """Strip the CSP header from every response on its way to the browser (to test the escaping alone)."""

    def strip(route):
        response = route.fetch()
        headers = {k: v for k, v in response.headers.items() if k.lower() != "content-security-policy"}
        route.fulfill(response=response, headers=headers)

    page.route("**/*", strip)


def assert_inert(page: Page, dialogs: list, where: str, csp: bool) -> None:
    """Nothing ran, nothing opened, nothing of a payload became an element; with the CSP, no violation either."""
    page.wait_for_timeout(0)
    assert dialogs == [], where
    assert page.evaluate("window.__xss") == [], where
    assert page.evaluate(INJECTED) == [], where
    if csp:
        assert page.evaluate("window.__violations") == [], where


@pytest.mark.parametrize("csp", [True, False], ids=["with-csp", "csp-stripped"])
def test_payloads_stay_text_everywhere(page: Page, live_server, hostile_jobs, csp):
    jobs, active = hostile_jobs
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.add_init_script(WATCH)
    if not csp:
        without_csp(page)
    base = live_server.url

    # The list: every card, each excerpt shows the payload as text.
    page.goto(base + "/admin/history")
    expect(page.locator("#job-list .job-card")).to_have_count(len(jobs))
    expect(page.locator(f'.job-card[data-prompt-id="{jobs[0].prompt_id}"] .job-workflow')).to_contain_text("<img src=x")
    expect(page.locator(f'.job-card[data-prompt-id="{jobs[0].prompt_id}"] .job-excerpt')).to_contain_text('<iframe srcdoc="<script>')
    page.hover(f'.job-card[data-prompt-id="{jobs[2].prompt_id}"]')
    assert_inert(page, dialogs, "history list", csp)

    # The overlay through htmx (a click on a card), then each job's overlay by its own URL.
    page.click(f'.job-card[data-prompt-id="{jobs[0].prompt_id}"] .job-excerpt')
    expect(page.locator("#job-overlay")).to_be_visible(timeout=WAIT_MS)
    expect(page.locator("#job-overlay .params-table")).to_contain_text('<img src=x onerror="window.__xss.push(1)')
    assert_inert(page, dialogs, "overlay via htmx", csp)
    for job in jobs:
        page.goto(f"{base}/admin/history/jobs/{job.prompt_id}")
        expect(page.locator("#job-overlay .params-table")).to_be_visible()
        for hoverable in page.locator("#job-overlay .params-table pre").all()[:4]:
            hoverable.hover()
        assert_inert(page, dialogs, f"overlay {job.prompt_id}", csp)
        if job.error:
            expect(page.locator("#job-overlay")).to_contain_text(job.error[:40])

    # Assets: file names that are payloads.
    page.goto(f"{base}/admin/assets?dir={quote(jobs[0].output_dir)}")
    expect(page.locator("body")).to_contain_text("onerror")
    assert_inert(page, dialogs, "assets", csp)

    # Queue: queued and running jobs with payloads.
    page.goto(base + "/admin/queue")
    expect(page.locator("body")).to_contain_text("<svg onload")
    assert_inert(page, dialogs, "queue", csp)

    # A search that reflects the payload into the search box and the page.
    for payload in PAYLOADS[:4]:
        page.goto(f"{base}/admin/history?q={quote(payload.replace(chr(0), ''))}")
        expect(page.locator('input[name="q"]')).to_have_value(payload.replace("\x00", "")[:200])
        assert_inert(page, dialogs, f"search {payload[:20]}", csp)

    # The login page with a hostile next.
    page.goto(f"{base}/login?next={quote(PAYLOADS[4])}")
    assert_inert(page, dialogs, "login", csp)


def test_the_pages_raise_no_csp_violation_and_htmx_still_works(page: Page, live_server, make_job):
    """Under the strict policy the pages load, poll and open the overlay with zero violation reports."""
    job = make_job()
    page.add_init_script(WATCH)
    failed = []
    page.on("console", lambda message: failed.append(message.text) if "Content Security Policy" in message.text else None)
    for path in ("/admin/history", "/admin/queue", f"/admin/assets?dir={job.output_dir}", "/login"):
        response = page.goto(live_server.url + path)
        assert "script-src 'self'" in response.headers["content-security-policy"]
        page.wait_for_load_state("networkidle") if path == "/login" else None
        assert page.evaluate("window.__violations") == [], path
    page.goto(live_server.url + "/admin/history")
    page.click(f'.job-card[data-prompt-id="{job.prompt_id}"] .job-excerpt')
    expect(page.locator("#job-overlay")).to_be_visible(timeout=WAIT_MS)
    # htmx's own indicator stylesheet is off (the app's CSS carries the rules), and htmx ran requests.
    assert page.evaluate("htmx.config.includeIndicatorCSS") is False
    assert page.evaluate("window.__violations") == []
    assert failed == []


def test_the_detector_sees_a_payload_that_runs(page: Page, live_server):
    """The checks above can fail: a page that does render a payload as HTML is caught by each of them."""
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.add_init_script(WATCH)
    page.route(live_server.url + "/broken", lambda route: route.fulfill(
        status=200, content_type="text/html", body=f"<!doctype html><p>{PAYLOADS[0]}</p>"))
    page.goto(live_server.url + "/broken")
    page.wait_for_function("() => window.__xss.length > 0", timeout=WAIT_MS)
    assert dialogs == ["1"]
    assert page.evaluate(INJECTED)
    with pytest.raises(AssertionError):
        assert_inert(page, dialogs, "broken", csp=False)
