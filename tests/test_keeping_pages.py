"""The History page's keeping views over HTTP: Storage, Failures and Compare render from the store; bad input is a 4xx."""
from __future__ import annotations

import datetime

import pytest

from tests.conftest import soup


def test_the_storage_fragment_is_a_panel_whose_bars_are_links(client, make_job):
    # The panel charts the last 30 days from now, so the job is queued an hour ago (not at the fixtures' fixed time).
    queued_at = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)
    make_job("error", error="node X (#1): <script>alert(1)</script>", queued_at=queued_at)
    fragment = client.get("/admin/history/storage", headers={"HX-Request": "true"})
    assert fragment.status_code == 200 and b"<html" not in fragment.data
    links = [link["href"] for link in soup(fragment).select("svg.chart-days a")]
    day = queued_at.date()
    after, before = day.isoformat(), (day + datetime.timedelta(days=1)).isoformat()
    assert links == [f"/admin/history?status=error&queued_before={before}T00:00:00Z&queued_after={after}T00:00:00Z"]
    page = client.get("/admin/history/storage")
    assert soup(page).select_one("#storage-panel svg.chart-workflows a")["href"] == "/admin/history?workflow_id=txt2img-example"


def test_failures_escape_what_the_store_holds(client, make_job):
    make_job("error", error="node <b>Evil</b> (#1): RuntimeError: <img src=x onerror=alert(1)>")
    page = soup(client.get("/admin/history/failures"))
    assert not page.select(".failure-group img, .failure-group b")
    assert "<img src=x" in page.select_one(".failure-example pre").text


@pytest.mark.parametrize("url, status", [
    ("/admin/history/compare?a=nope&b=nope", 404),
    ("/admin/history/compare?prompt_ids=one", 400),
    ("/admin/history/matching?status=lost", 400),
])
def test_views_refuse_what_they_cannot_show(client, url, status):
    assert client.get(url).status_code == status


@pytest.mark.parametrize("path, form", [
    ("/admin/history/jobs/{id}/star", {"starred": "maybe"}),
    ("/admin/history/bulk/confirm", {"action": "explode", "expect": "1"}),
    ("/admin/history/bulk/confirm", {"action": "delete", "expect": "many"}),
    ("/admin/history/bulk", {"action": "delete", "status": "lost", "expect": "1"}),
])
def test_actions_refuse_bad_forms_and_change_nothing(client, make_job, path, form):
    job = make_job()
    answer = client.post(path.format(id=job.prompt_id), data=form, headers={"HX-Request": "true"})
    assert answer.status_code == 400
    assert client.get(f"/api/admin/history/{job.prompt_id}").json["starred"] is False


def test_the_starred_filter_narrows_the_page(client, make_job):
    starred, _other = make_job(starred=True), make_job()
    page = soup(client.get("/admin/history?starred=1"))
    assert page.select_one('#history-filters input[name="starred"]').has_attr("checked")
    assert [card["data-prompt-id"] for card in page.select("#job-list .job-card")] == [starred.prompt_id]
