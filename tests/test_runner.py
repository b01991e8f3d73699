"""The runner: what the store and the event bus say as jobs move; stalls; restart reconciliation; demo; queue page."""
from __future__ import annotations

import datetime
import json
import sqlite3
import threading
import time

import pytest
from bs4 import BeautifulSoup

from history.executors.base import Executor
from history.executors.builtin import RESTART_MESSAGE
from history.models import Job
from history.models import utcnow
from tests.conftest import another_app
from tests.conftest import same_origin_client
from tests.conftest import wait_for


def record(db, prompt_id):
    job = Job.get_or_none(Job.prompt_id == prompt_id)
    return job.to_dict() if job else None


def drain(subscription) -> list[dict]:
    events = []
    while (message := subscription.get(timeout=0)) is not None:
        events.append(json.loads(message))
    return events


class HangingExecutor(Executor):
    """Starts every job and then never reports again, like a hung ComfyUI; or reports progress for a while."""

    name = "hanging"

    def __init__(self, reporter, keep_alive_for: float = 0.0):
        super().__init__(reporter)
        self.keep_alive_for = keep_alive_for
        self.forgotten = []
        self._stop = threading.Event()
        self._threads = []

    def submit(self, submission):
        thread = threading.Thread(target=self._run, args=(submission.prompt_id,), daemon=True)
        self._threads.append(thread)
        thread.start()

    def _run(self, prompt_id):
        self.reporter.started(prompt_id, utcnow())
        if not self.keep_alive_for:
            return
        deadline = time.monotonic() + self.keep_alive_for
        step = 0
        while time.monotonic() < deadline and not self._stop.wait(0.05):
            step += 1
            self.reporter.progress(prompt_id, "1", step, 1000)
        if not self._stop.is_set():
            self.reporter.completed(prompt_id, [], utcnow())

    def forget(self, prompt_id):
        self.forgotten.append(prompt_id)

    def stop(self):
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)


@pytest.fixture
def quick_stalls(app):
    """A stall timeout of 0.6 s for this app (set before its first request starts the watcher)."""
    app.extensions["studio"].runner.stall_seconds = 0.6


def use_executor(app, executor_class, **kwargs):
    studio = app.extensions["studio"]
    executor = executor_class(studio.runner, **kwargs)
    studio.executor = executor
    studio.runner.executor = executor
    return executor


def test_a_running_job_with_no_events_stalls(app, quick_stalls, client, db):
    executor = use_executor(app, HangingExecutor)
    with app.extensions["studio"].bus.subscribe() as events:
        prompt_id = client.post("/api/run/txt2img-example/execute", json={"params": {}}).json["prompt_id"]
        stalled = wait_for(lambda: (job := record(db, prompt_id)) and job["status"] == "stalled" and job)
        types = []
        # The record is written before its event goes out: wait for the event too.
        wait_for(lambda: types.extend(event["type"] for event in drain(events)) or "job.stalled" in types)
    assert stalled["error"].startswith("no progress since 20")
    assert "STUDIO_STALL_SECONDS=0.6" in stalled["error"]
    assert stalled["finished_at"] and stalled["duration"] >= 0.6
    assert executor.forgotten == [prompt_id]
    assert types == ["job.queued", "job.started", "job.stalled"]


def test_progress_keeps_a_job_from_stalling(app, quick_stalls, client, db):
    use_executor(app, HangingExecutor, keep_alive_for=1.0)
    prompt_id = client.post("/api/run/txt2img-example/execute", json={"params": {}}).json["prompt_id"]
    ended = wait_for(lambda: (job := record(db, prompt_id)) and job["status"] not in ("queued", "running") and job)
    assert ended["status"] == "completed"
    assert ended["duration"] >= 0.9


def test_jobs_left_queued_or_running_are_reconciled_at_start(app, app_config, make_job, db):
    running = make_job(status="running", files=0)
    queued = make_job(status="queued", files=0)
    done = make_job(status="completed")
    with another_app(app_config) as restarted:  # the next process, on the same store
        restarted.test_client().get("/api/workflows")  # its first request starts the runner
    for job in (running, queued):
        after = record(db, job.prompt_id)
        assert after["status"] == "stalled"
        assert after["error"] == RESTART_MESSAGE
        assert after["finished_at"] is not None
    assert record(db, running.prompt_id)["duration"] >= 0
    assert record(db, queued.prompt_id)["duration"] is None  # it never ran
    assert record(db, done.prompt_id) == done.to_dict()


def test_jobs_made_after_start_up_are_not_leftovers(client, make_job, db):
    running = make_job(status="running", files=0)
    client.get("/api/workflows")
    assert record(db, running.prompt_id)["status"] == "running"


def test_a_deleted_running_job_never_comes_back(app, make_job, db):
    runner = app.extensions["studio"].runner
    job = make_job(status="queued", files=0)
    with app.extensions["studio"].bus.subscribe() as events:
        runner.started(job.prompt_id, utcnow())
        Job.delete().where(Job.prompt_id == job.prompt_id).execute()
        runner.progress(job.prompt_id, "2", 1, 3)
        runner.completed(job.prompt_id, [{"filename": "x_00001_.png", "subfolder": "", "type": "output"}], utcnow())
        runner.failed(job.prompt_id, "late", utcnow())
        types = [event["type"] for event in drain(events)]
        runner.progress(job.prompt_id, "3", 2, 3)  # after the runner found it gone
        types += [event["type"] for event in drain(events)]
    assert Job.get_or_none(Job.prompt_id == job.prompt_id) is None
    # Progress is ephemeral and may still flicker by; the job never ends again, and is then forgotten.
    assert types == ["job.started", "job.progress"]


@pytest.mark.sqlite_only  # another writer's lock, held past the busy timeout, is SQLite's busy store
@pytest.mark.parametrize("app_config", [{"STUDIO_BUSY_SECONDS": "0.1"}], indirect=True)
def test_a_job_that_ends_while_the_store_is_busy_still_records_its_end(app, client, db):
    runner = app.extensions["studio"].runner
    real_completed = runner.completed
    held = []

    def completed_while_another_process_writes(prompt_id, outputs, at):
        # Another process holds the write lock for 5 busy timeouts just as this job ends.
        other = sqlite3.connect(db.obj.database, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")
        held.append(prompt_id)
        threading.Timer(0.5, lambda: (other.commit(), other.close())).start()
        real_completed(prompt_id, outputs, at)

    runner.completed = completed_while_another_process_writes
    prompt_id = client.post("/api/run/txt2img-example/execute", json={"params": {}}).json["prompt_id"]
    ended = wait_for(lambda: (job := record(db, prompt_id)) and job["status"] not in ("queued", "running") and job)
    assert held == [prompt_id]
    assert ended["status"] == "completed" and ended["outputs"]
    assert client.get(f"/api/admin/history/{prompt_id}").json["status"] == "completed"


def test_an_ended_job_is_not_overwritten(app, make_job, db):
    job = make_job(status="error")
    app.extensions["studio"].runner.completed(job.prompt_id, [], utcnow())
    assert record(db, job.prompt_id) == job.to_dict()


def test_duration_is_the_run_not_the_queue_wait(app, make_job, db):
    runner = app.extensions["studio"].runner
    job = make_job(status="queued", files=0, queued_at=utcnow() - datetime.timedelta(hours=1))
    started = utcnow()
    runner.started(job.prompt_id, started)
    refs = [{"filename": "clip_00001_.webp", "subfolder": "comfyui-studio/x", "type": "output", "animated": True},
            {"filename": "still_00001_.png", "subfolder": "comfyui-studio/x", "type": "output"}]
    runner.completed(job.prompt_id, refs, started + datetime.timedelta(seconds=2.5))
    after = record(db, job.prompt_id)
    assert after["status"] == "completed" and after["duration"] == 2.5
    assert after["output"] == {"filename": "clip_00001_.webp", "subfolder": "comfyui-studio/x", "type": "output"}
    assert after["outputs"][0] == after["output"]


def test_events_of_a_run_in_order_with_their_data(app, client):
    with app.extensions["studio"].bus.subscribe() as subscription:
        prompt_id = client.post("/api/run/txt2img-example/execute", json={"params": {"seed": 3}}).json["prompt_id"]
        events = []
        wait_for(lambda: events.extend(drain(subscription)) or any(e["type"] == "job.completed" for e in events))
    types = [event["type"] for event in events]
    assert types == ["job.queued", "job.started", "job.progress", "job.progress", "job.progress", "job.completed"]
    assert all(isinstance(event["ts"], float) for event in events)
    assert [event["data"] for event in events if event["type"] == "job.progress"] == [
        {"prompt_id": prompt_id, "node": node, "value": value, "max": 3} for node, value in (("1", 1), ("2", 2), ("3", 3))
    ]
    assert events[0]["data"]["status"] == "queued" and events[1]["data"]["status"] == "running"
    assert events[-1]["data"]["prompt_id"] == prompt_id and events[-1]["data"]["status"] == "completed"


def test_without_the_runner_a_job_stays_queued(app_config, db):
    with another_app({**app_config, "START_RUNNER": False}) as app:
        client = same_origin_client(app)
        prompt_id = client.post("/api/run/txt2img-example/execute", json={"params": {}}).json["prompt_id"]
        assert not app.extensions["studio"].started
        assert client.get(f"/api/admin/history/{prompt_id}").json["status"] == "queued"


def test_demo_fills_a_fresh_store_once(app_config, db):
    with another_app({**app_config, "STUDIO_DEMO": "1"}) as app:
        app.test_client().get("/api/workflows")

        def all_ended():
            jobs = list(Job.select())
            return len(jobs) >= 5 and all(job.status not in ("queued", "running") for job in jobs) and jobs

        jobs = wait_for(all_ended, timeout=20)
    statuses = sorted(job.status for job in jobs)
    assert statuses == ["completed"] * 4 + ["error"]
    failed = next(job for job in jobs if job.status == "error")
    assert "example" in failed.workflow_name and failed.error
    assert all(job.output for job in jobs if job.status == "completed")

    with another_app({**app_config, "STUDIO_DEMO": "1"}) as again:  # the store is no longer empty
        again.test_client().get("/api/workflows")
        assert again.extensions["studio"].demo_wanted is False
        assert Job.select().count() == len(jobs)


# ---- the queue page --------------------------------------------------------------------------------

def test_queue_page_shows_queued_and_running_jobs_with_progress(app, client, make_job):
    runner = app.extensions["studio"].runner
    running = make_job(status="running", files=0)
    queued = make_job(status="queued", files=0)
    make_job(status="completed")
    runner.follow(running.prompt_id, running=True)
    runner.progress(running.prompt_id, "2", 1, 3)

    response = client.get("/admin/queue")
    assert response.status_code == 200
    page = BeautifulSoup(response.text, "html.parser")
    assert page.select_one("html") is not None
    rows = page.select("#queue-list .queue-job")
    assert {row["data-prompt-id"]: row["data-status"] for row in rows} == {
        running.prompt_id: "running", queued.prompt_id: "queued",
    }
    running_row = page.select_one(f'.queue-job[data-prompt-id="{running.prompt_id}"]')
    bar = running_row.select_one("progress")
    assert (bar["value"], bar["max"]) == ("1", "3")
    assert "node #2 · 1/3" in running_row.select_one(".progress-text").text
    poller = page.select_one("#queue-list")
    assert poller["hx-trigger"].startswith("every 2s") and poller["hx-get"].endswith("/admin/queue")


def test_queue_fragment_for_htmx_is_the_list_alone(client, make_job):
    make_job(status="queued", files=0)
    response = client.get("/admin/queue", headers={"HX-Request": "true"})
    fragment = BeautifulSoup(response.text, "html.parser")
    assert fragment.select_one("html") is None
    assert fragment.select_one("section#queue-list") is not None
    assert len(fragment.select(".queue-job")) == 1
    assert response.headers["Cache-Control"] == "no-store"
    assert "HX-Request" in response.headers["Vary"]


def test_queue_page_when_idle(client):
    page = BeautifulSoup(client.get("/admin/queue").text, "html.parser")
    assert page.select(".queue-job") == []
    assert "Nothing is queued or running" in page.select_one("#queue-list").text


def test_stop_ends_background_work_promptly(app, client):
    prompt_id = client.post("/api/run/txt2img-example/execute", json={"params": {}}).json["prompt_id"]
    wait_for(lambda: client.get(f"/api/admin/history/{prompt_id}").json["status"] == "completed")
    before = {thread.name for thread in threading.enumerate()}
    assert {"stall-watcher", "builtin-executor-0"} <= before
    started = time.monotonic()
    app.extensions["studio"].stop()
    assert time.monotonic() - started < 2
    after = {thread.name for thread in threading.enumerate()}
    assert not {name for name in after if name == "stall-watcher" or name.startswith("builtin-executor")}


def test_a_cli_command_never_reconciles_a_servers_jobs(app_config, make_job, db):
    running = make_job(status="running", files=0)
    with another_app(app_config) as cli_app:  # `flask --app app history export` builds an app too
        result = cli_app.test_cli_runner().invoke(args=["history", "export"])
        assert result.exit_code == 0, result.output
        assert not cli_app.extensions["studio"].started
    assert record(db, running.prompt_id)["status"] == "running"


# -- what ComfyUI reports: saved files, previews, one start ----------------------------------------------

SAVED = {"filename": "final_00001_.png", "subfolder": "comfyui-studio/x", "type": "output"}
PREVIEW = {"filename": "ComfyUI_temp_abcde_00001_.png", "subfolder": "", "type": "temp"}


def test_previews_are_never_a_jobs_outputs(app, make_job, db):
    job = make_job(status="running", files=0)
    app.extensions["studio"].runner.completed(job.prompt_id, [PREVIEW, SAVED], utcnow())
    stored = record(db, job.prompt_id)
    assert stored["outputs"] == [SAVED] and stored["output"] == SAVED


def test_a_job_that_failed_after_saving_keeps_what_it_saved(app, make_job, db):
    job = make_job(status="running", files=0)
    app.extensions["studio"].runner.failed(job.prompt_id, "node Upscale (#3): boom", utcnow(), outputs=[PREVIEW, SAVED])
    stored = record(db, job.prompt_id)
    assert (stored["status"], stored["outputs"], stored["output"]) == ("error", [SAVED], SAVED)


def test_a_process_that_takes_over_a_running_job_does_not_say_it_started_again(app, make_job, db):
    job = make_job(status="running", files=0)
    runner = app.extensions["studio"].runner
    with app.extensions["studio"].bus.subscribe() as events:
        runner.started(job.prompt_id, utcnow())  # what a reconcile after a studio restart reports
        assert [event["type"] for event in drain(events)] == []
    queued = make_job(status="queued", files=0)
    with app.extensions["studio"].bus.subscribe() as events:
        runner.started(queued.prompt_id, utcnow())
        runner.started(queued.prompt_id, utcnow())
        assert [event["type"] for event in drain(events)] == ["job.started"]
