"""The same behaviours against a real ComfyUI: collected only when STUDIO_TEST_COMFYUI_URL names one.

Start ComfyUI (0.3.64 was used: ``--cpu``, no model weights) with ``--output-directory`` and
``--input-directory`` set to STUDIO_TEST_COMFYUI_OUTPUT_DIR and STUDIO_TEST_COMFYUI_INPUT_DIR, which the
studio under test uses as its own folders. Every prompt uses core image nodes only; the sampler part of
the page's prompt (09_other_clients) is not wired to its save node, so it needs no weights either.
A run that fails after a save needs a file that is no model at
``models/upscale_models/studio-live-broken.pth`` of that ComfyUI (any text will do): ComfyUI accepts
the graph (the name is in its list) and fails loading it. With STUDIO_TEST_COMFYUI_RESTART (a shell command that restarts that ComfyUI and returns once it
answers again) the restart checks run too.

With STUDIO_TEST_COMFYUI_URL2 naming a second ComfyUI (started like the first, with its own
``--output-directory`` given as STUDIO_TEST_COMFYUI_OUTPUT_DIR2), the two-server checks run: jobs spread
over both by queue length, each with its files in its server's folder; with STUDIO_TEST_COMFYUI_STOP2 (a
shell command that stops the second server and returns once it is gone) a server stopped mid-run too.
"""
from __future__ import annotations

import datetime
import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from history import create_app
from history.executors.comfyui import REMOVED
from tests.conftest import wait_for
from tests.test_comfyui_executor import get_json
from tests.test_comfyui_executor import post_json
from tests.test_comfyui_observe import page_prompt
from tests.test_comfyui_observe import script_prompt

URL = os.environ["STUDIO_TEST_COMFYUI_URL"].rstrip("/")
OUTPUT_DIR = Path(os.environ["STUDIO_TEST_COMFYUI_OUTPUT_DIR"]).resolve()
INPUT_DIR = Path(os.environ["STUDIO_TEST_COMFYUI_INPUT_DIR"]).resolve()
RESTART = os.environ.get("STUDIO_TEST_COMFYUI_RESTART")
URL2 = os.environ.get("STUDIO_TEST_COMFYUI_URL2", "").rstrip("/")
STOP2 = os.environ.get("STUDIO_TEST_COMFYUI_STOP2")
WAIT = 5.0


@pytest.fixture
def app_config(app_config):
    return {**app_config, "STUDIO_COMFYUI_URL": URL, "STUDIO_OUTPUT_DIR": str(OUTPUT_DIR), "STUDIO_INPUT_DIR": str(INPUT_DIR)}


@pytest.fixture
def studio(app, client):
    """The studio, started and connected to the real ComfyUI (its history imported)."""
    client.get("/healthz")
    the_studio = app.extensions["studio"]
    the_studio.start()
    assert the_studio.executor.wait_connected(30)
    return the_studio


def unique(body: dict) -> dict:
    """The body with a color no run had, so ComfyUI's cache does not replay an earlier run."""
    for node in body["prompt"].values():
        if node["class_type"] == "EmptyImage":
            node["inputs"]["color"] = uuid.uuid4().int % 0xFFFFFF
    return body


def finished_in_comfyui(prompt_id: str, timeout: float = 60) -> dict:
    """Wait until ComfyUI's history has the prompt; answer its entry."""
    return wait_for(lambda: get_json(f"{URL}/history/{prompt_id}").get(prompt_id), timeout=timeout, what=f"{prompt_id} done in ComfyUI")


def ended(client, prompt_id: str, timeout: float = WAIT) -> dict:
    """Wait until the studio's history has the prompt as ended; answer its record."""
    def check():
        response = client.get(f"/api/admin/history/{prompt_id}")
        return response.json if response.status_code == 200 and response.json["status"] in ("completed", "error", "stalled") else None
    return wait_for(check, timeout=timeout, what=f"record of {prompt_id}")


def long_graph(prefix: str) -> dict:
    """About 6 s on two CPU cores (12_restart_mid_job): ImageBlur over a 4x1024x1024 batch."""
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 4,
                                                         "color": uuid.uuid4().int % 0xFFFFFF}},
            "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 31, "sigma": 10.0}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}}}


def test_other_clients_prompts_appear_within_5_s_with_what_their_graph_says(studio, client):
    page = post_json(URL + "/prompt", unique(page_prompt()))["prompt_id"]
    script = post_json(URL + "/prompt", unique(script_prompt()))["prompt_id"]
    finished_in_comfyui(page)
    finished_in_comfyui(script)

    page_job = ended(client, page)  # within 5 s of finishing
    assert (page_job["workflow_id"], page_job["workflow_name"], page_job["status"]) == ("comfyui", "Lighthouse poster", "completed")
    assert page_job["params"]["positive_prompt"] == "a lighthouse at dusk, oil painting"
    assert page_job["params"]["negative_prompt"] == "blurry, text, watermark"
    assert (page_job["params"]["seed"], page_job["params"]["checkpoint"]) == (123456789, "sd_xl_base_1.0.safetensors")
    assert (page_job["params"]["width"], page_job["params"]["height"]) == (832, 1216)
    assert page_job["source"] == f"ComfyUI's page on {URL}"
    script_job = ended(client, script)
    assert (script_job["workflow_name"], script_job["source"]) == ("ComfyUI", f"a script on {URL}")
    for job in (page_job, script_job):
        assert job["outputs"]
        for ref in job["outputs"]:
            assert (OUTPUT_DIR / ref["subfolder"] / ref["filename"]).is_file()
    assert client.get(f"/api/admin/history/{page}/workflow.json").json["nodes"]


def test_deleting_an_observed_job_removes_exactly_its_files(studio, client):
    job = ended(client, post_json(URL + "/prompt", unique(script_prompt()))["prompt_id"], timeout=60)
    paths = [OUTPUT_DIR / ref["subfolder"] / ref["filename"] for ref in job["outputs"]]
    neighbours = {path for path in (OUTPUT_DIR / "scripts").iterdir()} - set(paths)
    answer = client.post("/api/admin/history/delete", json={"prompt_ids": [job["prompt_id"]]})
    assert answer.json["deleted"] == [job["prompt_id"]] and answer.json["files_removed"] == len(paths)
    assert not any(path.exists() for path in paths)
    assert all(path.exists() for path in neighbours)


def test_retry_reruns_its_graph_with_the_same_seed(studio, client):
    body = unique(page_prompt())
    original = ended(client, post_json(URL + "/prompt", body)["prompt_id"], timeout=60)
    answer = client.post("/api/run/comfyui/execute", json={"retry_of": original["prompt_id"]})
    assert answer.status_code == 202, answer.json
    retry = ended(client, answer.json["prompt_id"], timeout=60)
    assert (retry["status"], retry["retry_of"]) == ("completed", original["prompt_id"])
    ran = get_json(f"{URL}/history/{retry['prompt_id']}")[retry["prompt_id"]]["prompt"][2]
    assert ran == body["prompt"] and ran["3"]["inputs"]["seed"] == 123456789


def test_a_new_studio_shows_200_history_entries_after_its_first_connection(app_config):
    ids = [post_json(URL + "/prompt", unique(script_prompt()))["prompt_id"] for _ in range(200)]
    finished_in_comfyui(ids[-1], timeout=300)
    assert set(ids) <= set(get_json(URL + "/history"))
    app = create_app(app_config)
    try:
        client = app.test_client()
        client.get("/healthz")
        app.extensions["studio"].start()
        listed = wait_for(lambda: set(ids) <= {job["prompt_id"] for job in client.get("/api/admin/history?limit=1000").json},
                          timeout=60, what="the 200 entries imported")
        assert listed
    finally:
        app.extensions["studio"].stop()


LIVE_WORKFLOWS = {
    "preview-and-save": {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 1}},
                         "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
                         "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "saved"}}},
    # ComfyUI runs output nodes highest id first: 9 saves, then 3 fails loading a file that is no model.
    "fails-after-save": {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 2}},
                         "9": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "kept"}},
                         "2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "studio-live-broken.pth"}},
                         "3": {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["2", 0], "image": ["1", 0]}},
                         "5": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "never"}}},
    "long": long_graph("long"),
}


@pytest.fixture
def live_app(app_config, tmp_path):
    """A studio whose workflows save a preview beside a file, fail after a save, and run for seconds."""
    workflows = tmp_path / "workflows"
    for name, graph in LIVE_WORKFLOWS.items():
        (workflows / name).mkdir(parents=True)
        (workflows / name / "graph.json").write_text(json.dumps(graph))
        (workflows / name / "manifest.json").write_text(json.dumps({
            "id": name, "name": name, "type": "static",
            "inputs": [{"id": "seed", "type": "seed", "default": -1, "maps_to": [{"node": "1", "input": "color", "transform": "color"}]}]}))
    app = create_app({**app_config, "STUDIO_WORKFLOWS_DIR": str(workflows)})
    client = app.test_client()
    client.environ_base["HTTP_ORIGIN"] = "http://localhost"
    client.get("/healthz")
    app.extensions["studio"].start()
    assert app.extensions["studio"].executor.wait_connected(30)
    yield app, client
    app.extensions["studio"].stop()


def test_the_studios_own_jobs_keep_saved_files_and_never_list_previews(live_app):
    _, client = live_app
    preview = client.post("/api/run/preview-and-save/execute", json={"params": {}}).json["prompt_id"]
    answer = client.post("/api/run/fails-after-save/execute", json={"params": {}})
    assert answer.status_code == 202, f"put a non-model file at models/upscale_models/studio-live-broken.pth: {answer.json}"
    failing = answer.json["prompt_id"]
    saved = ended(client, preview, timeout=60)
    assert [ref["type"] for ref in saved["outputs"]] == ["output"]
    failed = ended(client, failing, timeout=60)
    assert failed["status"] == "error", failed
    assert [ref["filename"] for ref in failed["outputs"]] == ["kept_00001_.png"]
    assert (OUTPUT_DIR / failed["outputs"][0]["subfolder"] / "kept_00001_.png").is_file()


def test_a_queued_studio_job_another_client_deletes_settles_within_seconds(live_app):
    _, client = live_app
    blocker = client.post("/api/run/long/execute", json={"params": {}}).json["prompt_id"]
    wait_for(lambda: any(entry[1] == blocker for entry in get_json(URL + "/queue")["queue_running"]), timeout=30, what="blocker running")
    job = client.post("/api/run/preview-and-save/execute", json={"params": {}}).json["prompt_id"]
    wait_for(lambda: any(entry[1] == job for entry in get_json(URL + "/queue")["queue_pending"]), timeout=WAIT, what="job queued")
    post_json(URL + "/queue", {"delete": [job]})  # as another client
    record = ended(client, job, timeout=3)
    assert (record["status"], record["error"]) == ("error", REMOVED)
    assert ended(client, blocker, timeout=180)["status"] == "completed"  # seconds alone; minutes on a busy CPU


if RESTART:  # collected only with a command that restarts the ComfyUI under test

    def test_after_a_restart_every_record_and_file_is_there_and_the_running_job_ends_when_last_alive(live_app):
        _, client = live_app
        kept = ended(client, post_json(URL + "/prompt", unique(page_prompt()))["prompt_id"], timeout=60)
        running = client.post("/api/run/long/execute", json={"params": {}}).json["prompt_id"]
        wait_for(lambda: any(entry[1] == running for entry in get_json(URL + "/queue")["queue_running"]),
                 timeout=30, what="long job running")
        before = client.get("/api/admin/history?limit=1000").json
        went_down = datetime.datetime.now(datetime.timezone.utc)
        subprocess.run(RESTART, shell=True, check=True, timeout=300)
        back = datetime.datetime.now(datetime.timezone.utc)
        assert get_json(URL + "/history") == {}

        stalled = ended(client, running, timeout=30)
        # Connects are refused while it starts again: it went down, and the job ends stalled naming it.
        assert stalled["status"] == "stalled"
        assert stalled["error"].startswith(f"ComfyUI at {URL} went down while this job ran"), stalled["error"]
        assert went_down <= datetime.datetime.fromisoformat(stalled["finished_at"]) < back
        after = {record["prompt_id"]: record for record in client.get("/api/admin/history?limit=1000").json}
        assert {record["prompt_id"] for record in before} <= set(after)
        assert after[kept["prompt_id"]] == kept
        for ref in kept["outputs"]:
            assert (OUTPUT_DIR / ref["subfolder"] / ref["filename"]).is_file()


if URL2:  # collected only with a second ComfyUI

    OUTPUT_DIR2 = Path(os.environ["STUDIO_TEST_COMFYUI_OUTPUT_DIR2"]).resolve()

    @pytest.fixture
    def two_servers(app_config, tmp_path):
        """A studio on both servers, each with its own output folder, running the long and the small workflow."""
        workflows = tmp_path / "workflows"
        for name in ("long", "preview-and-save"):
            (workflows / name).mkdir(parents=True)
            (workflows / name / "graph.json").write_text(json.dumps(LIVE_WORKFLOWS[name]))
            (workflows / name / "manifest.json").write_text(json.dumps({
                "id": name, "name": name, "type": "static",
                "inputs": [{"id": "seed", "type": "seed", "default": -1, "maps_to": [{"node": "1", "input": "color", "transform": "color"}]}]}))
        app = create_app({**app_config, "STUDIO_WORKFLOWS_DIR": str(workflows), "STUDIO_COMFYUI_URL": f"{URL},{URL2}",
                          "STUDIO_COMFYUI_OUTPUT_DIRS": f"{OUTPUT_DIR},{OUTPUT_DIR2}"})
        client = app.test_client()
        client.get("/healthz")
        assert app.extensions["studio"].executor.wait_connected(30)
        yield app, client
        app.extensions["studio"].stop()

    def test_two_servers_share_a_burst_by_queue_length_and_keep_their_own_files(two_servers):
        _, client = two_servers
        burst = [client.post("/api/run/preview-and-save/execute", json={"params": {}}).json["prompt_id"] for _ in range(4)]
        records = [ended(client, prompt_id, timeout=60) for prompt_id in burst]
        assert sorted(record["comfyui_server"] for record in records) == sorted([URL, URL, URL2, URL2])
        for record in records:
            folder = OUTPUT_DIR if record["comfyui_server"] == URL else OUTPUT_DIR2
            assert record["status"] == "completed"
            assert (folder / record["outputs"][0]["subfolder"] / record["outputs"][0]["filename"]).is_file()

    if STOP2:

        def test_the_second_server_stopped_mid_run_stalls_its_job_by_name_and_the_first_takes_new_ones(two_servers):
            _, client = two_servers
            first = client.post("/api/run/long/execute", json={"params": {}}).json["prompt_id"]
            second = client.post("/api/run/long/execute", json={"params": {}}).json["prompt_id"]
            on_second = wait_for(lambda: [pid for pid in (first, second)
                                          if client.get(f"/api/admin/history/{pid}").json["comfyui_server"] == URL2],
                                 what="a long job on the second server")[0]
            wait_for(lambda: any(entry[1] == on_second for entry in get_json(URL2 + "/queue")["queue_running"]),
                     timeout=30, what="it runs there")
            subprocess.run(STOP2, shell=True, check=True, timeout=60)
            stalled = ended(client, on_second, timeout=30)
            assert stalled["status"] == "stalled"
            assert stalled["error"].startswith(f"ComfyUI at {URL2} went down while this job ran"), stalled["error"]
            after = client.post("/api/run/preview-and-save/execute", json={"params": {}}).json["prompt_id"]
            done = ended(client, after, timeout=180)
            assert (done["status"], done["comfyui_server"]) == ("completed", URL)
