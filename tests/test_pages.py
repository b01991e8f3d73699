"""The History page and its fragments over HTTP: parsed with BeautifulSoup and checked with selectors."""
from __future__ import annotations

import datetime

import pytest

from history.models import Job
from tests.conftest import soup

HTMX = {"HX-Request": "true"}
XSS = "<img src=x onerror=alert(1)>"


def card_ids(document) -> list[str]:
    return [card["data-prompt-id"] for card in document.select("#job-list .job-card")]


def list_etag(client, path="/admin/history/list") -> str:
    return client.get(path).headers["ETag"].strip('"')


# ---- the page ------------------------------------------------------------------------------------

def test_page_has_header_toolbar_list_and_scripts(client, make_job):
    make_job()
    page = soup(client.get("/admin/history"))
    assert page.select_one("html") is not None
    assert page.select_one("h1").get_text(strip=True) == "Job History"
    assert page.select_one("#live-indicator #live-countdown") is not None
    for hook in ("#select-all", "#selected-count", "#delete-selected"):
        assert page.select_one(hook) is not None, hook
    job_list = page.select_one("#job-list")
    assert job_list["hx-swap"] == "outerMorph"
    assert job_list["hx-trigger"].startswith("every 5000ms")
    scripts = [script["src"] for script in page.select("script[src]")]
    assert any("htmx.min.js" in src for src in scripts)
    assert any("ext/hx-ws.min.js" in src for src in scripts)
    assert any("history.js" in src for src in scripts)
    assert all(src.startswith("/") for src in scripts), "no script from another host"
    assert not page.select("script:not([src])"), "no inline scripts"
    assert not [tag for tag in page.find_all(True) if any(attr.startswith("on") for attr in tag.attrs)]


def test_empty_state_says_what_to_do(client):
    page = soup(client.get("/admin/history"))
    empty = page.select_one("#job-list .empty-state")
    assert empty.select_one("h2").get_text(strip=True) == "No jobs yet"
    assert empty.select_one("a[href='/admin/queue']") is not None
    assert not page.select(".job-card")


def test_filtered_empty_state_offers_to_clear(client, make_job):
    make_job(status="completed")
    page = soup(client.get("/admin/history?status=stalled"))
    assert page.select_one(".empty-state h2").get_text(strip=True) == "No jobs match these filters"


def test_invalid_filter_shows_the_error_state(client):
    response = client.get("/admin/history?status=bogus")
    assert response.status_code == 400
    page = soup(response)
    assert "unknown status" in page.select_one("#job-list.list-error").get_text()


def test_store_failure_shows_the_error_state(client, make_job, monkeypatch):
    from peewee import OperationalError

    from history import jobs

    make_job()

    def broken(*args, **kwargs):
        raise OperationalError("disk I/O error")

    monkeypatch.setattr(jobs, "history_page", broken)
    response = client.get("/admin/history")
    assert response.status_code == 503
    page = soup(response)
    assert "cannot be read" in page.select_one("#job-list.list-error").get_text()
    assert page.select_one("#live-indicator") is not None


def test_page_and_json_api_list_the_same_jobs(client, make_job):
    for minutes in range(7):
        make_job(status=("completed", "error", "stalled")[minutes % 3], minutes_ago=minutes)
    page = soup(client.get("/admin/history"))
    api = client.get("/api/admin/history").json
    assert card_ids(page) == [record["prompt_id"] for record in api]
    fragment = soup(client.get("/admin/history/list", headers=HTMX))
    assert card_ids(fragment) == card_ids(page)


def test_first_page_holds_page_size_jobs_and_a_sentinel(client, make_job, settings):
    for minutes in range(settings.page_size + 5):
        make_job(files=0, minutes_ago=minutes)
    page = soup(client.get("/admin/history"))
    assert len(card_ids(page)) == settings.page_size
    assert page.select_one("#job-list-more")["data-since"]
    assert not page.select_one("#job-list-more").has_attr("hx-morph-skip")  # history.js sets it once pages load
    sentinel = page.select_one("#job-list-more .list-sentinel")
    assert sentinel["hx-trigger"].startswith("revealed")
    older = soup(client.get(sentinel["hx-get"], headers=HTMX))
    assert older.select_one("html") is None
    assert len(older.select(".job-card")) == 5
    assert older.select_one(".list-sentinel") is None
    api = client.get(f"/api/admin/history?limit={settings.page_size + 5}").json
    assert card_ids(page) + [card["data-prompt-id"] for card in older.select(".job-card")] == [r["prompt_id"] for r in api]


def test_filters_narrow_the_list_and_stay_in_the_form(client, make_job):
    kept = make_job(status="error", workflow_id="img2vid-example", workflow_name="Image to video")
    make_job(status="completed")
    make_job(status="error")
    page = soup(client.get("/admin/history?status=error&workflow_id=img2vid-example"))
    assert card_ids(page) == [kept.prompt_id]
    assert page.select_one("input[name=status][value=error]").has_attr("checked")
    assert not page.select_one("input[name=status][value=completed]").has_attr("checked")
    assert page.select_one("select[name=workflow_id] option[selected]")["value"] == "img2vid-example"
    assert "status=error" in page.select_one("#job-list")["hx-get"]


def test_search_box_filters_by_prompt(client, make_job):
    wanted = make_job(params={"positive_prompt": "a red fox in the snow"})
    make_job(params={"positive_prompt": "a lighthouse"})
    page = soup(client.get("/admin/history?q=red+fox"))
    assert card_ids(page) == [wanted.prompt_id]
    assert page.select_one("input[name=q]")["value"] == "red fox"


# ---- the list fragment and its ETag ---------------------------------------------------------------

def test_list_fragment_is_a_fragment_with_cache_headers(client, make_job):
    make_job()
    response = client.get("/admin/history/list", headers=HTMX)
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert "HX-Request" in response.headers["Vary"]
    assert response.headers["ETag"]
    fragment = soup(response)
    assert fragment.select_one("html, body, head") is None
    job_list = fragment.select_one("#job-list")
    assert job_list["data-list-etag"] == response.headers["ETag"].strip('"')
    assert f'"{job_list["data-list-etag"]}"' in job_list["hx-headers"]


def test_idle_poll_answers_204_to_htmx_and_304_to_if_none_match(client, make_job):
    make_job()
    etag = list_etag(client)
    idle = client.get("/admin/history/list", headers={**HTMX, "X-List-ETag": etag})
    assert idle.status_code == 204
    assert idle.get_data() == b""
    assert idle.headers["Cache-Control"] == "no-store"
    conditional = client.get("/admin/history/list", headers={"If-None-Match": f'"{etag}"'})
    assert conditional.status_code == 304
    stale = client.get("/admin/history/list", headers={**HTMX, "X-List-ETag": "something-else"})
    assert stale.status_code == 200


def test_an_idle_poll_carries_only_the_headers_a_poll_needs(client, make_job):
    """No body, so no page policies: the answer stays a few hundred bytes with the status line."""
    make_job()
    etag = list_etag(client)
    idle = client.get("/admin/history/list", headers={**HTMX, "X-List-ETag": etag})
    assert idle.status_code == 204
    for header in ("Content-Security-Policy", "X-Frame-Options", "Referrer-Policy", "Content-Type", "Set-Cookie"):
        assert header not in idle.headers
    head = "HTTP/1.1 204 NO CONTENT\r\n" + "".join(f"{name}: {value}\r\n" for name, value in idle.headers.items())
    assert len(head) < 220  # the server adds Date and Server (about 70 bytes): under 300 on the wire


def test_a_changed_list_renders_once_for_every_reader(app, client, make_job):
    """After a change, each open page asks for the list; the first asks render it, the rest get the same bytes."""
    from flask import template_rendered

    make_job()
    rendered = []

    def count(sender, template, context, **extra):
        if template.name == "job_list.html":
            rendered.append(context["list_etag"])

    template_rendered.connect(count, app)
    try:
        readers = [app.test_client() for _ in range(5)]
        answers = [reader.get("/admin/history/list", headers={**HTMX, "X-List-ETag": "stale"}) for reader in readers]
        assert len(rendered) == 1
        assert len({answer.get_data() for answer in answers}) == 1
        assert {answer.headers["ETag"] for answer in answers} == {f'"{rendered[0]}"'}
        newer = make_job(minutes_ago=0)
        again = client.get("/admin/history/list", headers={**HTMX, "X-List-ETag": rendered[0]})
        assert again.status_code == 200 and len(rendered) == 2
        assert newer.prompt_id in again.get_data(as_text=True)
    finally:
        template_rendered.disconnect(count, app)


def test_the_etag_changes_with_a_new_job_and_with_a_status_change(client, make_job, db):
    job = make_job(status="completed", minutes_ago=5)
    first = list_etag(client)
    make_job(minutes_ago=1)
    second = list_etag(client)
    assert second != first
    Job.update(status="error").where(Job.prompt_id == job.prompt_id).execute()
    third = list_etag(client)
    assert third not in (first, second)


def test_the_etag_depends_on_filters_and_time_zone(client, make_job):
    make_job()
    plain = list_etag(client)
    assert list_etag(client, "/admin/history/list?status=completed") != plain
    client.set_cookie("studio_tz", "Asia/Tokyo")
    assert list_etag(client) != plain


def test_rendered_etag_matches_the_next_poll(client, make_job, settings):
    """The ETag the page renders into the poller is the one its poll URL answers 204 to."""
    for minutes in range(settings.page_size + 3):
        make_job(files=0, minutes_ago=minutes)
    poller = soup(client.get("/admin/history")).select_one("#job-list")
    assert "since=" not in poller["hx-get"]
    poll = client.get(poller["hx-get"], headers={**HTMX, "X-List-ETag": poller["data-list-etag"]})
    assert poll.status_code == 204


def test_head_slides_until_pages_are_loaded_then_keeps_its_jobs(client, make_job, settings):
    """Without further pages the head is the newest page; with them (since=) it grows instead of leaving a gap."""
    for minutes in range(10, 10 + settings.page_size + 3):
        make_job(files=0, minutes_ago=minutes)
    page = soup(client.get("/admin/history"))
    shown = card_ids(page)
    boundary = page.select_one("#job-list-more")["data-since"]
    fresh = make_job(files=0, minutes_ago=1)
    sliding = soup(client.get("/admin/history/list", headers=HTMX))
    assert card_ids(sliding) == [fresh.prompt_id] + shown[:-1]
    assert sliding.select_one("#job-list-more")["data-since"] != boundary  # its sentinel follows the new head
    kept = client.get(f"/admin/history/list?since={boundary}", headers=HTMX)
    kept_page = soup(kept)
    assert card_ids(kept_page) == [fresh.prompt_id] + shown
    poller = kept_page.select_one("#job-list")
    assert f"since={boundary}".replace(":", "%3A") in poller["hx-get"] or f"since={boundary}" in poller["hx-get"]
    assert kept_page.select_one("#job-list-more").has_attr("hx-morph-skip")
    again = client.get(poller["hx-get"], headers={**HTMX, "X-List-ETag": poller["data-list-etag"]})
    assert again.status_code == 204


@pytest.mark.parametrize("query", ["before=nonsense", "since=nonsense", "status=bogus", "workflow_id=../x"])
def test_list_fragment_refuses_bad_queries(client, query):
    response = client.get(f"/admin/history/list?{query}", headers=HTMX)
    assert response.status_code == 400
    assert soup(response).select_one("#job-list.list-error") is not None


# ---- cards -----------------------------------------------------------------------------------------

def test_card_parts(client, make_job):
    job = make_job(status="completed", files=3, params={"positive_prompt": "x" * 120, "seed": 1})
    card = soup(client.get(f"/admin/history/jobs/{job.prompt_id}/card")).select_one(".job-card")
    assert card["data-prompt-id"] == job.prompt_id
    assert card["data-status"] == "completed"
    assert card.select_one("input.job-select")["value"] == job.prompt_id
    thumb = card.select_one("img.job-thumb")
    assert thumb["src"].startswith("/media/thumb/")
    assert (thumb["width"], thumb["height"]) == ("60", "60")
    assert card.select_one(".thumb-count").get_text(strip=True) == "3"
    assert card.select_one(".job-workflow").get_text(strip=True) == "Text to image (example)"
    assert card.select_one(".job-id").get_text(strip=True) == job.prompt_id[:12]
    assert card.select_one(".job-excerpt").get_text() == "x" * 80 + "\u2026"
    assert card.select_one(".status-badge").get_text(strip=True) == "completed"
    assert card.select_one(".retry-btn") is None
    times = card.select(".job-times time")
    assert [time["datetime"] for time in times] == [job.queued_at.isoformat(), job.started_at.isoformat()]
    assert all(time["title"] for time in times)
    assert card.select_one(".job-duration").get_text(strip=True) == "40s"


def test_single_image_has_no_count_badge(client, make_job):
    job = make_job(files=1)
    card = soup(client.get(f"/admin/history/jobs/{job.prompt_id}/card"))
    assert card.select_one("img.job-thumb") is not None
    assert card.select_one(".thumb-count") is None


def test_video_job_shows_its_input_image_or_the_play_placeholder(client, make_job, settings):
    from tests.conftest import write_image

    write_image(settings.input_dir / "start.png")
    video = [{"filename": "clip.mp4", "subfolder": "comfyui-studio/x", "type": "output"}]
    with_input = make_job(files=0, outputs=video, input_image="start.png", workflow_id="img2vid-example")
    without = make_job(files=0, outputs=video, workflow_id="img2vid-example")
    card = soup(client.get(f"/admin/history/jobs/{with_input.prompt_id}/card"))
    assert "/media/thumb/input/start.png" in card.select_one("img.job-thumb")["src"]
    card = soup(client.get(f"/admin/history/jobs/{without.prompt_id}/card"))
    assert card.select_one("img.job-thumb") is None
    assert card.select_one(".thumb-placeholder") is not None


def test_missing_output_file_gives_the_placeholder(client, make_job, settings):
    job = make_job(files=1)
    (settings.output_dir / job.outputs[0]["subfolder"] / job.outputs[0]["filename"]).unlink()
    card = soup(client.get(f"/admin/history/jobs/{job.prompt_id}/card"))
    assert card.select_one("img.job-thumb") is None
    assert card.select_one(".thumb-placeholder") is not None


@pytest.mark.parametrize("status", ["error", "stalled"])
def test_failed_and_stalled_cards_have_retry(client, make_job, status):
    job = make_job(status=status)
    card = soup(client.get(f"/admin/history/jobs/{job.prompt_id}/card")).select_one(".job-card")
    retry = card.select_one(".retry-btn")
    assert retry["data-prompt-id"] == job.prompt_id
    assert retry["data-workflow-id"] == job.workflow_id
    form = retry.find_parent("form")
    assert form["action"] == form["hx-post"] == f"/admin/history/jobs/{job.prompt_id}/retry"
    assert card.select_one(".status-badge").get_text(strip=True) == status


@pytest.mark.parametrize("status", ["queued", "running"])
def test_active_jobs_get_a_placeholder_instead_of_a_checkbox(client, make_job, status):
    job = make_job(status=status)
    card = soup(client.get(f"/admin/history/jobs/{job.prompt_id}/card"))
    assert card.select_one("input.job-select") is None
    assert card.select_one(".job-select-placeholder") is not None


@pytest.mark.parametrize("prompt, shown", [
    ("a lighthouse at dusk", "a lighthouse at dusk"),
    ("a quiet harbour at dawn, fishing boats leaving one by one, gulls overhead, oil painting, warm light",
     "a quiet harbour at dawn, fishing boats leaving one by one, gulls overhead, oil\u2026"),
    ("two\nlines   and  spaces", "two lines and spaces"),
])
def test_the_excerpt_is_cut_at_a_word_with_an_ellipsis(client, make_job, prompt, shown):
    job = make_job(params={"positive_prompt": prompt})
    card = soup(client.get(f"/admin/history/jobs/{job.prompt_id}/card"))
    assert card.select_one(".job-excerpt").get_text() == shown


def test_scene_workflow_excerpt_is_the_first_scene(client, make_job):
    job = make_job(params={"scenes": [{"prompt": "first scene", "duration": 2, "seed": 1}, {"prompt": "second", "duration": 3, "seed": 2}]})
    card = soup(client.get(f"/admin/history/jobs/{job.prompt_id}/card"))
    assert card.select_one(".job-excerpt").get_text() == "first scene"


@pytest.mark.parametrize("seconds, shown", [(42, "42s"), (192, "3m 12s"), (3840, "1h 4m"), (0.4, "400ms"), (0.0002, "<1ms"), (0.9999, "1s"), (1.4, "1s")])
def test_duration_format(client, make_job, seconds, shown):
    job = make_job(duration=seconds)
    card = soup(client.get(f"/admin/history/jobs/{job.prompt_id}/card"))
    assert card.select_one(".job-duration").get_text(strip=True) == shown


def test_times_follow_the_readers_time_zone(client, make_job):
    job = make_job(queued_at=datetime.datetime(2026, 11, 28, 12, 0, 0, tzinfo=datetime.timezone.utc))
    client.set_cookie("studio_tz", "Asia/Tokyo")
    card = soup(client.get(f"/admin/history/jobs/{job.prompt_id}/card"))
    queued = card.select_one("time.job-queued")
    assert queued.get_text(strip=True) == "21:00:00"
    assert queued["datetime"] == "2026-11-28T12:00:00+00:00"
    assert "JST" in queued["title"]
    client.set_cookie("studio_tz", "../../etc/passwd")
    card = soup(client.get(f"/admin/history/jobs/{job.prompt_id}/card"))
    assert card.select_one("time.job-queued").get_text(strip=True) == "12:00:00"


def test_unknown_card_is_404(client):
    assert client.get("/admin/history/jobs/nope/card").status_code == 404


# ---- the overlay -----------------------------------------------------------------------------------

def test_overlay_fragment_fields(client, make_job, settings):
    from tests.conftest import write_image

    write_image(settings.input_dir / "face.png")
    original = make_job(status="error")
    job = make_job(
        status="error",
        input_image="face.png",
        retry_of=original.prompt_id,
        params={
            "positive_prompt": "line one\n    indented line",
            "negative_prompt": "blurry",
            "seed": -1,
            "loras": [{"name": "a", "weight": 0.5}],
            "image": "face.png",
            "scenes": [{"prompt": "dawn", "duration": 2, "seed": -1}, {"prompt": "dusk", "duration": 3, "seed": 7}],
        },
        seeds={"seed": 12345, "scenes": [999, 7]},
    )
    response = client.get(f"/admin/history/jobs/{job.prompt_id}", headers=HTMX)
    assert response.status_code == 200
    assert "HX-Request" in response.headers["Vary"]
    overlay = soup(response)
    assert overlay.select_one("html") is None
    dialog = overlay.select_one("dialog#job-overlay")
    fields = {row["data-field"]: row.select_one("dd").get_text(" ", strip=True) for row in dialog.select("[data-field]")}
    assert fields["prompt_id"].startswith(job.prompt_id)
    assert fields["workflow_id"] == job.workflow_id
    assert fields["workflow_name"] == job.workflow_name
    assert job.output_dir in fields["output_dir"]
    assert fields["status"] == "error"
    for name in ("queued_at", "started_at", "finished_at"):
        assert dialog.select_one(f"[data-field={name}] time")["datetime"] == getattr(job, name).isoformat()
    assert fields["duration"] == "40s"
    assert "out of memory" in fields["error"]
    assert fields["retry_of"] == f"retry of {original.prompt_id[:12]}"
    copy = dialog.select_one("[data-field=prompt_id] .copy-btn")
    assert dialog.select_one("#" + copy["data-copy-target"]).get_text() == job.prompt_id
    table = dialog.select_one(".params-table")
    prompt = table.select_one("[data-param=positive_prompt] pre.prompt-text")
    assert prompt.get_text() == "line one\n    indented line"
    assert table.select_one("[data-param=positive_prompt] .copy-btn")["data-copy-target"] == prompt["id"]
    assert table.select_one("[data-param=seed] td").get_text(" ", strip=True) == "-1 (used 12345)"
    assert '"weight": 0.5' in table.select_one("[data-param=loras] pre.json").get_text()
    scenes = [[cell.get_text(" ", strip=True) for cell in row.select("td")] for row in table.select(".scenes-table tbody tr")]
    assert scenes == [["1", "dawn Copy", "Duration 2", "Seed -1 (used 999)"], ["2", "dusk Copy", "Duration 3", "Seed 7"]]
    scene_copy = table.select_one(".scenes-table [data-scene='2'] .copy-btn")
    assert table.select_one("#" + scene_copy["data-copy-target"]).get_text() == "dusk"
    image = table.select_one("[data-param=image] a.input-image-link")
    assert image.get_text(strip=True) == "face.png"
    assert image.has_attr("data-fullscreen")
    assert table.select_one("[data-param=image] .input-preview img")["src"].startswith("/media/thumb/input/")
    assert dialog.select_one("a.view-in-assets")["href"] == f"/admin/assets?dir={job.output_dir}"
    assert len(dialog.select(".output-gallery img")) == 1
    assert dialog.select_one(".retry-btn") is not None


def test_overlay_links_retries_both_ways(client, make_job):
    original = make_job(status="error")
    retry = make_job(status="completed", retry_of=original.prompt_id)
    overlay = soup(client.get(f"/admin/history/jobs/{original.prompt_id}", headers=HTMX))
    link = overlay.select_one("[data-field=retried_as] a.retried-as-link")
    assert link.get_text(strip=True) == retry.prompt_id[:12]
    assert link["href"] == f"/admin/history/jobs/{retry.prompt_id}"


def test_overlay_without_htmx_is_the_full_page_with_the_overlay_open(client, make_job):
    job = make_job()
    other = make_job()
    page = soup(client.get(f"/admin/history/jobs/{job.prompt_id}"))
    assert page.select_one("html") is not None
    assert page.select_one("#overlay-root dialog#job-overlay[open]")["data-prompt-id"] == job.prompt_id
    assert page.select_one("#job-overlay a.overlay-close")["href"] == "/admin/history"  # closes without scripts too
    assert set(card_ids(page)) == {job.prompt_id, other.prompt_id}
    restore = soup(client.get(f"/admin/history/jobs/{job.prompt_id}", headers={**HTMX, "HX-History-Restore-Request": "true"}))
    assert restore.select_one("html") is not None


def test_unknown_job_overlay_is_404(client):
    response = client.get("/admin/history/jobs/does-not-exist", headers=HTMX)
    assert response.status_code == 404
    assert soup(response).select_one("#job-overlay.is-missing") is not None
    page = client.get("/admin/history/jobs/does-not-exist")
    assert page.status_code == 404
    assert "does-not-exist" in soup(page).select_one("#overlay-root #job-overlay.is-missing").get_text()


def test_overlay_shows_a_video(client, make_job, settings):
    folder = settings.output_dir / "comfyui-studio" / "vid1"
    folder.mkdir(parents=True)
    (folder / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    job = make_job(files=0, output_dir="vid1", outputs=[{"filename": "clip.mp4", "subfolder": "comfyui-studio/vid1", "type": "output"}])
    overlay = soup(client.get(f"/admin/history/jobs/{job.prompt_id}", headers=HTMX))
    assert overlay.select_one("video.output-video")["src"].endswith("clip.mp4")


# ---- escaping ----------------------------------------------------------------------------------------

def test_user_text_is_inert_everywhere(client, make_job):
    job = make_job(
        status="error",
        workflow_name=XSS,
        error=XSS,
        params={"positive_prompt": XSS, "note": XSS, "nested": {"html": XSS}},
    )
    for path, headers in (
        ("/admin/history", {}),
        ("/admin/history/list", HTMX),
        (f"/admin/history/jobs/{job.prompt_id}", HTMX),
        (f"/admin/history/jobs/{job.prompt_id}", {}),
        (f"/admin/history/jobs/{job.prompt_id}/card", HTMX),
    ):
        document = soup(client.get(path, headers=headers))
        assert document.select("img[src=x]") == [], path
        assert not [tag for tag in document.find_all(True) if "onerror" in tag.attrs], path
        assert XSS in document.get_text(), path
