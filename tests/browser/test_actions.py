"""Batch selection, delete, retry, export and the keyboard on the History page, in Chromium; and the same actions with htmx alone."""
from __future__ import annotations

import json
import os
import re
import zipfile

import pytest
from playwright.sync_api import Page
from playwright.sync_api import expect

from history.models import Job

pytestmark = [pytest.mark.browser, pytest.mark.sqlite_only]

WAIT_MS = 10_000
DELETE_MESSAGE = "Delete {count} job(s) and their output files? This cannot be undone."

# Counts the poller's answers from the page's side (added before any page script runs).
POLLS = """
window.__polls = {idle: 0, changed: 0};
document.addEventListener("htmx:after:request", function (event) {
  if (event.target.id !== "job-list") return;
  if (event.detail.ctx.response.status === 204) window.__polls.idle += 1; else window.__polls.changed += 1;
});
"""

# Records every text a retry note shows, with its link, as it changes.
NOTES = """
window.__notes = [];
new MutationObserver(function () {
  document.querySelectorAll(".action-note").forEach(function (note) {
    var link = note.querySelector("a");
    var seen = note.textContent + (link ? " -> " + link.getAttribute("href") : "");
    if (window.__notes[window.__notes.length - 1] !== seen) window.__notes.push(seen);
  });
}).observe(document, {subtree: true, childList: true, characterData: true});
"""


def open_history(page: Page, history_url: str) -> Page:
    """Open the page and wait until a poll has come back unchanged (the list is settled)."""
    page.add_init_script(POLLS)
    page.goto(history_url)
    page.wait_for_function("() => window.__polls.idle >= 1", timeout=WAIT_MS)
    return page


def card(page: Page, job):
    return page.locator(f"#job-{job.prompt_id}")


def box(page: Page, job):
    return page.locator(f"#select-{job.prompt_id}")


def checked_ids(page: Page) -> list[str]:
    return page.eval_on_selector_all("#job-list input.job-select:checked", "boxes => boxes.map(b => b.value)")


def job_folder(settings, job):
    return settings.output_dir / "comfyui-studio" / job.output_dir


def test_select_all_shows_the_count_and_the_mixed_state(page: Page, history_url, make_job):
    jobs = [make_job(status=status, minutes_ago=index) for index, status in enumerate(("completed", "error", "stalled"))]
    open_history(page, history_url)
    select_all = page.locator("#select-all")
    expect(page.locator("#delete-selected")).to_be_hidden()
    expect(page.locator("#export-selected")).to_be_hidden()
    select_all.click()
    expect(page.locator("#selected-count")).to_have_text("3 selected")
    assert sorted(checked_ids(page)) == sorted(job.prompt_id for job in jobs)
    expect(page.locator("#delete-selected")).to_be_visible()
    expect(page.locator("#export-selected")).to_be_visible()
    box(page, jobs[1]).click()
    expect(page.locator("#selected-count")).to_have_text("2 selected")
    expect(select_all).to_have_js_property("indeterminate", True)
    expect(select_all).not_to_be_checked()
    select_all.click()  # from the mixed state: every job
    expect(page.locator("#selected-count")).to_have_text("3 selected")
    expect(select_all).to_have_js_property("indeterminate", False)
    expect(select_all).to_be_checked()
    select_all.click()
    expect(page.locator("#selected-count")).to_have_text("0 selected")
    assert checked_ids(page) == []
    expect(page.locator("#delete-selected")).to_be_hidden()


def test_ctrl_click_toggles_a_card_without_opening_it(page: Page, history_url, make_job, context):
    job = make_job()
    open_history(page, history_url)
    url = page.url
    card(page, job).locator(".job-excerpt").click(modifiers=["ControlOrMeta"])
    expect(box(page, job)).to_be_checked()
    expect(page.locator("#selected-count")).to_have_text("1 selected")
    card(page, job).locator(".job-open").click(modifiers=["ControlOrMeta"])  # on the card's link too
    expect(box(page, job)).not_to_be_checked()
    expect(page.locator("#job-overlay")).to_have_count(0)
    assert page.url == url
    assert len(context.pages) == 1  # no new tab from the link


def test_shift_click_selects_a_range_from_the_checkbox_anchor(page: Page, history_url, make_job):
    jobs = [make_job(minutes_ago=index) for index in range(6)]
    open_history(page, history_url)
    box(page, jobs[1]).click()
    card(page, jobs[4]).locator(".job-excerpt").click(modifiers=["Shift"])
    expect(page.locator("#selected-count")).to_have_text("4 selected")
    assert checked_ids(page) == [job.prompt_id for job in jobs[1:5]]
    expect(page.locator("#job-overlay")).to_have_count(0)
    # A checkbox anchors too: from job 4, Shift+click on job 5's box adds it.
    box(page, jobs[5]).click(modifiers=["Shift"])
    assert checked_ids(page) == [job.prompt_id for job in jobs[1:6]]


def test_selection_survives_a_poll_that_brings_a_new_job_and_drops_a_deleted_one(page: Page, history_url, make_job):
    first, second, third = (make_job(minutes_ago=index + 10) for index in range(3))
    open_history(page, history_url)
    box(page, first).click()
    box(page, third).click()
    fresh = make_job(minutes_ago=0)
    expect(page.locator("#job-list .job-card").first).to_have_attribute("data-prompt-id", fresh.prompt_id, timeout=WAIT_MS)
    assert checked_ids(page) == [first.prompt_id, third.prompt_id]
    expect(page.locator("#selected-count")).to_have_text("2 selected")
    expect(page.locator("#action-status[aria-live=polite]")).to_have_text(f"Jobs: New: {fresh.prompt_id[:12]} completed")
    Job.update(status="error").where(Job.prompt_id == first.prompt_id).execute()
    expect(page.locator("#action-status")).to_have_text(f"Jobs: {first.prompt_id[:12]} is now error", timeout=WAIT_MS)
    assert checked_ids(page) == [first.prompt_id, third.prompt_id]
    Job.delete().where(Job.prompt_id == third.prompt_id).execute()  # deleted elsewhere: it leaves the selection
    expect(card(page, third)).to_have_count(0, timeout=WAIT_MS)
    expect(page.locator("#selected-count")).to_have_text("1 selected")
    assert checked_ids(page) == [first.prompt_id]
    expect(page.locator("#select-all")).to_have_js_property("indeterminate", True)


def test_delete_dialog_cancel_changes_nothing_and_confirm_removes_cards_and_folders(page: Page, history_url, make_job, settings):
    keep = make_job(minutes_ago=1, files=1)
    doomed = [make_job(minutes_ago=2, files=2), make_job(status="error", minutes_ago=3, files=1)]
    open_history(page, history_url)
    for job in doomed:
        box(page, job).click()
    dialog = page.locator("dialog#confirm-dialog")
    size = sum(path.stat().st_size for job in doomed for path in job_folder(settings, job).iterdir())

    page.locator("#delete-selected").click()
    expect(dialog).to_be_visible()
    assert dialog.evaluate("el => el.matches(':modal')")
    expect(dialog.locator(".confirm-message")).to_have_text(DELETE_MESSAGE.format(count=2))
    expect(dialog.locator(".confirm-usage")).to_have_text(re.compile(r"^That frees 3 files, [\d.]+ KB\.$"))
    assert size > 1024
    expect(dialog.locator('button[value="cancel"]')).to_be_focused()
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()

    page.locator("#delete-selected").click()
    expect(dialog).to_be_visible()
    # A poll that changes the list while the dialog is open replaces neither it nor what it will delete.
    dialog.evaluate("el => { el.__marker = 'same node'; }")
    fresh = make_job(minutes_ago=0)
    expect(page.locator("#job-list .job-card").first).to_have_attribute("data-prompt-id", fresh.prompt_id, timeout=WAIT_MS)
    assert dialog.evaluate("el => el.__marker") == "same node"
    dialog.locator('button[value="cancel"]').click()
    expect(dialog).to_be_hidden()
    expect(page.locator("#job-list .job-card")).to_have_count(4)
    for job in doomed:
        assert job_folder(settings, job).is_dir()
        expect(box(page, job)).to_be_checked()

    page.locator("#delete-selected").click()
    dialog.locator('button[value="confirm"]').click()
    expect(dialog).to_be_hidden()
    for job in doomed:
        expect(card(page, job)).to_have_count(0)
        assert not job_folder(settings, job).exists()
        assert Job.get_or_none(Job.prompt_id == job.prompt_id) is None
    expect(page.locator("#job-list .job-card")).to_have_count(2)
    assert job_folder(settings, keep).is_dir() and job_folder(settings, fresh).is_dir()
    expect(page.locator("#selected-count")).to_have_text("0 selected")
    expect(page.locator("#delete-selected")).to_be_hidden()
    expect(page.locator("#action-toast")).to_contain_text("Deleted 2 jobs (3 files")


def test_a_job_that_cannot_be_deleted_stays_selected_with_the_reason(page: Page, history_url, make_job, settings, tmp_path):
    fine = make_job(minutes_ago=1)
    stuck = make_job(minutes_ago=2, files=0)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    job_folder(settings, stuck).parent.mkdir(parents=True, exist_ok=True)
    os.symlink(elsewhere, job_folder(settings, stuck))  # a folder that is a link: the delete refuses it
    open_history(page, history_url)
    page.locator("#select-all").click()
    page.locator("#delete-selected").click()
    page.locator('#confirm-dialog button[value="confirm"]').click()
    expect(card(page, fine)).to_have_count(0)
    expect(box(page, stuck)).to_be_checked()
    expect(page.locator("#action-toast")).to_contain_text("Not deleted: refused:")
    expect(page.locator("#selected-count")).to_have_text("1 selected")
    # Two more polls later (the list has been swapped since), the job is still selected and says why.
    seen = page.evaluate("window.__polls.changed + window.__polls.idle")
    page.wait_for_function(f"() => window.__polls.changed + window.__polls.idle >= {seen + 2}", timeout=WAIT_MS)
    expect(box(page, stuck)).to_be_checked()
    expect(page.locator("#action-toast")).to_contain_text("Not deleted")
    assert elsewhere.is_dir()


def test_a_double_clicked_retry_makes_one_job_with_the_same_seeds_that_reaches_history(page: Page, history_url, make_job, app):
    original = make_job(
        status="error", files=0, minutes_ago=5,
        params={"positive_prompt": "retry me", "negative_prompt": "", "seed": -1, "width": 64, "height": 64, "batch_size": 1},
        seeds={"seed": 4242},
    )
    page.add_init_script(NOTES)
    open_history(page, history_url)
    card(page, original).locator(".retry-btn").dblclick()
    note = card(page, original).locator(".action-note")
    # The built-in executor may finish before anyone looks: what the note said on the way is recorded.
    page.wait_for_function("() => window.__notes.some(n => n.startsWith('Queued as ') && n.endsWith('/admin/queue'))", timeout=WAIT_MS)
    retries = list(Job.select().where(Job.retry_of == original.prompt_id))
    assert len(retries) == 1
    retry = retries[0]
    assert retry.seeds == {"seed": 4242} and retry.params == original.params
    # The built-in executor runs it; it reaches History, and the original's note points at it.
    expect(card(page, retry)).to_have_attribute("data-status", "completed", timeout=WAIT_MS)
    expect(note).to_have_text(f"Retried as {retry.prompt_id[:12]}: completed")
    assert Job.select().where(Job.retry_of == original.prompt_id).count() == 1
    note.locator("a").click()
    overlay = page.locator("#job-overlay")
    expect(overlay).to_have_attribute("data-prompt-id", retry.prompt_id)
    expect(overlay.locator("[data-field=retry_of] a")).to_have_text(f"retry of {original.prompt_id[:12]}")
    overlay.locator("[data-field=retry_of] a").click()
    expect(overlay).to_have_attribute("data-prompt-id", original.prompt_id)
    expect(overlay.locator("[data-field=retried_as] a")).to_have_text(retry.prompt_id[:12])


def test_a_failed_retry_shows_the_servers_reason(page: Page, history_url, make_job):
    # A field the workflow no longer takes is left out (the retry goes ahead); an input image that is gone is not.
    original = make_job(status="error", files=0, workflow_id="img2vid-example", input_image="gone.png",
                        params={"positive_prompt": "x"}, seeds={})
    open_history(page, history_url)
    card(page, original).locator(".job-excerpt").click()
    overlay = page.locator("#job-overlay")
    overlay.locator(".retry-btn").click()
    expect(overlay.locator(".action-note.is-error")).to_contain_text("Retry failed: input_image", timeout=WAIT_MS)
    expect(overlay.locator(".retry-btn")).to_be_enabled()
    assert Job.select().where(Job.retry_of == original.prompt_id).count() == 0


def test_the_keyboard_selects_and_deletes_two_jobs(page: Page, history_url, make_job, settings):
    jobs = [make_job(minutes_ago=index) for index in range(3)]
    open_history(page, history_url)
    keyboard = page.keyboard
    keyboard.press("j")
    expect(box(page, jobs[0])).to_be_focused()
    keyboard.press("x")
    keyboard.press("j")
    keyboard.press("ArrowDown")
    expect(box(page, jobs[2])).to_be_focused()
    keyboard.press(" ")
    keyboard.press("k")
    expect(box(page, jobs[1])).to_be_focused()
    keyboard.press("Enter")  # open, then close
    expect(page.locator("#job-overlay")).to_have_attribute("data-prompt-id", jobs[1].prompt_id)
    keyboard.press("Escape")
    expect(page.locator("#job-overlay")).to_have_count(0)
    expect(page.locator("#selected-count")).to_have_text("2 selected")
    keyboard.press("Delete")
    dialog = page.locator("#confirm-dialog")
    expect(dialog.locator(".confirm-message")).to_have_text(DELETE_MESSAGE.format(count=2))
    expect(dialog.locator('button[value="cancel"]')).to_be_focused()
    keyboard.press("Tab")
    expect(dialog.locator('button[value="confirm"]')).to_be_focused()
    keyboard.press("Enter")
    expect(card(page, jobs[0])).to_have_count(0)
    expect(card(page, jobs[2])).to_have_count(0)
    expect(page.locator("#job-list .job-card")).to_have_count(1)
    assert not job_folder(settings, jobs[0]).exists() and job_folder(settings, jobs[1]).is_dir()
    expect(page.locator("#action-status")).to_contain_text("Deleted 2 jobs")


def test_download_package_holds_the_files_and_the_api_record(page: Page, history_url, make_job, settings, live_server):
    job = make_job(status="error", files=2)
    open_history(page, history_url)
    card(page, job).locator(".job-excerpt").click()
    with page.expect_download() as download_info:
        page.locator("#job-overlay a.download-package").click()
    download = download_info.value
    assert download.suggested_filename == f"{job.output_dir}.zip"
    record = page.request.get(f"{live_server.url}/api/admin/history/{job.prompt_id}").json()
    with zipfile.ZipFile(download.path()) as archive:
        assert sorted(archive.namelist()) == ["job.json", "output/final_00001_.png", "output/final_00002_.png"]
        assert json.loads(archive.read("job.json")) == record
        for name in ("final_00001_.png", "final_00002_.png"):
            assert archive.read(f"output/{name}") == (job_folder(settings, job) / name).read_bytes()
    with page.expect_download() as download_info:
        page.locator("#job-overlay a.export-json").click()
    with open(download_info.value.path()) as handle:
        assert json.load(handle) == record


def test_export_selected_reimports_as_the_same_three_jobs(page: Page, history_url, make_job, app, tmp_path):
    jobs = [make_job(status=status, minutes_ago=index) for index, status in enumerate(("completed", "error", "stalled", "completed"))]
    chosen = jobs[:3]
    open_history(page, history_url)
    for job in chosen:
        box(page, job).click()
    with page.expect_download() as download_info:
        page.locator("#export-selected").click()
    exported = tmp_path / download_info.value.suggested_filename
    download_info.value.save_as(exported)
    before = [job.to_dict() for job in chosen]
    assert json.loads(exported.read_text()) == before
    Job.delete().where(Job.prompt_id.in_([job.prompt_id for job in chosen])).execute()
    result = app.test_cli_runner().invoke(args=["history", "import", str(exported)])
    assert result.exit_code == 0, result.output
    assert "imported 3 (3 new, 0 updated)" in result.output
    again = [Job.get_by_id(job.prompt_id).to_dict() for job in chosen]
    assert again == before


def test_delete_buttons_are_disabled_while_the_delete_is_in_flight_and_it_posts_once(page: Page, history_url, make_job):
    jobs = [make_job(minutes_ago=index) for index in range(2)]
    open_history(page, history_url)
    held = []
    page.route("**/admin/history/delete", lambda route: held.append(route))
    page.locator("#select-all").click()
    page.locator("#delete-selected").click()
    confirm = page.locator('#confirm-dialog button[value="confirm"]')
    confirm.click()
    expect(confirm).to_be_disabled()
    expect(confirm).to_have_text("Deleting…")
    expect(page.locator("#delete-selected")).to_be_disabled()
    page.keyboard.press("Escape")  # a delete on its way cannot be cancelled: the dialog waits for its end
    expect(page.locator("#confirm-dialog")).to_be_visible()
    page.wait_for_function("() => true")  # let the held request reach the route handler
    assert len(held) == 1
    held[0].continue_()
    expect(page.locator("#confirm-dialog")).to_be_hidden()
    expect(page.locator("#job-list .job-card")).to_have_count(0)
    expect(page.locator("#delete-selected")).to_be_enabled()
    assert len(held) == 1
    assert Job.select().where(Job.prompt_id.in_([job.prompt_id for job in jobs])).count() == 0



def test_selection_survives_loading_the_next_page_and_select_all_takes_it_in(page: Page, history_url, make_job, settings):
    jobs = [make_job(files=0, minutes_ago=index) for index in range(settings.page_size + 5)]
    open_history(page, history_url)
    box(page, jobs[0]).click()
    page.locator(".list-sentinel").scroll_into_view_if_needed()
    last = jobs[-1]
    expect(card(page, last)).to_have_count(1, timeout=WAIT_MS)
    expect(box(page, jobs[0])).to_be_checked()
    box(page, last).click()
    fresh = make_job(files=0, minutes_ago=-1)  # a poll brings a job on top; the loaded page is kept
    expect(page.locator("#job-list .job-card").first).to_have_attribute("data-prompt-id", fresh.prompt_id, timeout=WAIT_MS)
    assert checked_ids(page) == [jobs[0].prompt_id, last.prompt_id]
    page.locator("#select-all").click()
    expect(page.locator("#selected-count")).to_have_text(f"{len(jobs) + 1} selected")


def test_with_only_htmx_loaded_delete_and_retry_still_work(page: Page, history_url, make_job, settings):
    """Our own scripts blocked: the server's HTML does it all (a confirm dialog, the refreshed list, the retry note)."""
    doomed = [make_job(minutes_ago=index + 1) for index in range(2)]
    failed = make_job(status="error", files=0, minutes_ago=5, params={"positive_prompt": "again", "seed": 3}, seeds={"seed": 3})
    blocked = []
    page.route(re.compile(r"/static/(history|selection|queue)\.js"), lambda route: (blocked.append(route.request.url), route.abort()))
    open_history(page, history_url)
    assert len(blocked) == 2 and page.evaluate("typeof window.htmx") == "object"
    expect(page.locator("#delete-selected")).to_be_hidden()
    for job in doomed:
        box(page, job).check()
    page.locator("#delete-selected").click()
    dialog = page.locator("dialog#confirm-dialog")
    expect(dialog.locator(".confirm-message")).to_have_text(DELETE_MESSAGE.format(count=2))
    expect(dialog.locator(".confirm-usage")).to_have_text(re.compile(r"^That frees 2 files, [\d.]+ KB\.$"))
    dialog.locator('button[value="cancel"]').click()  # a dialog form: closes without a script
    expect(dialog).to_be_hidden()
    page.locator("#delete-selected").click()
    dialog.locator('button[value="confirm"]').click()
    for job in doomed:
        expect(card(page, job)).to_have_count(0)
        assert not job_folder(settings, job).exists()
    expect(page.locator("#action-toast")).to_contain_text("Deleted 2 jobs (2 files")
    expect(dialog).to_be_hidden()
    card(page, failed).locator(".retry-btn").click()
    note = card(page, failed).locator(".action-note")
    expect(note).to_have_text(re.compile(r"^(Queued as|Retried as) "), timeout=WAIT_MS)
    assert Job.select().where(Job.retry_of == failed.prompt_id).count() == 1


def test_the_overlays_retry_note_follows_the_retry_to_its_end(page: Page, history_url, make_job):
    original = make_job(status="error", files=0, params={"positive_prompt": "again", "seed": 3}, seeds={"seed": 3})
    open_history(page, history_url)
    card(page, original).locator(".job-excerpt").click()
    overlay = page.locator("#job-overlay")
    overlay.locator(".retry-btn").click()
    page.wait_for_function("() => document.querySelector('#job-overlay .action-note')", timeout=WAIT_MS)
    retry = Job.get(Job.retry_of == original.prompt_id)
    # The overlay is not part of the polled list: its Retry box asks again by itself until the retry ends.
    expect(overlay.locator(".action-note")).to_have_text(f"Retried as {retry.prompt_id[:12]}: completed", timeout=WAIT_MS)
    expect(card(page, original).locator(".action-note")).to_have_text(f"Retried as {retry.prompt_id[:12]}: completed")
