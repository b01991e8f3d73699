"""Every ComfyUI job, whoever queued it, against the ComfyUI double (real HTTP and websocket on loopback).

The prompts other clients post are the ones of tests/comfyui_transcripts/09_other_clients.json (ComfyUI's
page with its UI workflow, and a script with no client_id); /history paging follows 10_history_paging,
a queue delete by another client 11_queue_delete_by_other_client, a restart 12_restart_mid_job.
"""
from __future__ import annotations

import datetime
import io
import json
import uuid
import zipfile

import pytest

from history import create_app
from history.executors.comfyui import REMOVED
from history.models import Job
from tests.comfyui_double import transcript
from tests.conftest import wait_for
from tests.test_comfyui_executor import get_json
from tests.test_comfyui_executor import post_json

WAIT = 5.0  # "appears within 5 s of finishing"


def page_prompt() -> dict:
    """The body ComfyUI's page posted in 09_other_clients (its own client_id replaced by the test's)."""
    call = transcript("09_other_clients.json")["http"][0]
    body = call["request_json"]
    body["client_id"] = str(uuid.uuid4())
    return body


def script_prompt(color=0x123456) -> dict:
    """The body a script posted in 09_other_clients: a graph, no client_id, no extra_data."""
    body = transcript("09_other_clients.json")["http"][1]["request_json"]
    body["prompt"]["1"]["inputs"]["color"] = color
    return body


@pytest.fixture
def app_config(app_config, comfyui):
    return {**app_config, **comfyui.studio_settings()}


@pytest.fixture
def studio(app, client):
    """The app's studio, started (its first request) and connected to the double."""
    client.get("/healthz")
    the_studio = app.extensions["studio"]
    the_studio.start()
    assert the_studio.executor.wait_connected(WAIT)
    return the_studio


def record(client, prompt_id, timeout=WAIT) -> dict:
    """Wait until the history has the prompt as ended; answer its record."""
    def ended():
        response = client.get(f"/api/admin/history/{prompt_id}")
        return response.json if response.status_code == 200 and response.json["status"] in ("completed", "error", "stalled") else None
    return wait_for(ended, timeout=timeout, what=f"record of {prompt_id}")


def test_a_prompt_from_comfyuis_page_is_recorded_with_what_its_graph_says(comfyui, studio, client):
    body = page_prompt()
    prompt_id = post_json(comfyui.url + "/prompt", body)["prompt_id"]
    assert comfyui.wait_idle(WAIT)

    job = record(client, prompt_id)
    assert job["workflow_id"] == "comfyui"
    assert job["workflow_name"] == "Lighthouse poster"  # its save node's title in the UI workflow
    assert job["status"] == "completed"
    assert job["params"] == {
        "positive_prompt": "a lighthouse at dusk, oil painting",
        "negative_prompt": "blurry, text, watermark",
        "seed": 123456789, "steps": 20, "cfg": 7.5, "sampler_name": "euler", "scheduler": "normal", "denoise": 1,
        "width": 832, "height": 1216, "batch_size": 2, "checkpoint": "sd_xl_base_1.0.safetensors",
    }
    assert job["seeds"] == {"seed": 123456789}
    assert job["source"] == f"ComfyUI's page on {comfyui.url}"
    assert job["output_dir"] is None
    assert [ref["filename"] for ref in job["outputs"]] == ["ComfyUI_00001_.png", "ComfyUI_00002_.png"]
    for ref in job["outputs"]:
        assert (comfyui.output_dir / ref["subfolder"] / ref["filename"]).is_file()
    messages = dict(comfyui.history(prompt_id)["status"]["messages"])
    assert job["started_at"].startswith(_iso_ms(messages["execution_start"]["timestamp"])[:19])

    # Its graphs go back to ComfyUI: the API graph and the UI workflow, alone and in the package.
    prompt_json = client.get(f"/api/admin/history/{prompt_id}/prompt.json")
    assert prompt_json.status_code == 200 and prompt_json.json == body["prompt"]
    assert "attachment" in prompt_json.headers["Content-Disposition"]
    workflow_json = client.get(f"/api/admin/history/{prompt_id}/workflow.json")
    assert workflow_json.json == body["extra_data"]["extra_pnginfo"]["workflow"]
    package = zipfile.ZipFile(io.BytesIO(client.get(f"/api/admin/history/{prompt_id}/package").data))
    assert {"job.json", "prompt.json", "workflow.json", "output/ComfyUI_00001_.png", "output/ComfyUI_00002_.png"} <= set(package.namelist())
    assert json.loads(package.read("workflow.json")) == body["extra_data"]["extra_pnginfo"]["workflow"]

    overlay = client.get(f"/admin/history/jobs/{prompt_id}", headers={"HX-Request": "true"}).get_data(as_text=True)
    assert f"ComfyUI&#39;s page on {comfyui.url}" in overlay
    assert "prompt.json" in overlay and "workflow.json" in overlay
    card = client.get(f"/admin/history/jobs/{prompt_id}/card").get_data(as_text=True)
    assert "from ComfyUI&#39;s page" in card


def test_a_scripts_prompt_without_client_id_or_ui_workflow_is_recorded_as_comfyui(comfyui, studio, client):
    body = script_prompt()
    prompt_id = post_json(comfyui.url + "/prompt", body)["prompt_id"]
    assert comfyui.wait_idle(WAIT)

    job = record(client, prompt_id)
    assert (job["workflow_id"], job["workflow_name"], job["status"]) == ("comfyui", "ComfyUI", "completed")
    assert job["params"] == {"width": 64, "height": 48, "batch_size": 1}
    assert job["source"] == f"a script on {comfyui.url}"
    assert [ref["subfolder"] for ref in job["outputs"]] == ["scripts"]
    assert client.get(f"/api/admin/history/{prompt_id}/workflow.json").status_code == 404
    # It is a job like any other: in the list, its filter and its search.
    assert prompt_id in [job["prompt_id"] for job in client.get("/api/admin/history?workflow_id=comfyui").json]
    assert prompt_id in client.get("/admin/history?q=ComfyUI").get_data(as_text=True)


def test_deleting_an_observed_job_removes_exactly_its_files_and_the_folders_they_emptied(comfyui, studio, client):
    keep = comfyui.output_dir / "scripts" / "mine.txt"
    first = record(client, post_json(comfyui.url + "/prompt", script_prompt(0x010101))["prompt_id"])
    second = record(client, post_json(comfyui.url + "/prompt", script_prompt(0x020202))["prompt_id"])
    # A cached re-run lists the file of the run it replays: two records, one file.
    again = record(client, post_json(comfyui.url + "/prompt", script_prompt(0x020202))["prompt_id"])
    assert again["outputs"] == second["outputs"]
    files_of = {job["prompt_id"]: comfyui.output_dir / job["outputs"][0]["subfolder"] / job["outputs"][0]["filename"]
                for job in (first, second)}

    # The confirm dialog counts them the same way: the shared file is not the pair's to remove.
    usage = client.post("/api/admin/history/usage", json={"prompt_ids": [first["prompt_id"], second["prompt_id"]]})
    assert (usage.json["jobs"], usage.json["files"]) == (2, 1)
    answer = client.post("/api/admin/history/delete", json={"prompt_ids": [first["prompt_id"], second["prompt_id"]]})
    assert answer.status_code == 200 and answer.json["deleted"] == [first["prompt_id"], second["prompt_id"]]
    assert answer.json["files_removed"] == 1
    assert not files_of[first["prompt_id"]].exists()
    assert files_of[second["prompt_id"]].exists()  # the re-run's record still lists it

    keep.write_text("not a job's")
    answer = client.post("/api/admin/history/delete", json={"prompt_ids": [again["prompt_id"]]})
    assert answer.json["files_removed"] == 1
    assert not files_of[second["prompt_id"]].exists()
    assert keep.exists()  # a file no record lists stays, and so does its folder
    keep.unlink()
    third = record(client, post_json(comfyui.url + "/prompt", script_prompt(0x030303))["prompt_id"])
    answer = client.post("/api/admin/history/delete", json={"prompt_ids": [third["prompt_id"]]})
    assert answer.json["files_removed"] == 1, (answer.json, third, sorted(p.name for p in (comfyui.output_dir / "scripts").iterdir()))
    assert not (comfyui.output_dir / "scripts").exists()  # emptied, so it went
    assert comfyui.output_dir.is_dir()


def test_retry_of_an_observed_job_posts_its_own_graph_again_with_the_same_seed(comfyui, studio, client):
    body = page_prompt()
    original = record(client, post_json(comfyui.url + "/prompt", body)["prompt_id"])

    answer = client.post("/api/run/comfyui/execute", json={"retry_of": original["prompt_id"]})
    assert answer.status_code == 202, answer.json
    retry = record(client, answer.json["prompt_id"])
    assert (retry["status"], retry["retry_of"], retry["workflow_id"]) == ("completed", original["prompt_id"], "comfyui")
    assert retry["params"]["seed"] == original["params"]["seed"] == 123456789
    posted = [sent for method, path, sent in comfyui.requests if (method, path) == ("POST", "/prompt")]
    assert posted[-1]["prompt"] == body["prompt"]
    assert posted[-1]["client_id"] == studio.executor.client_id  # ours now: followed by its frames
    assert posted[-1]["extra_data"] == body["extra_data"]
    assert retry["outputs"]


def test_a_new_studio_imports_all_200_entries_of_comfyuis_history_on_its_first_connection(comfyui, app_config, tmp_path):
    ids = [post_json(comfyui.url + "/prompt", script_prompt(number))["prompt_id"] for number in range(200)]
    assert comfyui.wait_idle(60)
    assert len(get_json(comfyui.url + "/history")) == 200

    app = create_app(app_config)
    try:
        client = app.test_client()
        client.get("/healthz")
        app.extensions["studio"].start()
        listed = wait_for(lambda: len(client.get("/api/admin/history?limit=1000").json) == 200 and
                          client.get("/api/admin/history?limit=1000").json, timeout=30, what="200 imported jobs")
        assert {job["prompt_id"] for job in listed} == set(ids)
        assert all(job["workflow_id"] == "comfyui" and job["status"] == "completed" for job in listed)
    finally:
        app.extensions["studio"].stop()


def test_import_comfyui_command_prints_what_it_took_and_upserts(comfyui, app, runner, db):
    ids = [post_json(comfyui.url + "/prompt", script_prompt(number))["prompt_id"] for number in range(5)]
    assert comfyui.wait_idle(WAIT)

    result = runner.invoke(args=["history", "import-comfyui", comfyui.url, "--page-size", "2"])
    assert result.exit_code == 0, result.output
    assert f"took 5 prompts from {comfyui.url}, refused 0" in result.output
    assert set(ids) <= {job.prompt_id for job in Job.select()}
    again = runner.invoke(args=["history", "import-comfyui"])  # STUDIO_COMFYUI_URL by default
    assert "took 0 prompts" in again.output


def test_records_and_files_outlive_a_comfyui_restart(comfyui, studio, client):
    job = record(client, post_json(comfyui.url + "/prompt", page_prompt())["prompt_id"])
    comfyui.restart()
    assert get_json(comfyui.url + "/history") == {}
    assert studio.executor.wait_connected(WAIT)
    # Another client's next prompt still arrives, and nothing older is lost.
    record(client, post_json(comfyui.url + "/prompt", script_prompt())["prompt_id"])
    kept = client.get(f"/api/admin/history/{job['prompt_id']}").json
    assert kept == job
    for ref in kept["outputs"]:
        assert (comfyui.output_dir / ref["subfolder"] / ref["filename"]).is_file()


def test_an_observed_queued_prompt_that_another_client_deletes_settles_at_once(comfyui, studio, client):
    comfyui.hold()
    prompt_id = post_json(comfyui.url + "/prompt", script_prompt())["prompt_id"]
    wait_for(lambda: client.get(f"/api/admin/history/{prompt_id}").status_code == 200, timeout=WAIT,
             what="the queued prompt recorded")
    assert client.get(f"/api/admin/history/{prompt_id}").json["status"] == "queued"
    post_json(comfyui.url + "/queue", {"delete": [prompt_id]})

    job = record(client, prompt_id)
    assert (job["status"], job["error"]) == ("error", REMOVED)
    comfyui.release()


def test_a_studio_job_deleted_from_comfyuis_queue_by_another_client_settles_within_seconds(comfyui, studio, client):
    comfyui.hold()
    answer = client.post("/api/run/txt2img-example/execute", json={"params": {}})
    prompt_id = answer.json["prompt_id"]
    wait_for(lambda: any(entry[1] == prompt_id for entry in get_json(comfyui.url + "/queue")["queue_pending"]),
             timeout=WAIT, what="the job in ComfyUI's queue")
    post_json(comfyui.url + "/queue", {"delete": [prompt_id]})  # another client, as in 11_queue_delete_by_other_client

    job = record(client, prompt_id)
    assert (job["status"], job["error"]) == ("error", REMOVED)
    comfyui.release()


@pytest.mark.parametrize("observe", ["0"])
def test_observing_off_records_only_the_studios_own_jobs(comfyui, app_config, observe):
    app = create_app({**app_config, "STUDIO_COMFYUI_OBSERVE": observe})
    try:
        client = app.test_client()
        client.environ_base["HTTP_ORIGIN"] = "http://localhost"
        client.get("/healthz")
        app.extensions["studio"].start()
        assert app.extensions["studio"].executor.wait_connected(WAIT)
        other = post_json(comfyui.url + "/prompt", script_prompt())["prompt_id"]
        own = client.post("/api/run/txt2img-example/execute", json={"params": {}}).json["prompt_id"]
        record(client, own)
        assert comfyui.history(other) is not None
        assert client.get(f"/api/admin/history/{other}").status_code == 404
    finally:
        app.extensions["studio"].stop()


def _iso_ms(stamp: int) -> str:
    return datetime.datetime.fromtimestamp(stamp / 1000, tz=datetime.timezone.utc).isoformat()
