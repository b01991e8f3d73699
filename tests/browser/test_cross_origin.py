"""Cross-origin protection in Chromium: a page on another origin that posts a form to the studio is refused,
and the same form posted from the studio's own page goes through."""
from __future__ import annotations

import html

import pytest
from playwright.sync_api import Page
from playwright.sync_api import expect
from werkzeug.wrappers import Response

from history.models import Job
from tests.conftest import LiveServer

pytestmark = [pytest.mark.browser, pytest.mark.sqlite_only]

SUBMIT_FORM = """
([action, fields]) => {
  const form = document.createElement("form");
  form.method = "post";
  form.action = action;
  for (const [name, value] of Object.entries(fields)) {
    const input = document.createElement("input");
    input.type = "hidden";
    input.name = name;
    input.value = value;
    form.append(input);
  }
  document.body.append(form);
  form.submit();
}
"""


class ForeignSite:
    """Another origin (its own loopback port) whose page submits a form to ``action`` as soon as it loads."""

    def __init__(self, action: str, fields: dict[str, str]):
        inputs = "".join(
            f'<input type="hidden" name="{html.escape(name)}" value="{html.escape(value)}">' for name, value in fields.items()
        )
        self.page = (
            f'<!doctype html><title>a page elsewhere</title>'
            f'<form id="forged" method="post" action="{html.escape(action)}">{inputs}</form>'
            '<script>document.getElementById("forged").submit()</script>'
        )
        self.server = LiveServer(self.wsgi)

    def wsgi(self, environ, start_response):
        return Response(self.page, mimetype="text/html")(environ, start_response)


@pytest.fixture
def failed_job(make_job):
    """A failed job whose Retry would queue a new one."""
    return make_job(status="error", files=0, params={"seed": -1, "width": 64, "height": 64}, seeds={"seed": 99})


def retries_of(job) -> int:
    return Job.select().where(Job.retry_of == job.prompt_id).count()


def test_a_form_posted_from_another_origin_is_refused(page: Page, live_server, failed_job, db):
    execute = live_server.url + "/api/run/txt2img-example/execute"
    site = ForeignSite(execute, {"retry_of": failed_job.prompt_id})
    site.server.start()
    try:
        with page.expect_response(lambda response: response.url == execute) as answer:
            page.goto(site.server.url + "/")
        assert answer.value.status == 403
        # Another port of 127.0.0.1 is the same site but another origin: the browser says so itself.
        assert answer.value.request.all_headers()["sec-fetch-site"] == "same-site"
        expect(page.locator("body")).to_contain_text("cross-origin request refused")
        assert retries_of(failed_job) == 0
    finally:
        site.server.stop()


def test_the_same_form_from_the_studios_own_page_goes_through(page: Page, live_server, failed_job, db):
    execute = live_server.url + "/api/run/txt2img-example/execute"
    page.goto(live_server.url + "/admin/history")
    with page.expect_response(lambda response: response.url == execute) as answer:
        page.evaluate(SUBMIT_FORM, [execute, {"retry_of": failed_job.prompt_id}])
    assert answer.value.status == 202, answer.value.text()
    assert answer.value.request.all_headers()["sec-fetch-site"] == "same-origin"
    assert retries_of(failed_job) == 1
