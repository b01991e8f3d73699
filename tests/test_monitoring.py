"""/healthz for process managers and /metrics for Prometheus, on a real store and a real websocket."""
from __future__ import annotations

import json
import shutil
import socket

import pytest
import websocket
from prometheus_client.parser import text_string_to_metric_families

from history import security
from history.db import release
from tests.conftest import another_app
from tests.conftest import wait_for


def scrape(client, **headers) -> dict[tuple[str, tuple], float]:
    """/metrics parsed: {(sample name, sorted labels): value}."""
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def run_job(client) -> dict:
    """Run the text-to-image example to its end; its record."""
    response = client.post("/api/run/txt2img-example/execute", json={"params": {"positive_prompt": "a boat"}})
    assert response.status_code == 202
    prompt_id = response.json["prompt_id"]

    def ended():
        record = client.get(f"/api/admin/history/{prompt_id}").json
        return record if record["status"] not in ("queued", "running") else None

    return wait_for(ended, what="the job ended")


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens there once the probe is closed


def test_healthz_answers_ok_with_the_builtin_executor(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json == {"status": "ok", "store": "ok", "executor": {"kind": "builtin", "reachable": True}}
    assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.sqlite_only
def test_healthz_is_503_with_the_reason_when_the_store_cannot_be_opened(app, client, settings):
    store = settings.data_dir / "studio.db"
    release()  # every open connection closed: the next request must open the file again
    for leftover in settings.data_dir.glob("studio.db*"):
        leftover.unlink()
    store.mkdir()  # where the database file was, a folder SQLite cannot open
    try:
        response = client.get("/healthz")
        assert response.status_code == 503
        assert response.json["status"] == "unavailable"
        assert "unable to open database file" in response.json["store"]
        assert response.json["executor"]["reachable"] is True
    finally:
        shutil.rmtree(store)


def test_healthz_says_an_unreachable_comfyui_without_failing(app_config):
    url = f"http://127.0.0.1:{closed_port()}"
    with another_app({**app_config, "STUDIO_COMFYUI_URL": url}) as comfy_app:
        response = comfy_app.test_client().get("/healthz")
    assert response.status_code == 200
    assert response.json["status"] == "ok"
    assert response.json["executor"]["kind"] == "comfyui"
    assert response.json["executor"]["url"] == url
    assert response.json["executor"]["reachable"] is False


def test_healthz_says_a_connected_comfyui_is_reachable(app_config, comfyui):
    with another_app({**app_config, **comfyui.studio_settings()}) as comfy_app:
        client = comfy_app.test_client()
        client.get("/healthz")  # the first request starts the executor, which connects in the background
        answer = wait_for(
            lambda: (body := client.get("/healthz").json)["executor"]["reachable"] and body,
            what="the ComfyUI websocket connected",
        )
    assert answer["status"] == "ok"
    assert answer["executor"] == {
        "kind": "comfyui", "url": comfyui.url, "reachable": True, "running": True,
        "servers": [{"url": comfyui.url, "reachable": True}],
    }


def test_healthz_is_public_and_metrics_guarded_when_a_password_is_set(app_config):
    with another_app({**app_config, "STUDIO_ADMIN_PASSWORD": "metrics-pw"}) as guarded:
        client = guarded.test_client()
        assert client.get("/healthz").status_code == 200
        refused = client.get("/metrics")
        assert refused.status_code == 401  # a scraper without the token is told so, not sent to the login page
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
        assert b"studio_" not in refused.get_data()
        token = security.derive_api_token("metrics-pw")
        assert ("studio_executions_started_total", ()) in scrape(client, Authorization=f"Bearer {token}")


def test_metrics_count_a_job_its_polls_and_its_delete(client):
    before = scrape(client)
    assert before[("studio_executions_started_total", ())] == 0
    record = run_job(client)
    assert record["status"] == "completed", record["error"]

    first = client.get("/admin/history/list", headers={"HX-Request": "true"})
    assert first.status_code == 200
    etag = first.headers["ETag"].strip('"')
    idle = client.get("/admin/history/list", headers={"HX-Request": "true", "X-List-ETag": etag})
    assert idle.status_code == 204

    samples = scrape(client)
    assert samples[("studio_executions_started_total", ())] == 1
    assert samples[("studio_executions_finished_total", (("status", "completed"),))] == 1
    assert samples[("studio_jobs", (("status", "completed"),))] == 1
    assert samples[("studio_list_polls_total", (("answer", "200"),))] == 1
    assert samples[("studio_list_polls_total", (("answer", "204"),))] == 1

    deleted = client.post("/api/admin/history/delete", json={"prompt_ids": [record["prompt_id"]]})
    assert deleted.json["deleted"] == [record["prompt_id"]]
    samples = scrape(client)
    assert samples[("studio_delete_seconds_count", ())] == 1
    assert samples[("studio_deleted_jobs_total", ())] == 1
    assert ("studio_jobs", (("status", "completed"),)) not in samples


def test_metrics_count_open_websockets_and_the_lag_of_what_they_send(live_server, client):
    sock = websocket.create_connection(f"ws://{live_server.host}/ws", origin=live_server.url, timeout=10)
    try:
        wait_for(lambda: scrape(client)[("studio_websockets_open", ())] == 1, what="the websocket is counted")
        record = run_job(client)

        def completed_frame():
            frame = json.loads(sock.recv())
            return frame["type"] == "job.completed" and frame["data"]["prompt_id"] == record["prompt_id"]

        wait_for(completed_frame, what="job.completed on the websocket")
        samples = scrape(client)
        assert samples[("studio_event_delivery_seconds_count", ())] >= 3  # queued, started, completed at least
        assert 0 <= samples[("studio_event_delivery_seconds_sum", ())] < 10
    finally:
        sock.close()
    wait_for(lambda: scrape(client)[("studio_websockets_open", ())] == 0, what="the closed websocket is no longer counted")


def test_two_apps_in_one_process_keep_their_own_metrics(client, app_config):
    run_job(client)
    with another_app({**app_config, "START_RUNNER": False}) as second:  # the first runs the jobs
        other = scrape(second.test_client())
        assert other[("studio_executions_started_total", ())] == 0
    assert scrape(client)[("studio_executions_started_total", ())] == 1
