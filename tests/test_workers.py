"""Processes that run jobs, in one process: the SQLite layout of one runner, waiting jobs and their claim,
and a stalled job whose real end comes later."""
from __future__ import annotations

import json

import pytest

from history import workers
from history.config import ConfigError
from history.config import load_settings
from history.models import Job
from history.models import WaitingJob
from history.models import utcnow
from tests.conftest import another_app
from tests.conftest import same_origin_client
from tests.conftest import wait_for


def record(prompt_id: str) -> dict:
    return Job.get_by_id(prompt_id).to_dict()


@pytest.mark.parametrize("role", ["web", "worker"])
def test_web_and_worker_roles_refuse_a_sqlite_store(tmp_path, role):
    with pytest.raises(ConfigError, match=f"STUDIO_ROLE={role} needs PostgreSQL"):
        load_settings({"STUDIO_DATA_DIR": str(tmp_path), "STUDIO_ROLE": role})


def test_an_unknown_role_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="STUDIO_ROLE must be one of all, web, worker"):
        load_settings({"STUDIO_DATA_DIR": str(tmp_path), "STUDIO_ROLE": "gpu"})


@pytest.mark.sqlite_only
def test_a_second_runner_on_one_sqlite_store_is_refused_while_commands_still_work(app, client, app_config, make_job):
    assert client.get("/api/workflows").status_code == 200  # the first process runs the jobs
    make_job(status="completed")
    with another_app(app_config) as second:
        answer = second.test_client().get("/admin/history")
        assert answer.status_code == 503
        message = answer.get_data(as_text=True)
        assert "already runs this studio's jobs on the SQLite store" in message
        assert "STUDIO_ROLE=web" in message
        assert not second.extensions["studio"].started
        # A command (flask history export) runs no jobs, so it takes no lock and works beside the server.
        exported = second.test_cli_runner().invoke(args=["history", "export"])
        assert exported.exit_code == 0, exported.output
        assert len(json.loads(exported.output)) == 1
    app.extensions["studio"].stop()
    with another_app(app_config) as third:  # once the first has stopped, the next may run them
        assert third.test_client().get("/api/workflows").status_code == 200
        assert third.extensions["studio"].started


def test_a_job_posted_where_nothing_runs_waits_for_the_next_worker(app_config, db):
    quiet = {**app_config, "START_RUNNER": False}  # serves like a web process: it runs nothing
    with another_app(quiet) as web:
        answer = same_origin_client(web).post("/api/run/txt2img-example/execute", json={"params": {"width": 64}})
        assert answer.status_code == 202 and answer.json["status"] == "queued"
        prompt_id = answer.json["prompt_id"]
    waiting = Job.get_by_id(prompt_id)
    assert waiting.status == "queued" and waiting.owner is None
    assert WaitingJob.get_or_none(WaitingJob.prompt_id == prompt_id) is not None
    with another_app({**app_config, "STUDIO_HEARTBEAT_SECONDS": "0.2"}) as worker:
        worker.test_client().get("/api/workflows")  # starts it: it claims what waits
        done = wait_for(lambda: (job := record(prompt_id))["status"] == "completed" and job, what="the job ran")
        assert Job.get_by_id(prompt_id).owner == worker.extensions["studio"].worker_id
    assert done["outputs"] and done["error"] is None
    assert WaitingJob.get_or_none(WaitingJob.prompt_id == prompt_id) is None


def test_claims_never_hand_one_job_to_two_workers(app, make_job, db):
    prompt_ids = [make_job(status="queued", files=0).prompt_id for _ in range(5)]
    for prompt_id in prompt_ids:
        workers.enqueue(prompt_id, Job.get_by_id(prompt_id).queued_at)
    first = [job.prompt_id for job, _graph in workers.claim("first", 3)]
    second = [job.prompt_id for job, _graph in workers.claim("second", 3)]
    assert len(first) == 3 and len(second) == 2
    assert sorted(first + second) == sorted(prompt_ids)
    assert workers.claim("third", 3) == []
    assert {job.prompt_id: job.owner for job in Job.select()} == {**dict.fromkeys(first, "first"), **dict.fromkeys(second, "second")}
    workers.give_back("second", second)  # it stops before starting them: they wait again, for anyone
    assert sorted(job.prompt_id for job, _graph in workers.claim("third", 5)) == sorted(second)


def test_a_stalled_job_that_then_completes_reads_completed_with_the_stall_noted(app, make_job, db):
    runner = app.extensions["studio"].runner
    job = make_job(status="running", files=0)
    refs = [{"filename": "late_00001_.png", "subfolder": f"comfyui-studio/{job.output_dir}", "type": "output"}]
    with app.extensions["studio"].bus.subscribe() as events:
        runner.failed(job.prompt_id, "its worker went silent", utcnow(), status="stalled")
        assert record(job.prompt_id)["status"] == "stalled"
        runner.failed(job.prompt_id, "stalled again", utcnow(), status="stalled")  # a second stall changes nothing
        runner.completed(job.prompt_id, refs, utcnow())
        types = [json.loads(events.get(timeout=5))["type"] for _ in range(2)]
    after = record(job.prompt_id)
    assert types == ["job.stalled", "job.completed"]
    assert after["status"] == "completed"
    assert after["outputs"] == refs
    assert after["error"].startswith("stalled at ")
    assert "(its worker went silent), then completed at " in after["error"]
    runner.failed(job.prompt_id, "too late", utcnow())  # a real end is final
    assert record(job.prompt_id) == after


def test_a_stalled_job_that_then_fails_reads_error_with_both_reasons(app, make_job, db):
    runner = app.extensions["studio"].runner
    job = make_job(status="running", files=0)
    runner.failed(job.prompt_id, "its worker went silent", utcnow(), status="stalled")
    runner.failed(job.prompt_id, "node Save (#3): disk full", utcnow())
    after = record(job.prompt_id)
    assert after["status"] == "error"
    assert "(its worker went silent), then failed: node Save (#3): disk full" in after["error"]


@pytest.mark.parametrize("app_config", [{"STUDIO_HEARTBEAT_SECONDS": "0.05"}], indirect=True)
def test_heartbeats_and_the_claim_poll_leave_an_idle_poll_reading_nothing(app, client, make_job, monkeypatch):
    from history import jobs

    make_job()
    etag = client.get("/admin/history/list", headers={"HX-Request": "true"}).headers["ETag"].strip('"')  # starts it
    bus = app.extensions["studio"].bus
    if hasattr(bus, "wait_listening"):
        assert bus.wait_listening()
    ticks = []
    for name in ("take_over", "claim", "beat"):
        original = getattr(workers, name)
        monkeypatch.setattr(workers, name, lambda *args, _original=original, _name=name, **kwargs:
                            ticks.append(_name) or _original(*args, **kwargs))
    poll = {"HX-Request": "true", "X-List-ETag": etag}
    assert client.get("/admin/history/list", headers=poll).status_code == 204  # known from here on
    reads = []
    original_etag = jobs.list_etag
    monkeypatch.setattr(jobs, "list_etag", lambda *args, **kwargs: reads.append(args) or original_etag(*args, **kwargs))
    assert client.get("/admin/history/list", headers=poll).status_code == 204
    wait_for(lambda: ticks.count("take_over") >= 3 and ticks.count("claim") >= 3, what="a few beats and claim polls")
    assert client.get("/admin/history/list", headers=poll).status_code == 204
    assert reads == []


def test_jobs_a_stopping_worker_never_started_run_on_the_next_one(app, app_config, client, db):
    slow = {"params": {"width": 2048, "height": 2048}}  # half a second each or more: both threads busy
    prompt_ids = [client.post("/api/run/txt2img-example/execute", json=slow).json["prompt_id"] for _ in range(4)]
    stopped = app.extensions["studio"].worker_id
    app.extensions["studio"].stop()  # SIGTERM: the two threads' jobs are cut off, the two behind them given back
    waiting = {row.prompt_id for row in WaitingJob.select()}
    assert len(waiting) >= 2 and waiting <= set(prompt_ids)
    assert all(Job.get_by_id(prompt_id).owner is None for prompt_id in waiting)
    with another_app(app_config) as next_one:
        next_one.test_client().get("/api/workflows")  # starts it
        ended = wait_for(lambda: all(record(p)["status"] not in ("queued", "running") for p in prompt_ids)
                         and [record(p) for p in prompt_ids], timeout=60, what="every job ends")
    by_id = {job["prompt_id"]: job for job in ended}
    assert {by_id[prompt_id]["status"] for prompt_id in waiting} == {"completed"}
    # The ones cut off mid-run ended with the process that ran them (the next one says so), unless they finished first.
    assert {(job["status"], job["error"]) for job in ended if job["prompt_id"] not in waiting} <= {
        ("stalled", f"its worker {stopped} stopped while this job ran"), ("completed", None)}
