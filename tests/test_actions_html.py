"""The History page's actions over HTTP: each answers HTML the server rendered (confirm, delete, retry)."""
from __future__ import annotations

import pytest
from jinja2 import DictLoader
from jinja2 import Environment

from history import jobs
from history.models import Job
from history.web.history import markup_version
from tests.conftest import soup

HTMX = {"HX-Request": "true"}
DELETE_MESSAGE = "Delete {count} job(s) and their output files? This cannot be undone."


def text(element) -> str:
    """An element's text as a reader sees it: whitespace folded."""
    return " ".join(element.get_text().split())


def folder(settings, job):
    return settings.output_dir / "comfyui-studio" / job.output_dir


def test_the_confirm_dialog_names_the_selection_with_its_files_and_keeps_the_filter(client, make_job, settings):
    chosen = [make_job(status="error", files=2), make_job(files=1)]
    size = sum(path.stat().st_size for job in chosen for path in folder(settings, job).iterdir())
    form = {"prompt_ids": [job.prompt_id for job in chosen], "status": "error", "q": "lake"}
    dialog = soup(client.post("/admin/history/delete/confirm", data=form, headers=HTMX)).select_one("dialog#confirm-dialog")
    assert dialog.has_attr("open") and dialog.has_attr("data-modal")
    assert dialog.select_one(".confirm-message").get_text() == DELETE_MESSAGE.format(count=2)
    assert dialog.select_one(".confirm-usage").get_text().startswith("That frees 3 files, ")
    assert size > 1024 and " KB." in dialog.select_one(".confirm-usage").get_text()
    assert [button["value"] for button in dialog.select("button")] == ["cancel", "confirm"]
    assert dialog.select_one('button[value="cancel"]').has_attr("autofocus")
    assert dialog.select_one('button[value="cancel"]').find_parent("form")["method"] == "dialog"
    delete = dialog.select_one('button[value="confirm"]').find_parent("form")
    assert delete["hx-post"] == delete["action"] == "/admin/history/delete?status=error&q=lake"
    assert [field["value"] for field in delete.select("input[name=prompt_ids]")] == form["prompt_ids"]
    assert all(folder(settings, job).is_dir() for job in chosen)  # asking deletes nothing


def test_without_scripts_the_confirm_is_the_page_with_the_dialog_open(client, make_job):
    job = make_job()
    page = soup(client.post("/admin/history/delete/confirm", data={"prompt_ids": [job.prompt_id]}))
    assert page.select_one("html") and page.select_one("dialog#confirm-dialog[open] .confirm-message")
    assert page.select_one(f"#select-{job.prompt_id}").has_attr("checked")


@pytest.mark.parametrize("form, status", [({"prompt_ids": ["../etc"]}, 400), ({"prompt_ids": ["a\x00b"]}, 400)])
def test_a_selection_that_names_no_job_is_refused(client, form, status):
    response = client.post("/admin/history/delete/confirm", data=form, headers=HTMX)
    assert response.status_code == status and b"is not a job id" in response.data


def test_nothing_selected_says_so_and_offers_no_delete(client):
    dialog = soup(client.post("/admin/history/delete/confirm", data={}, headers=HTMX)).select_one("dialog#confirm-dialog")
    assert "No jobs are selected" in dialog.get_text()
    assert dialog.select_one('button[value="confirm"]') is None


def test_the_delete_answers_the_list_the_notice_and_a_closed_dialog(client, make_job, settings, tmp_path):
    import os

    keep = make_job(minutes_ago=1)
    gone = make_job(minutes_ago=2, files=2)
    stuck = make_job(minutes_ago=3, files=0)
    folder(settings, stuck).parent.mkdir(parents=True, exist_ok=True)
    os.symlink(tmp_path, folder(settings, stuck))  # a folder that is a link: the delete refuses it
    form = {"prompt_ids": [gone.prompt_id, stuck.prompt_id, "never-was"]}
    answer = client.post("/admin/history/delete", data=form, headers=HTMX)
    assert answer.status_code == 200 and answer.headers["Cache-Control"] == "no-store"
    html = soup(answer)
    assert [card["data-prompt-id"] for card in html.select("#job-list .job-card")] == [keep.prompt_id, stuck.prompt_id]
    assert html.select_one(f"#select-{stuck.prompt_id}").has_attr("checked")  # not deleted: still selected
    assert not html.select_one(f"#select-{keep.prompt_id}").has_attr("checked")
    notice = html.select_one("dialog#action-toast[hx-swap-oob][open]")
    assert "Deleted 1 job (2 files," in text(notice) and "1 was gone already" in notice.get_text()
    assert "Not deleted: refused:" in notice.select_one(f'li[data-prompt-id="{stuck.prompt_id}"]').get_text()
    assert html.select_one("#action-status[hx-swap-oob]").get_text(strip=True) == "Deleted 1 job; 1 not deleted."
    closed = html.select_one("dialog#confirm-dialog[hx-swap-oob]")
    assert not closed.has_attr("open") and not closed.select("button")
    assert html.select_one(f'[hx-swap-oob*="{gone.prompt_id}"]')["hx-swap-oob"].startswith("delete target:")
    assert not folder(settings, gone).exists() and Job.get_or_none(Job.prompt_id == gone.prompt_id) is None


def test_a_retry_answers_both_retry_boxes_with_the_note_from_the_store(client, make_job):
    original = make_job(status="error", files=0, params={"positive_prompt": "again", "seed": 3}, seeds={"seed": 3})
    answer = client.post(f"/admin/history/jobs/{original.prompt_id}/retry", headers=HTMX)
    assert answer.status_code == 200
    retry = Job.get(Job.retry_of == original.prompt_id)
    boxes = soup(answer).select(".retry-box[hx-swap-oob]")
    assert [box["id"] for box in boxes] == [f"retry-card-{original.prompt_id}", f"retry-overlay-{original.prompt_id}"]
    for box in boxes:
        note = box.select_one(".action-note")
        assert text(note).startswith(f"{'Queued' if retry.status in ('queued', 'running') else 'Retried'} as {retry.prompt_id[:12]}")
    # A reload says the same: the card's note comes from the store, and so does the overlay's.
    Job.update(status="error").where(Job.prompt_id == retry.prompt_id).execute()
    card = soup(client.get(f"/admin/history/jobs/{original.prompt_id}/card"))
    assert text(card.select_one(".action-note.is-error")) == f"Retried as {retry.prompt_id[:12]}: error"
    assert card.select_one(".action-note a")["href"] == f"/admin/history/jobs/{retry.prompt_id}"
    # A second click within seconds makes no second job.
    again = client.post(f"/admin/history/jobs/{original.prompt_id}/retry", headers=HTMX)
    assert again.status_code == 409 and Job.select().where(Job.retry_of == original.prompt_id).count() == 1


def test_a_retry_without_scripts_goes_to_the_jobs_page_and_a_completed_job_is_not_retried(client, make_job):
    failed = make_job(status="error", files=0, params={"positive_prompt": "again", "seed": 3}, seeds={"seed": 3})
    answer = client.post(f"/admin/history/jobs/{failed.prompt_id}/retry")
    assert answer.status_code == 303 and answer.location.endswith(f"/admin/history/jobs/{failed.prompt_id}")
    done = make_job()
    refused = client.post(f"/admin/history/jobs/{done.prompt_id}/retry", headers=HTMX)
    assert refused.status_code == 409 and Job.select().where(Job.retry_of == done.prompt_id).count() == 0


def test_the_list_etag_follows_a_listed_jobs_newest_retry(make_job):
    original = make_job(status="error")
    history_filter = jobs.HistoryFilter(statuses=("error",))
    before = jobs.list_etag(history_filter, 50)
    retry = make_job(status="queued", retry_of=original.prompt_id, minutes_ago=0)
    queued = jobs.list_etag(history_filter, 50)
    Job.update(status="running").where(Job.prompt_id == retry.prompt_id).execute()
    running = jobs.list_etag(history_filter, 50)
    assert len({before, queued, running}) == 3  # none of these changed the listed jobs themselves
    assert running == jobs.history_page(history_filter, 50).etag


def test_the_markup_version_is_a_digest_of_the_templates():
    class App:
        def __init__(self, templates):
            self.jinja_loader = DictLoader(templates)
            self.jinja_env = Environment(loader=self.jinja_loader)

    one = markup_version(App({"job_card.html": "<article>{{ card.title }}</article>"}))
    assert one == markup_version(App({"job_card.html": "<article>{{ card.title }}</article>"}))
    assert one != markup_version(App({"job_card.html": "<article class=x>{{ card.title }}</article>"}))


def test_the_overlays_retry_box_polls_itself_only_while_its_retry_is_queued(client, make_job):
    original = make_job(status="error", files=0)
    retry = make_job(status="queued", retry_of=original.prompt_id, minutes_ago=0)
    url = f"/admin/history/jobs/{original.prompt_id}/retry"
    box = soup(client.get(url + "?place=overlay", headers=HTMX)).select_one(".retry-box")
    assert box["id"] == f"retry-overlay-{original.prompt_id}" and box["hx-get"] == url + "?place=overlay"
    assert text(box.select_one(".action-note")) == f"Queued as {retry.prompt_id[:12]} on the queue"
    assert not soup(client.get(url + "?place=card", headers=HTMX)).select_one(".retry-box").has_attr("hx-get")  # the list polls cards
    Job.update(status="completed").where(Job.prompt_id == retry.prompt_id).execute()
    box = soup(client.get(url + "?place=overlay", headers=HTMX)).select_one(".retry-box")
    assert not box.has_attr("hx-get")  # ended: it stops asking
    assert text(box.select_one(".action-note")) == f"Retried as {retry.prompt_id[:12]}: completed"
    assert client.get(f"/admin/history/jobs/{retry.prompt_id}/retry").status_code == 404  # a completed job has no Retry
