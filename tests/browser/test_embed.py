"""Embedding in Chromium (issue 8): the studio mounted under /studio in a host Flask app, and its compact
list on a page of another loopback port, live; an origin outside STUDIO_EMBED_ORIGINS is refused."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from flask import Flask
from flask import url_for
from playwright.sync_api import Page
from playwright.sync_api import expect
from werkzeug.wrappers import Response

import history
from history.db import database
from tests.conftest import LiveServer

pytestmark = [pytest.mark.browser, pytest.mark.sqlite_only]

WAIT_MS = 10_000
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "embed.html"
EXAMPLE_STUDIO = "http://127.0.0.1:5000"  # the studio address written in examples/embed.html

# Run one small job of the built-in executor from the page: a same-origin POST passes the cross-origin check.
RUN_JOB = """
async (url) => {
  const response = await fetch(url, {
    method: "POST",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify({params: {width: 64, height: 64, seed: 7}}),
  });
  return [response.status, await response.json()];
}
"""
COUNT_ERRORS = """
window.__embed = {errors: 0, lists: 0};
document.addEventListener("htmx:error", () => { window.__embed.errors += 1; });
document.addEventListener("htmx:after:request", (event) => {
  if (event.detail.ctx.response && event.detail.ctx.response.status < 300) window.__embed.lists += 1;
});
"""


class ExampleSite:
    """Another site: a tiny WSGI app on its own port that serves examples/embed.html pointed at the studio."""

    def __init__(self):
        self.studio_url = EXAMPLE_STUDIO
        self.server = LiveServer(self.wsgi)

    @property
    def origin(self) -> str:
        return self.server.url

    def wsgi(self, environ, start_response):
        if environ.get("PATH_INFO") == "/frame.html":
            page = f'<!doctype html><title>framed</title><iframe src="{self.studio_url}/admin/history"></iframe>'
            return Response(page, mimetype="text/html")(environ, start_response)
        if environ.get("PATH_INFO") != "/embed.html":
            return Response("not here", 404)(environ, start_response)
        page = EXAMPLE.read_text().replace(EXAMPLE_STUDIO, self.studio_url)
        return Response(page, mimetype="text/html")(environ, start_response)


@pytest.fixture
def example_sites():
    """Two foreign sites on loopback: the first is allowed to embed, the second is not."""
    sites = [ExampleSite(), ExampleSite()]
    for site in sites:
        site.server.start()
    yield sites
    for site in sites:
        site.server.stop()


@pytest.fixture
def app_config(app_config, example_sites):
    """The studio allows the first example site (and no other) to fetch its fragments."""
    return {**app_config, "STUDIO_EMBED_ORIGINS": example_sites[0].origin}


@pytest.fixture
def host_server(app_config):
    """A host Flask app of its own, with the studio mounted under /studio, served on loopback."""
    host = Flask("host_app")
    host.config["SECRET_KEY"] = "the host's own"

    @host.get("/")
    def home():
        return f'<a id="to-studio" href="{url_for("studio.history.history")}">Studio</a>'

    studio_app = history.init_app(host, "/studio", **app_config)
    server = LiveServer(host).start()
    yield server, studio_app
    server.stop()
    studio_app.extensions["studio"].stop()
    if not database.is_closed():
        database.close()


@pytest.mark.parametrize("poll_seconds", ["60"])
def test_mounted_studio_serves_page_fragments_media_and_websocket_under_its_prefix(page: Page, host_server):
    """Every request the page makes stays under /studio; a job run through the mounted API appears live.

    The poll is a minute away: the job's events over the mounted websocket bring it in."""
    server, studio_app = host_server
    paths = []
    page.on("request", lambda request: paths.append(request.url))
    sockets = []
    page.on("websocket", lambda socket: sockets.append(socket.url))
    page.goto(server.url + "/")
    page.click("#to-studio")
    expect(page.locator("#job-list .empty-state h2")).to_have_text("No jobs yet")
    expect(page.locator("#live-indicator")).to_have_class(re.compile(r"\bhas-events\b"), timeout=WAIT_MS)

    status, body = page.evaluate(RUN_JOB, "/studio/api/run/txt2img-example/execute")
    assert status == 202, body
    card = page.locator(f"#job-{body['prompt_id']}")
    expect(card).to_have_attribute("data-status", "completed", timeout=WAIT_MS)
    expect(card.locator("img.job-thumb")).to_have_js_property("naturalWidth", 120)
    assert card.locator("img.job-thumb").get_attribute("src").startswith("/studio/media/")

    card.locator(".job-open").click()
    expect(page.locator("#job-overlay")).to_be_visible()
    expect(page).to_have_url(re.compile(rf"/studio/admin/history/jobs/{body['prompt_id']}$"))
    expect(page.locator("#job-overlay a.view-in-assets")).to_have_attribute("href", re.compile(r"^/studio/admin/assets\?"))

    assert [url.split("?")[0] for url in sockets] == [server.url.replace("http://", "ws://") + "/studio/ws"]
    studio_requests = [url for url in paths if url.startswith("http") and url != server.url + "/"]
    assert studio_requests and all(url.startswith(server.url + "/studio/") for url in studio_requests), studio_requests


@pytest.mark.parametrize("poll_seconds", ["0.5", "60"], ids=["poll", "websocket"])
def test_another_origin_embeds_the_compact_list_and_sees_a_new_job(page: Page, live_server, example_sites, make_job, app):
    """The example page on another port loads htmx, the compact list and its thumbnails from the studio.

    A new job arrives by the list's own poll, and (with the poll a minute away) by the studio's websocket."""
    allowed = example_sites[0]
    allowed.studio_url = live_server.url
    old = make_job(minutes_ago=10)
    page.add_init_script(COUNT_ERRORS)
    page.goto(allowed.origin + "/embed.html")
    card = page.locator(f"#job-list.job-list-compact #job-{old.prompt_id}")
    expect(card.locator(".status-badge")).to_have_text("completed", timeout=WAIT_MS)
    expect(card.locator("img.job-thumb")).to_have_js_property("naturalWidth", 120)
    expect(card.locator(".job-workflow")).to_have_attribute("href", f"{live_server.url}/admin/history/jobs/{old.prompt_id}")
    expect(card.locator(".job-times, .job-excerpt, input.job-select, .retry-btn")).to_have_count(0)
    assert "compact=1" in page.locator("#job-list").get_attribute("hx-get")

    fresh = make_job(minutes_ago=0, status="error")
    app.extensions["studio"].bus.publish("job.failed", fresh.to_dict())
    first = page.locator("#job-list .job-card").first
    expect(first).to_have_attribute("data-prompt-id", fresh.prompt_id, timeout=WAIT_MS)
    expect(first.locator(".status-badge")).to_have_text("error")
    expect(page.locator("#job-list")).to_have_class(re.compile(r"\bjob-list-compact\b"))
    assert page.evaluate("window.__embed.errors") == 0


def test_an_origin_outside_the_allow_list_is_refused(page: Page, live_server, example_sites, make_job):
    """The same example page on a port the studio does not list gets nothing: the browser blocks the list."""
    refused = example_sites[1]
    refused.studio_url = live_server.url
    make_job()
    console = []
    page.on("console", lambda message: console.append(message.text))
    page.add_init_script(COUNT_ERRORS)
    page.goto(refused.origin + "/embed.html")
    page.wait_for_function("() => window.__embed.errors >= 1", timeout=WAIT_MS)
    assert any("CORS policy" in text for text in console), console
    expect(page.locator("#job-list")).to_contain_text("Loading jobs")
    expect(page.locator(".job-card")).to_have_count(0)
    assert page.evaluate("window.__embed.lists") == 0


def test_only_allowed_origins_may_frame_the_page(page: Page, live_server, example_sites):
    """The CSP's frame-ancestors lets the allowed site show the whole page in an iframe, and no other site."""
    allowed, refused = example_sites
    allowed.studio_url = refused.studio_url = live_server.url
    page.goto(allowed.origin + "/frame.html")
    expect(page.frame_locator("iframe").locator("#job-list .empty-state h2")).to_have_text("No jobs yet")
    with page.expect_console_message(lambda message: "frame-ancestors" in message.text, timeout=WAIT_MS):
        page.goto(refused.origin + "/frame.html")
