"""Retry of recorded jobs the studio did not just make: fitted to the workflow as installed now, and said so."""
from __future__ import annotations

import pytest

from history.config import PACKAGE_DIR
from history.workflows import WORKFLOW_NOT_INSTALLED
from history.workflows import load_workflows
from history.workflows import plan_retry
from tests.test_execute_api import png_bytes
from tests.test_execute_api import wait_until_ended


@pytest.fixture(scope="module")
def examples():
    workflows, errors = load_workflows(PACKAGE_DIR / "workflows")
    assert not errors
    return workflows


def test_an_input_image_kept_in_params_is_the_input_image(examples):
    plan = plan_retry(examples["img2vid-example"], {"input_image": "harbour.png", "width": 64}, None)
    assert plan.available and plan.input_image == "harbour.png"
    assert plan.params == {"width": 64}
    assert plan.notes == ["takes the input image harbour.png from the parameters"]


def test_a_field_the_workflow_no_longer_declares_is_left_out_and_named(examples):
    params = {"positive_prompt": "a fox", "lora_stack": [{"name": "film", "weight": 0.6}], "seed": 7}
    plan = plan_retry(examples["txt2img-example"], params, None)
    assert plan.params == {"positive_prompt": "a fox", "seed": 7}
    assert plan.notes == ["leaves out lora_stack (not an input of txt2img-example now)"]


def test_a_value_that_no_longer_fits_takes_the_default_and_says_so(examples):
    plan = plan_retry(examples["txt2img-example"], {"width": 9000}, None)
    assert plan.params == {"width": 512}
    assert plan.notes[0].startswith("takes the default 512 for width (must be at most 2048)")


def test_scene_fields_a_scene_no_longer_has_are_left_out(examples):
    scenes = [{"prompt": "dawn", "duration": 1.0, "seed": 3, "camera": "pan"}, {"prompt": "noon", "camera": "tilt"}]
    plan = plan_retry(examples["scenes-example"], {"scenes": scenes}, None)
    assert plan.params["scenes"] == [{"prompt": "dawn", "duration": 1.0, "seed": 3}, {"prompt": "noon"}]
    assert plan.notes == ["leaves out scenes[].camera (not a field of a scene now)"]


def test_a_workflow_that_is_not_installed_makes_retry_unavailable():
    plan = plan_retry(None, {"positive_prompt": "portrait"}, None)
    assert not plan.available and plan.reason == WORKFLOW_NOT_INSTALLED


def test_an_imported_image_to_video_job_retries_and_completes(client, make_job, settings):
    (settings.input_dir).mkdir(parents=True, exist_ok=True)
    (settings.input_dir / "harbour.png").write_bytes(png_bytes())
    original = make_job(status="error", files=0, workflow_id="img2vid-example", input_image=None, seeds={},
                        params={"input_image": "harbour.png", "width": 64, "height": 64, "frames_per_phase": 1,
                                "lora_stack": ["film"]})
    response = client.post("/api/run/img2vid-example/execute", json={"retry_of": original.prompt_id})
    assert response.status_code == 202, response.json
    assert response.json["notes"] == [
        "takes the input image harbour.png from the parameters",
        "leaves out lora_stack (not an input of img2vid-example now)",
    ]
    retried = wait_until_ended(client, response.json["prompt_id"])
    assert retried["status"] == "completed" and retried["input_image"] == "harbour.png"
    assert "lora_stack" not in retried["params"] and retried["outputs"]


def test_explicit_params_are_still_checked_strictly(client, make_job):
    original = make_job(status="error")
    response = client.post("/api/run/txt2img-example/execute", json={"params": {"lora_stack": []}, "retry_of": original.prompt_id})
    assert response.status_code == 400 and response.json["field"] == "lora_stack"


def test_retry_of_a_workflow_that_is_not_installed_says_so(client, make_job):
    original = make_job(status="error", workflow_id="sdxl-portrait", workflow_name="SDXL portrait")
    response = client.post("/api/run/sdxl-portrait/execute", json={"retry_of": original.prompt_id})
    assert response.status_code == 404 and "not installed" in response.json["error"]


def test_card_and_overlay_say_the_workflow_is_not_installed_before_the_click(client, make_job):
    from tests.conftest import soup

    job = make_job(status="error", workflow_id="sdxl-portrait", workflow_name="SDXL portrait")
    for url in ("/admin/history", f"/admin/history/jobs/{job.prompt_id}"):
        page = soup(client.get(url))
        for scope in page.select(f'.job-card[data-prompt-id="{job.prompt_id}"], #job-overlay'):
            button = scope.select_one(".retry-btn")
            assert button.has_attr("disabled") and not button.has_attr("hx-post")
            assert scope.select_one(".retry-unavailable").get_text(strip=True) == "workflow not installed"
