"""Workers on PostgreSQL, in one process: a worker takes over only the jobs of workers whose heartbeat expired."""
from __future__ import annotations

import datetime
import json
import urllib.request
from pathlib import Path

import peewee
import pytest

import history
from history import workers
from history.models import Job
from history.models import WaitingJob
from history.models import Worker
from history.models import utcnow
from tests.conftest import another_app
from tests.conftest import same_origin_client
from tests.conftest import wait_for
from tests.test_comfyui_servers import SMALL
from tests.test_comfyui_servers import doubles  # noqa: F401 (a fixture: two ComfyUI doubles)
from tests.test_comfyui_servers import queue_servers


pytestmark = pytest.mark.postgres_only


def worker_row(worker_id: str, seconds_ago: float) -> None:
    at = utcnow() - datetime.timedelta(seconds=seconds_ago)
    Worker.insert(worker_id=worker_id, role="worker", host="gpu-box", pid=4242, started=at, heartbeat_at=at).execute()


def status_of(prompt_id: str) -> str:
    return Job.get_by_id(prompt_id).status


def test_a_starting_worker_takes_over_only_the_jobs_of_silent_workers(app_config, make_job, db):
    worker_row("silent", seconds_ago=60)  # three 1 s beats long expired
    worker_row("alive", seconds_ago=0)
    lost = make_job(status="running", files=0, owner="silent")
    gone = make_job(status="queued", files=0, owner="stopped-cleanly")  # its row went as it stopped
    last_beat = Worker.get_by_id("silent").heartbeat_at
    busy = make_job(status="running", files=0, owner="alive")
    with another_app({**app_config, "STUDIO_HEARTBEAT_SECONDS": "1"}) as app:
        app.test_client().get("/api/workflows")  # starts it
        me = app.extensions["studio"].worker_id
        wait_for(lambda: status_of(lost.prompt_id) == "stalled" and status_of(gone.prompt_id) == "stalled")
        assert status_of(busy.prompt_id) == "running"  # a live worker's job is never touched
        assert Job.get_by_id(busy.prompt_id).owner == "alive"
        assert Job.get_by_id(lost.prompt_id).error.startswith("its worker gpu-box (pid 4242) stopped sending heartbeats")
        assert Job.get_by_id(lost.prompt_id).finished_at == last_beat  # its duration does not count the silence
        assert Job.get_by_id(gone.prompt_id).error == "its worker stopped-cleanly stopped while this job ran"
        assert Worker.get_or_none(Worker.worker_id == "silent") is None  # its row goes with its jobs
        assert Worker.get_by_id(me).role == "all"
        # Once "alive" stops beating, the live worker takes its job over at its next beats.
        Worker.update(heartbeat_at=utcnow() - datetime.timedelta(seconds=60)).where(Worker.worker_id == "alive").execute()
        wait_for(lambda: status_of(busy.prompt_id) == "stalled", what="the expired worker's job taken over")
        assert Job.get_by_id(busy.prompt_id).owner == me
    assert Worker.get_or_none(Worker.worker_id == me) is None  # it retired as it stopped


def test_a_heartbeat_refreshes_and_expires(app, db):
    workers.register("w1", "worker")
    assert [worker.worker_id for worker in workers.live_workers(30)] == ["w1"]
    Worker.update(heartbeat_at=utcnow() - datetime.timedelta(seconds=31)).execute()
    assert workers.live_workers(30) == []
    assert workers.beat("w1", "worker") is True
    assert [worker.worker_id for worker in workers.live_workers(30)] == ["w1"]
    Worker.delete().execute()  # taken for dead by another: the next beat registers it again
    assert workers.beat("w1", "worker") is False
    assert [worker.worker_id for worker in workers.live_workers(30)] == ["w1"]


def test_a_comfyui_worker_claims_what_waits_and_settles_a_silent_workers_job_from_comfyuis_history(
        app_config, comfyui, make_job, db):
    comfy = {**app_config, **comfyui.studio_settings(), "STUDIO_HEARTBEAT_SECONDS": "1"}
    # A job a silent worker posted to ComfyUI, which ran it while nobody listened.
    graph = json.loads((Path(history.__file__).parent / "workflows/txt2img-example/graph.json").read_text())
    graph["1"]["inputs"].update(width=64, height=64)
    graph["3"]["inputs"]["filename_prefix"] = "comfyui-studio/20261201_120000_abcdef/final"
    orphan = make_job(status="running", files=0, owner="silent", comfyui_server=comfyui.url,
                      output_dir="20261201_120000_abcdef")
    body = json.dumps({"prompt": graph, "client_id": "a-worker-gone-quiet", "prompt_id": orphan.prompt_id}).encode()
    urllib.request.urlopen(urllib.request.Request(f"{comfyui.url}/prompt", data=body, method="POST",
                                                  headers={"Content-Type": "application/json"}), timeout=10).close()
    assert comfyui.wait_idle(10)
    worker_row("silent", seconds_ago=60)
    with another_app({**comfy, "START_RUNNER": False}) as web:  # runs nothing: the job waits for a worker
        posted = same_origin_client(web).post("/api/run/txt2img-example/execute", json={"params": {"width": 64}})
        waiting = posted.json["prompt_id"]
    with another_app(comfy) as worker:
        worker.test_client().get("/api/workflows")  # starts it
        settled = wait_for(lambda: (job := Job.get_by_id(orphan.prompt_id)).status != "running" and job)
        ran = wait_for(lambda: (job := Job.get_by_id(waiting)).status == "completed" and job, what="the waiting job ran")
    assert settled.status == "completed" and settled.error is None  # ComfyUI's history said so: not stalled
    assert settled.outputs
    assert ran.comfyui_server == comfyui.url and ran.outputs


def test_a_web_process_shows_each_comfyui_servers_state_as_the_workers_see_it(app_config, doubles):
    a, b = doubles
    comfy = {**app_config, "STUDIO_COMFYUI_URL": f"{a.url},{b.url}", "STUDIO_INPUT_DIR": str(a.input_dir)}

    with another_app({**comfy, "STUDIO_ROLE": "web"}) as web:
        page = same_origin_client(web)
        # No worker yet: the web process, which follows no server, cannot say.
        assert {state for state, _text in queue_servers(page).values()} == {"unknown"}
        with another_app(comfy) as worker:
            worker.test_client().get("/healthz")  # starts it
            assert worker.extensions["studio"].executor.wait_connected(10)
            a.hold()
            b.hold()
            posted = page.post("/api/run/txt2img-example/execute", json={"params": SMALL})
            assert posted.status_code == 202, posted.json
            server = wait_for(lambda: Job.get_by_id(posted.json["prompt_id"]).comfyui_server, what="the job posted")
            idle = b if server == a.url else a
            shown = wait_for(lambda: (now := queue_servers(page))[server] == ("true", now[server][1]) and "queue 1" in now[server][1]
                             and now, what="the worker's view of the servers on the web process's page")
            assert shown[idle.url][0] == "true" and "queue 0" in shown[idle.url][1]
            idle.go_down()
            wait_for(lambda: queue_servers(page)[idle.url][0] == "false", what="the stopped server shown down on the web process")
            assert "queue 1" in queue_servers(page)[server][1]
            health = page.get("/healthz").json["executor"]
            assert health["reachable"] is True and health["running"] is False  # reachable by the workers; it runs none
            assert {state["url"]: state["reachable"] for state in health["servers"]} == {server: True, idle.url: False}
            a.release()
            b.release()


def test_a_stopping_worker_lets_the_jobs_it_runs_finish_and_gives_back_the_rest(app_config, db, caplog):
    with another_app({**app_config, "START_RUNNER": False}) as web:  # runs nothing: the jobs wait for a worker
        client = same_origin_client(web)
        slow = {"params": {"width": 2048, "height": 2048}}  # half a second each or more: both threads busy
        prompt_ids = [client.post("/api/run/txt2img-example/execute", json=slow).json["prompt_id"] for _ in range(6)]
    with another_app({**app_config, "STUDIO_ROLE": "worker", "STUDIO_HEARTBEAT_SECONDS": "0.5"}) as worker:
        worker.test_client().get("/healthz")  # starts it
        running = wait_for(lambda: [job.prompt_id for job in Job.select().where(Job.status == "running")],
                           what="the worker runs jobs")
        worker.extensions["studio"].stop()  # SIGTERM (a restart): what runs ends here, not stalled
    ended = {job.prompt_id: job for job in Job.select().where(Job.prompt_id.in_(prompt_ids))}
    assert {ended[prompt_id].status for prompt_id in running} == {"completed"}
    assert all(job.error is None for job in ended.values())
    left = {prompt_id for prompt_id, job in ended.items() if job.status != "completed"}
    assert left and {ended[prompt_id].status for prompt_id in left} == {"queued"}
    assert {row.prompt_id for row in WaitingJob.select()} == left  # back in line for the next worker
    assert all(ended[prompt_id].owner is None for prompt_id in left)
    # Its log says what became of its jobs (a restart's only trace on the host).
    assert any("not started went back to the waiting line; every job it ran ended" in message
               for message in caplog.messages)


def test_a_web_process_with_no_live_worker_says_its_jobs_wait_for_one(app_config, db):
    with another_app({**app_config, "STUDIO_ROLE": "web"}) as web:
        client = same_origin_client(web)
        posted = client.post("/api/run/txt2img-example/execute", json={"params": {"width": 64}})
        assert posted.status_code == 202
        health = client.get("/healthz").json
        assert health["live_workers"] == 0 and health["executor"]["reachable"] is False
        page = client.get("/admin/queue").get_data(as_text=True)
        assert "No worker is running" in page and "waiting for a worker (none is running)" in page
        worker_row("alive", seconds_ago=0)
        health = client.get("/healthz").json
        assert health["live_workers"] == 1 and health["executor"]["reachable"] is True
        page = client.get("/admin/queue").get_data(as_text=True)
        assert "No worker is running" not in page and "waiting for a worker" not in page


def test_a_web_processs_health_check_is_503_with_the_reason_when_the_workers_cannot_be_read(app_config, db, monkeypatch):
    with another_app({**app_config, "STUDIO_ROLE": "web"}) as web:
        def store_gone(max_age):
            raise peewee.OperationalError("server closed the connection unexpectedly")

        monkeypatch.setattr(workers, "live_workers", store_gone)  # the store fails after answering SELECT 1
        response = web.test_client().get("/healthz")
        assert response.status_code == 503
        assert response.json["status"] == "unavailable"
        assert "server closed the connection" in response.json["store"]
        assert response.json["executor"]["reachable"] is False and "live_workers" not in response.json
