"""The execute endpoint with STUDIO_COMFYUI_URL set: the example workflows through the ComfyUI double
(real HTTP and a real websocket on loopback, built from the recorded transcripts)."""
from __future__ import annotations

import io
import socket

import pytest
from PIL import Image

from history.executors.comfyui_servers import ComfyUIServers
from history.models import Job
from tests.conftest import another_app
from tests.conftest import same_origin_client
from tests.conftest import wait_for
from tests.test_execute_api import wait_until_ended


@pytest.fixture
def app_config(app_config, comfyui):
    return {**app_config, **comfyui.studio_settings()}


def test_the_comfyui_executor_is_chosen(app, comfyui):
    executor = app.extensions["studio"].executor
    assert isinstance(executor, ComfyUIServers)
    assert [server.base_url for server in executor.servers] == [comfyui.url]


@pytest.mark.parametrize("workflow_id, params, expected", [
    ("txt2img-example", {"seed": 5, "batch_size": 2, "width": 128, "height": 96}, ["final_00001_.png", "final_00002_.png"]),
    ("scenes-example", {"scenes": [{"prompt": "a", "duration": 0.5, "seed": 1}, {"prompt": "b", "duration": 0.5}]},
     ["scenes_00001_.webp"]),
    ("img2vid-example", {"frames_per_phase": 1, "width": 64, "height": 64}, ["video_00001_.webp"]),
])
def test_each_example_completes_with_its_files_in_the_job_folder(client, settings, comfyui, workflow_id, params, expected):
    body = {"params": params}
    if workflow_id == "img2vid-example":
        buffer = io.BytesIO()
        Image.new("RGB", (80, 60), (10, 120, 200)).save(buffer, format="PNG")
        (settings.input_dir / "harbour.png").write_bytes(buffer.getvalue())
        body["input_image"] = "harbour.png"
    response = client.post(f"/api/run/{workflow_id}/execute", json=body)
    assert response.status_code == 202, response.json
    record = wait_until_ended(client, response.json["prompt_id"])
    assert record["status"] == "completed", record["error"]
    assert record["comfyui_server"] == comfyui.url
    assert [ref["filename"] for ref in record["outputs"]] == expected
    for ref in record["outputs"]:
        assert ref["subfolder"] == f"comfyui-studio/{record['output_dir']}"
        assert (settings.output_dir / ref["subfolder"] / ref["filename"]).is_file()
    assert record["duration"] is not None


def test_a_graph_comfyui_refuses_is_400_with_node_errors_and_no_record(client, db):
    response = client.post("/api/run/upscale-fails-example/execute", json={"params": {}})
    assert response.status_code == 400
    assert response.json["error"]
    assert isinstance(response.json.get("node_errors"), dict)
    assert Job.select().count() == 0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_comfyui_unreachable_is_503_with_the_reason_and_no_record(app_config, db):
    with another_app({**app_config, "STUDIO_COMFYUI_URL": f"http://127.0.0.1:{_free_port()}"}) as app:
        client = same_origin_client(app)
        response = client.post("/api/run/txt2img-example/execute", json={"params": {}})
        assert response.status_code == 503
        assert "127.0.0.1" in response.json["error"]
        assert Job.select().count() == 0


def test_no_demo_jobs_are_sent_to_a_comfyui_server(app_config, comfyui, db):
    with another_app({**app_config, "STUDIO_DEMO": "1"}) as app:
        app.test_client().get("/api/workflows")
        assert app.extensions["studio"].demo_wanted is False
    assert Job.select().count() == 0
    assert not [request for request in comfyui.requests if request[1] == "/prompt"]


def test_a_job_comfyui_forgot_is_stalled_at_start_up(app_config, make_job, db):
    left = make_job(status="running", files=0)  # ComfyUI (the double) never heard of it
    with another_app(app_config) as restarted:
        restarted.test_client().get("/api/workflows")
        stalled = wait_for(lambda: (job := Job.get_or_none(Job.prompt_id == left.prompt_id)) and job.status == "stalled" and job)
    assert stalled.error and stalled.finished_at is not None
