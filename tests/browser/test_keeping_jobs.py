"""Stars, "Select all N matching", the Failures view, the Storage panel and Compare, in Chromium."""
from __future__ import annotations

import datetime
import re

import pytest
from playwright.sync_api import Page
from playwright.sync_api import expect

from history.models import Job
from history.models import utcnow
from tests.browser.test_actions import DELETE_MESSAGE
from tests.browser.test_actions import open_history

pytestmark = [pytest.mark.browser, pytest.mark.sqlite_only]

WAIT_MS = 10_000
OOM = "node KSampler (#3): RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
OOM_AGAIN = "node KSampler (#9): RuntimeError: CUDA out of memory. Tried to allocate 1.50 GiB"


def test_a_star_from_a_card_survives_a_poll_and_a_reload(page: Page, history_url, make_job):
    job = make_job()
    open_history(page, history_url)
    star = page.locator(f"#star-card-{job.prompt_id} .star-btn")
    expect(star).to_have_attribute("aria-pressed", "false")
    star.click()
    expect(star).to_have_attribute("aria-pressed", "true")
    assert Job.get_by_id(job.prompt_id).starred
    make_job(minutes_ago=0)  # the next poll brings a change and re-renders the list
    expect(page.locator("#job-list .job-card")).to_have_count(2, timeout=WAIT_MS)
    expect(page.locator(f"#star-card-{job.prompt_id} .star-btn")).to_have_attribute("aria-pressed", "true")
    page.reload()
    expect(page.locator(f"#star-card-{job.prompt_id} .star-btn")).to_have_attribute("aria-pressed", "true")


def select_all_matching(page: Page, count: int) -> None:
    link = page.locator("#select-matching")
    expect(link).to_have_text(f"Select all {count} matching")
    link.click()
    expect(page.locator("#matching-selection")).to_contain_text(f"All {count} matching jobs are selected.")


def test_select_all_137_matching_then_delete_takes_exactly_those_and_not_a_newcomer(page: Page, history_url, make_job):
    for _ in range(137):
        make_job("error", files=0)
    keep = make_job("completed", files=0)
    open_history(page, history_url + "?status=error")
    select_all_matching(page, 137)
    newcomer = make_job("error", files=0, queued_at=utcnow())  # arrives after the selection was made
    expect(page.locator("#job-list .job-card").first).to_have_attribute("data-prompt-id", newcomer.prompt_id, timeout=WAIT_MS)
    page.locator("#delete-selected").click()
    dialog = page.locator("dialog#confirm-dialog")
    expect(dialog.locator(".confirm-message")).to_have_text(DELETE_MESSAGE.format(count=137))
    dialog.locator('button[value="confirm"]').click()
    expect(page.locator("#action-toast")).to_contain_text("Deleted 137 jobs", timeout=WAIT_MS)
    assert {job.prompt_id for job in Job.select(Job.prompt_id)} == {keep.prompt_id, newcomer.prompt_id}
    expect(page.locator("#job-list .job-card")).to_have_count(1)


def test_a_stale_count_gets_the_new_count_in_the_dialog_and_changes_nothing_until_confirmed(page: Page, history_url, make_job):
    made = [make_job("error", files=0) for _ in range(60)]
    open_history(page, history_url + "?status=error")
    select_all_matching(page, 60)
    page.locator("#delete-selected").click()
    dialog = page.locator("dialog#confirm-dialog")
    expect(dialog.locator(".confirm-message")).to_have_text(DELETE_MESSAGE.format(count=60))
    Job.update(starred=True).where(Job.prompt_id == made[5].prompt_id).execute()  # starred meanwhile: it is kept
    dialog.locator('button[value="confirm"]').click()
    expect(dialog.locator(".confirm-error")).to_have_text(re.compile(r"now matches 59 jobs, not 60: nothing was changed"))
    expect(dialog.locator(".confirm-message")).to_have_text(DELETE_MESSAGE.format(count=59))
    expect(dialog.locator(".confirm-usage")).to_contain_text("1 starred job match and are kept")
    assert Job.select().count() == 60
    dialog.locator('button[value="confirm"]').click()
    expect(page.locator("#action-toast")).to_contain_text("Deleted 59 jobs", timeout=WAIT_MS)
    assert [job.prompt_id for job in Job.select(Job.prompt_id)] == [made[5].prompt_id]


def test_failures_group_the_two_out_of_memory_messages_and_retry_all_makes_one_job_each(page: Page, live_server, make_job):
    first = make_job("error", error=OOM, minutes_ago=1)
    second = make_job("stalled", error=OOM_AGAIN, minutes_ago=2)
    other = make_job("error", error="node VAEDecode (#8): ValueError: bad shape", minutes_ago=3)
    page.goto(live_server.url + "/admin/history/failures")
    groups = page.locator(".failure-group")
    expect(groups).to_have_count(2)
    oom = groups.first
    expect(oom.locator(".failure-count")).to_have_text("2 jobs")
    expect(oom.locator(".failure-text")).to_have_text("node KSampler (#N): RuntimeError: CUDA out of memory. Tried to allocate N GiB")
    oom.locator(".failure-retry").click()
    dialog = page.locator("dialog#confirm-dialog")
    expect(dialog.locator(".confirm-message")).to_have_text("Retry 2 failed or stalled job(s)? Each gets one new job.")
    dialog.locator('button[value="confirm"]').click()
    expect(page.locator(".action-notice")).to_have_text("Queued 2 retries.", timeout=WAIT_MS)
    retries = list(Job.select().where(Job.retry_of.is_null(False)))
    assert sorted(job.retry_of for job in retries) == sorted([first.prompt_id, second.prompt_id])
    assert other.prompt_id not in {job.retry_of for job in retries}


def test_the_storage_panels_bars_link_to_the_jobs_they_count(page: Page, history_url, make_job):
    # The panel charts the last 30 days from now: the jobs are queued within one past hour of today, whatever the date.
    anchor = (utcnow() - datetime.timedelta(hours=1)).replace(minute=30, second=0, microsecond=0)

    def queued(minutes: int) -> datetime.datetime:
        return anchor - datetime.timedelta(minutes=minutes)

    errors = [make_job("error", queued_at=queued(index)) for index in range(2)]
    make_job("completed", queued_at=queued(3))
    scenes = make_job("completed", queued_at=queued(4), workflow_id="scenes-example", workflow_name="Scenes (example)")
    open_history(page, history_url)
    page.locator("#storage-link").click()
    panel = page.locator("#storage-panel")
    expect(panel).to_be_visible()
    panel.locator(".chart-days a:has(rect.status-error)").click()
    expect(page.locator("#job-list .job-card")).to_have_count(2)
    assert sorted(page.eval_on_selector_all("#job-list .job-card", "cards => cards.map(c => c.dataset.promptId)")) == sorted(
        job.prompt_id for job in errors
    )
    page.goto(history_url + "/storage")  # the panel on its own URL, rendered by the server
    page.locator(".chart-workflows a", has=page.locator("title", has_text="Scenes (example)")).click()
    expect(page.locator("#job-list .job-card")).to_have_count(1)
    expect(page.locator("#job-list .job-card")).to_have_attribute("data-prompt-id", scenes.prompt_id)


def test_compare_marks_the_one_changed_seed_between_a_job_and_its_retry(page: Page, history_url, make_job):
    original = make_job("error", minutes_ago=2, seeds={"seed": 42})
    retry = make_job("completed", minutes_ago=1, params=original.params, seeds={"seed": 43}, retry_of=original.prompt_id)
    open_history(page, history_url)
    compare = page.locator("#compare-selected")
    page.locator(f"#select-{original.prompt_id}").click()
    expect(compare).to_be_hidden()
    page.locator(f"#select-{retry.prompt_id}").click()
    compare.click()
    expect(page).to_have_url(re.compile(r"/admin/history/compare\?a=.+&b=.+"))
    marked = page.eval_on_selector_all(
        ".compare-section:is([data-section=params], [data-section=seeds]) .compare-row.differs", "rows => rows.map(r => r.dataset.field)"
    )
    assert marked == ["seeds.seed"]
    expect(page.locator('[data-field="seeds.seed"] .compare-a')).to_have_text("42")
    expect(page.locator('[data-field="seeds.seed"] .compare-b')).to_have_text("43")
