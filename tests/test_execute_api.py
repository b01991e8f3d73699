"""POST /api/run/<workflow_id>/execute: validation, uploads, retries, executor failures, real runs to the end."""
from __future__ import annotations

import io
import json
import re

import pytest
from PIL import Image

from history.executors.base import ExecutorRejected
from history.executors.base import ExecutorUnavailable
from history.models import Job
from tests.conftest import wait_for

OUTPUT_DIR = re.compile(r"^\d{8}_\d{6}_[0-9a-f]{6}$")


def wait_until_ended(client, prompt_id: str) -> dict:
    def ended():
        record = client.get(f"/api/admin/history/{prompt_id}").json
        return record if record["status"] not in ("queued", "running") else None

    return wait_for(ended)


def png_bytes(size=(120, 80), color=(30, 160, 90), image_format="PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=image_format)
    return buffer.getvalue()


def test_execute_runs_a_workflow_to_completion(client, settings):
    response = client.post("/api/run/txt2img-example/execute",
                           json={"params": {"positive_prompt": "a red boat", "seed": -1, "batch_size": 2}})
    assert response.status_code == 202
    assert set(response.json) == {"prompt_id", "status", "retry_of"}
    assert response.json["status"] == "queued" and response.json["retry_of"] is None
    prompt_id = response.json["prompt_id"]
    assert response.headers["Location"].endswith(f"/api/admin/history/{prompt_id}")

    record = wait_until_ended(client, prompt_id)
    assert record["status"] == "completed", record["error"]
    assert record["workflow_name"] == "Text to image (example)"
    assert record["params"]["seed"] == -1 and record["params"]["positive_prompt"] == "a red boat"
    assert isinstance(record["seeds"]["seed"], int) and record["seeds"]["seed"] >= 0
    assert OUTPUT_DIR.match(record["output_dir"])
    subfolder = f"comfyui-studio/{record['output_dir']}"
    assert record["outputs"] == [
        {"filename": "final_00001_.png", "subfolder": subfolder, "type": "output"},
        {"filename": "final_00002_.png", "subfolder": subfolder, "type": "output"},
    ]
    assert record["output"] == record["outputs"][0]
    for ref in record["outputs"]:
        assert (settings.output_dir / subfolder / ref["filename"]).is_file()
    # Its size is measured as it ends (storage totals never walk the disk).
    assert record["bytes"] == sum(path.stat().st_size for path in (settings.output_dir / subfolder).iterdir()) > 0
    assert 0 <= record["duration"] < 30
    assert record["started_at"] >= record["queued_at"] and record["finished_at"] >= record["started_at"]


def test_a_finished_job_has_its_card_thumbnail_ready(client, settings):
    """The runner makes the card's thumbnail before it announces the job, so the first view serves it from cache."""
    from history import thumbnails

    response = client.post("/api/run/txt2img-example/execute", json={"params": {"positive_prompt": "a red boat"}})
    record = wait_until_ended(client, response.json["prompt_id"])
    assert record["status"] == "completed", record["error"]
    first = settings.output_dir / record["outputs"][0]["subfolder"] / record["outputs"][0]["filename"]
    cached = list(settings.thumbnail_dir.rglob("*.webp"))
    assert len(cached) == 1
    assert thumbnails.make_thumbnail(first, settings.thumbnail_dir) == cached[0]
    assert len(list(settings.thumbnail_dir.rglob("*.webp"))) == 1


def test_unknown_workflow_is_404(client):
    response = client.post("/api/run/no-such-workflow/execute", json={"params": {}})
    assert response.status_code == 404
    assert "no-such-workflow" in response.json["error"]


@pytest.mark.parametrize("body, field", [
    ({"params": ["not", "an", "object"]}, "params"),
    ({"params": {}, "colour": "red"}, "colour"),
    ({"params": {"seed": "seven"}}, "seed"),
    ({"params": {"width": 99999}}, "width"),
    ({"params": {"unknown_knob": 1}}, "unknown_knob"),
    ({"params": {}, "retry_of": "no-such-job"}, "retry_of"),
    ({"params": {}, "input_image": "cat.png"}, "input_image"),
    ({"params": {}, "input_image": 7}, "input_image"),
])
def test_invalid_requests_are_400_naming_the_field(client, db, body, field):
    response = client.post("/api/run/txt2img-example/execute", json=body)
    assert response.status_code == 400
    assert response.json["error"].startswith(field + ":")
    assert Job.select().count() == 0


@pytest.mark.parametrize("name", ["missing.png", "../secret_key", "/etc/passwd", "sub/dir.png"])
def test_an_input_image_must_be_a_file_of_the_input_folder(client, db, name):
    response = client.post("/api/run/img2vid-example/execute", json={"params": {}, "input_image": name})
    assert response.status_code == 400
    assert response.json["error"].startswith("input_image:")
    assert Job.select().count() == 0


def test_a_body_that_is_not_json_is_400(client):
    response = client.post("/api/run/txt2img-example/execute", data="{oops", content_type="application/json")
    assert response.status_code == 400


def test_multipart_upload_runs_image_to_video(client, settings):
    response = client.post(
        "/api/run/img2vid-example/execute",
        data={"params": '{"frames_per_phase": 2, "width": 96, "height": 64}',
              "input_image": (io.BytesIO(png_bytes()), "../../My Photo.png")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 202, response.json
    record = wait_until_ended(client, response.json["prompt_id"])
    assert record["status"] == "completed", record["error"]
    stored = record["input_image"]
    assert re.match(r"^My-Photo_[0-9a-f]{8}\.png$", stored)
    assert (settings.input_dir / stored).is_file()
    assert record["output"]["filename"] == "video_00001_.webp"
    with Image.open(settings.output_dir / record["output"]["subfolder"] / record["output"]["filename"]) as video:
        assert video.size == (96, 64) and video.n_frames >= 2


@pytest.mark.parametrize("upload", [
    b"this is not an image",
    png_bytes(size=(9000, 8)),
])
def test_uploads_pillow_refuses_are_400_and_stored_nowhere(client, settings, db, upload):
    response = client.post(
        "/api/run/img2vid-example/execute",
        data={"params": "{}", "input_image": (io.BytesIO(upload), "photo.png")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 400
    assert response.json["error"].startswith("input_image:")
    assert list(settings.input_dir.iterdir()) == []
    assert Job.select().count() == 0


def test_a_failing_workflow_records_the_node_and_reason(client):
    response = client.post("/api/run/upscale-fails-example/execute", json={"params": {}})
    record = wait_until_ended(client, response.json["prompt_id"])
    assert record["status"] == "error"
    assert record["error"].startswith("node UpscaleModelLoader (#2): ")
    assert "STUDIO_COMFYUI_URL" in record["error"]
    assert record["outputs"] == [] and record["output"] is None


def test_retry_reuses_seeds_and_input_image_and_announces_itself(app, client, settings):
    (settings.input_dir / "harbour.png").write_bytes(png_bytes())
    first = client.post("/api/run/img2vid-example/execute",
                        json={"params": {"frames_per_phase": 1, "width": 64, "height": 64}, "input_image": "harbour.png"})
    original = wait_until_ended(client, first.json["prompt_id"])
    with app.extensions["studio"].bus.subscribe() as events:
        response = client.post("/api/run/img2vid-example/execute", json={"retry_of": original["prompt_id"]})
        assert response.status_code == 202
        assert response.json["retry_of"] == original["prompt_id"]
        retried = wait_until_ended(client, response.json["prompt_id"])
        types = []

        def completed_seen():
            # The record is written before its event goes out: wait for the event too.
            while (message := events.get(timeout=0)) is not None:
                types.append(json.loads(message)["type"])
            return "job.completed" in types

        wait_for(completed_seen)
    assert retried["status"] == "completed"
    assert retried["retry_of"] == original["prompt_id"]
    assert retried["input_image"] == "harbour.png"
    assert retried["params"] == original["params"] and retried["seeds"] == original["seeds"]
    assert retried["output_dir"] != original["output_dir"]
    assert types.index("job.queued") < types.index("job.retried") < types.index("job.completed")


def test_retry_reuses_a_random_seed(client):
    first = client.post("/api/run/txt2img-example/execute", json={"params": {"seed": -1}})
    original = wait_until_ended(client, first.json["prompt_id"])
    again = client.post("/api/run/txt2img-example/execute", json={"params": {"seed": -1}, "retry_of": original["prompt_id"]})
    retried = wait_until_ended(client, again.json["prompt_id"])
    assert retried["seeds"] == original["seeds"]


def test_retry_of_another_workflows_job_is_400(client, make_job):
    job = make_job(status="error", workflow_id="scenes-example")
    response = client.post("/api/run/txt2img-example/execute", json={"retry_of": job.prompt_id})
    assert response.status_code == 400 and response.json["error"].startswith("retry_of:")


def _break_executor(app, error):
    def submit(submission):
        raise error

    app.extensions["studio"].executor.submit = submit


def test_executor_unreachable_is_503_and_leaves_no_record(app, client, db):
    _break_executor(app, ExecutorUnavailable("ComfyUI at http://127.0.0.1:9 is unreachable: connection refused"))
    response = client.post("/api/run/txt2img-example/execute", json={"params": {}})
    assert response.status_code == 503
    assert response.json == {"error": "ComfyUI at http://127.0.0.1:9 is unreachable: connection refused"}
    assert Job.select().count() == 0


def test_executor_validation_errors_are_400_with_node_errors(app, client, db):
    node_errors = {"1": {"errors": [{"type": "value_not_in_list", "message": "Value not in list"}], "class_type": "EmptyImage"}}
    _break_executor(app, ExecutorRejected("Prompt outputs failed validation", {"error": {}, "node_errors": node_errors}))
    response = client.post("/api/run/txt2img-example/execute", json={"params": {}})
    assert response.status_code == 400
    assert response.json["error"] == "Prompt outputs failed validation"
    assert response.json["node_errors"] == node_errors
    assert Job.select().count() == 0


def test_a_plain_form_post_of_retry_of_works_too(client, make_job):
    original = make_job(status="error", files=0, params={"seed": -1, "width": 64, "height": 64}, seeds={"seed": 99})
    response = client.post("/api/run/txt2img-example/execute", data={"retry_of": original.prompt_id})
    assert response.status_code == 202, response.json
    retried = wait_until_ended(client, response.json["prompt_id"])
    assert retried["seeds"] == {"seed": 99} and retried["params"]["width"] == 64
