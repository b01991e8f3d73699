"""Several ComfyUI servers (one per GPU) behind one studio: two ComfyUI doubles on loopback, each with its own
output folder, built from the recorded transcripts (status frames carry ``exec_info.queue_remaining`` as
01_success and 13_two_servers show; a server that is stopped refuses connections as in 12_restart_mid_job)."""
from __future__ import annotations

import contextlib
import io
import zipfile

import pytest

from history import create_app
from history.config import ConfigError
from history.config import load_settings
from history.executors.comfyui import REMOVED
from history.executors.comfyui import ComfyUIExecutor
from history.executors.comfyui_servers import ComfyUIServers
from history.models import Job
from tests.comfyui_double import ComfyUIDouble
from tests.conftest import another_app
from tests.conftest import soup
from tests.conftest import wait_for
from tests.test_comfyui_executor import post_json
from tests.test_comfyui_observe import record
from tests.test_comfyui_observe import script_prompt

WAIT = 10.0
SMALL = {"seed": 5, "batch_size": 1, "width": 64, "height": 64}


@pytest.fixture
def doubles(tmp_path):
    """Two ComfyUI doubles, A and B, each writing to its own output folder (one input folder for both)."""
    (tmp_path / "comfy" / "input").mkdir(parents=True)
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(ComfyUIDouble(tmp_path / name / "output", input_dir=tmp_path / "comfy" / "input"))
            for name in ("comfy-a", "comfy-b")
        ]


@pytest.fixture
def app_config(app_config, doubles):
    a, b = doubles
    return {
        **app_config,
        "STUDIO_COMFYUI_URL": f"{a.url},{b.url}",
        "STUDIO_COMFYUI_OUTPUT_DIRS": f"{a.output_dir},{b.output_dir}",
        "STUDIO_INPUT_DIR": str(a.input_dir),
    }


@pytest.fixture
def studio(app, client):
    """The app's studio, started (its first request) and connected to both doubles."""
    client.get("/healthz")
    the_studio = app.extensions["studio"]
    assert the_studio.executor.wait_connected(WAIT)
    return the_studio


def execute(client) -> str:
    """Run the small text-to-image example; answer its prompt id."""
    response = client.post("/api/run/txt2img-example/execute", json={"params": SMALL})
    assert response.status_code == 202, response.json
    return response.json["prompt_id"]


def job(client, prompt_id) -> dict:
    return client.get(f"/api/admin/history/{prompt_id}").json


def fetched(client, url) -> int:
    """The status of a GET (the response closed: a file response holds the file open)."""
    with client.get(url) as response:
        return response.status_code


def queue_servers(client) -> dict:
    """The queue page's server rows: URL -> (data-up, its text)."""
    page = soup(client.get("/admin/queue", headers={"HX-Request": "true"}))
    return {row["data-server-url"]: (row["data-up"], row.get_text(" ", strip=True)) for row in page.select("#comfyui-servers li.comfyui-server")}


@pytest.mark.parametrize("env, message", [
    ({"STUDIO_COMFYUI_URL": "http://a:8188,ftp://b"}, "must be http:// or https:// addresses, got 'ftp://b'"),
    ({"STUDIO_COMFYUI_URL": "http://a:8188,"}, "must be http:// or https:// addresses, got ''"),
    ({"STUDIO_COMFYUI_URL": "http://a:81x8"}, "is not an address"),
    ({"STUDIO_COMFYUI_URL": "http://a:8188,http://a:8188/"}, "names a server twice"),
    ({"STUDIO_COMFYUI_URL": "http://a:8188,http://b:8188", "STUDIO_COMFYUI_OUTPUT_DIRS": "{out}/a"},
     "must name 2 folder(s), one per STUDIO_COMFYUI_URL server in the same order; got 1"),
    ({"STUDIO_COMFYUI_OUTPUT_DIRS": "{out}/a"}, "is set but STUDIO_COMFYUI_URL is not"),
    ({"STUDIO_COMFYUI_URL": "http://a:8188,http://b:8188", "STUDIO_COMFYUI_OUTPUT_DIRS": "{out}/a,{out}/a"},
     "names one folder twice"),
])
def test_server_settings_that_cannot_work_are_refused_at_start_with_what_to_fix(tmp_path, env, message):
    env = {name: value.format(out=tmp_path) for name, value in env.items()}
    with pytest.raises(ConfigError) as raised:
        load_settings({"STUDIO_DATA_DIR": str(tmp_path / "data"), **env})
    assert message in str(raised.value)
    assert str(raised.value).startswith(list(env)[-1])  # the variable to fix


def test_one_url_and_paired_folders_read_as_the_servers_and_their_folders(tmp_path):
    one = load_settings({"STUDIO_DATA_DIR": str(tmp_path / "data"), "STUDIO_COMFYUI_URL": "http://127.0.0.1:8188/"})
    assert one.comfyui_urls == ("http://127.0.0.1:8188",)
    assert one.output_roots.of("http://127.0.0.1:8188") == one.output_dir
    two = load_settings({
        "STUDIO_DATA_DIR": str(tmp_path / "data"),
        "STUDIO_COMFYUI_URL": "http://gpu0:8188, http://gpu1:8188",
        "STUDIO_COMFYUI_OUTPUT_DIRS": f"{tmp_path}/gpu0, {tmp_path}/gpu1",
    })
    assert two.output_roots.of("http://gpu1:8188") == (tmp_path / "gpu1").resolve()
    assert two.output_roots.of(None) == two.output_dir  # the built-in executor's and imported jobs


def test_a_burst_spreads_over_both_and_then_goes_to_the_shorter_queue(doubles, studio, client):
    a, b = doubles
    a.hold()
    b.hold()
    burst = [execute(client) for _ in range(4)]
    servers = [job(client, prompt_id)["comfyui_server"] for prompt_id in burst]
    assert sorted(servers) == sorted([a.url, a.url, b.url, b.url])
    # Another client fills A's queue: its status frames say so, and the next jobs go to B.
    for color in (1, 2, 3):
        post_json(a.url + "/prompt", script_prompt(color))
    wait_for(lambda: queue_servers(client)[a.url][1].count("queue 5"), timeout=WAIT, what="A's queue of 5 on the queue page")
    later = [execute(client) for _ in range(2)]
    assert [job(client, prompt_id)["comfyui_server"] for prompt_id in later] == [b.url, b.url]
    rows = queue_servers(client)
    assert rows[a.url][0] == rows[b.url][0] == "true"
    assert "queue 4" in rows[b.url][1]
    a.release()
    b.release()
    for prompt_id in burst + later:
        assert record(client, prompt_id, timeout=WAIT)["status"] == "completed"


def test_a_server_stopped_mid_run_stalls_its_job_by_name_and_new_jobs_go_to_the_other(doubles, studio, client):
    a, b = doubles
    a.pause_before("2")
    b.pause_before("2")
    running = execute(client)
    server = job(client, running)["comfyui_server"]
    down, other = (a, b) if server == a.url else (b, a)
    assert down.wait_paused(WAIT)
    wait_for(lambda: job(client, running)["status"] == "running", what="the job runs")
    page = soup(client.get("/admin/queue", headers={"HX-Request": "true"}))
    row = page.select_one(f'#comfyui-servers li[data-server-url="{down.url}"]')
    assert f"running {running[:12]}" in row.get_text(" ", strip=True)

    down.stop()
    stalled = record(client, running, timeout=WAIT)
    assert stalled["status"] == "stalled"
    assert f"ComfyUI at {down.url} went down while this job ran" in stalled["error"]
    wait_for(lambda: queue_servers(client)[down.url][0] == "false", what="the queue page shows the server down")

    other.resume()
    after = [execute(client) for _ in range(2)]
    for prompt_id in after:
        done = record(client, prompt_id, timeout=WAIT)
        assert (done["status"], done["comfyui_server"]) == ("completed", other.url)
    # Retry goes to the server that is up; its files are found in that server's folder.
    retried = client.post("/api/admin/history/retry", json={"prompt_ids": [running]})
    assert retried.status_code == 200 and not retried.json["failed"], retried.json
    retry = Job.get(Job.retry_of == running)
    done = record(client, retry.prompt_id, timeout=WAIT)
    assert (done["status"], done["comfyui_server"]) == ("completed", other.url)
    other_dir = other.output_dir / done["outputs"][0]["subfolder"] / done["outputs"][0]["filename"]
    assert other_dir.is_file()

    # With both down, an execute is refused naming each, and leaves no record.
    other.stop()
    wait_for(lambda: set(up for up, _text in queue_servers(client).values()) == {"false"}, what="both shown down")
    count = Job.select().count()
    refused = client.post("/api/run/txt2img-example/execute", json={"params": SMALL})
    assert refused.status_code == 503
    assert refused.json["error"].startswith("no ComfyUI server can take the job: ")
    assert f"ComfyUI at {a.url} is unreachable" in refused.json["error"]
    assert f"ComfyUI at {b.url} is unreachable" in refused.json["error"]
    assert Job.select().count() == count


def test_a_server_cut_off_mid_run_that_answers_again_with_the_job_done_records_its_real_end(doubles, studio, client):
    a, b = doubles
    a.pause_before("2")
    b.pause_before("2")
    prompt_id = execute(client)
    cut = a if job(client, prompt_id)["comfyui_server"] == a.url else b
    assert cut.wait_paused(WAIT)
    wait_for(lambda: job(client, prompt_id)["status"] == "running", what="the job runs")
    cut.go_down()
    stalled = record(client, prompt_id)
    assert stalled["status"] == "stalled" and stalled["error"].startswith(f"ComfyUI at {cut.url} went down")
    cut.resume()  # it ran on meanwhile, unheard
    assert cut.wait_idle(WAIT)
    cut.come_back()
    done = wait_for(lambda: (now := job(client, prompt_id))["status"] == "completed" and now, what="its real end")
    assert done["error"].startswith("stalled at ") and "went down" in done["error"] and "then completed at" in done["error"]
    assert (cut.output_dir / done["outputs"][0]["subfolder"] / done["outputs"][0]["filename"]).is_file()


def test_jobs_queued_on_a_server_that_goes_down_move_to_one_that_is_up_and_leave_the_first_when_it_returns(
        doubles, studio, client, monkeypatch):
    monkeypatch.setattr(ComfyUIServers, "move_after", 0.3)
    monkeypatch.setattr(ComfyUIExecutor, "max_reconnect_delay", 0.2)  # a server that answers again is seen at once
    a, b = doubles
    a.hold()
    b.hold()
    jobs = [execute(client), execute(client)]
    on = {job(client, prompt_id)["comfyui_server"]: prompt_id for prompt_id in jobs}
    assert set(on) == {a.url, b.url}
    moving = on[a.url]
    # Both down: no server can take A's queued job, so it stays on A, said to wait.
    a.go_down()
    b.go_down()
    waiting = wait_for(lambda: (now := job(client, moving))["error"] and now, what="A's job noted as waiting")
    assert (waiting["status"], waiting["comfyui_server"]) == ("queued", a.url)
    assert waiting["error"].startswith(f"ComfyUI at {a.url} went down at ")
    assert "no other ComfyUI server up to take it" in waiting["error"]
    page = soup(client.get("/admin/queue", headers={"HX-Request": "true"}))
    entry = page.select_one(f'li.queue-job[data-prompt-id="{moving}"]')
    assert "waiting for a ComfyUI server (127.0.0.1:" in entry.select_one(".progress-text").get_text()
    assert entry.select_one(".queue-note").get_text() == waiting["error"]

    # B answers again: A's job is posted there under its own id; B runs both.
    b.come_back()
    moved = wait_for(lambda: (now := job(client, moving))["comfyui_server"] == b.url and now, what="moved to B")
    assert moved["status"] == "queued"
    assert moved["error"].startswith(f"moved to ComfyUI at {b.url} at ")
    assert f"ComfyUI at {a.url} went down at " in moved["error"]
    b.release()
    for prompt_id in jobs:
        done = record(client, prompt_id)
        assert (done["status"], done["comfyui_server"]) == ("completed", b.url)
        assert (b.output_dir / done["outputs"][0]["subfolder"] / done["outputs"][0]["filename"]).is_file()
    assert record(client, moving)["error"] == moved["error"]  # the move stays noted

    # A answers again: the moved prompt leaves its queue before A may run it.
    a.come_back()
    wait_for(lambda: ("POST", "/queue", {"delete": [moving]}) in a.requests, what="A's queue emptied of it")
    a.release()
    assert a.wait_idle(WAIT)
    assert a.history(moving) is None and moving not in a.frames
    assert job(client, moving)["status"] == "completed"


def test_each_servers_files_are_served_packaged_and_deleted_from_its_own_folder(doubles, studio, client, settings):
    a, b = doubles
    a.hold()  # the first job waits on A, so the second goes to B
    first, second = execute(client), execute(client)
    a.release()
    records = {record(client, prompt_id)["comfyui_server"]: record(client, prompt_id) for prompt_id in (first, second)}
    assert set(records) == {a.url, b.url}
    for double in (a, b):
        done = records[double.url]
        ref = done["outputs"][0]
        assert (double.output_dir / ref["subfolder"] / ref["filename"]).is_file()
        assert not (settings.output_dir / ref["subfolder"]).exists()

        card = soup(client.get(f"/admin/history/jobs/{done['prompt_id']}/card")).select_one("img.job-thumb")
        with client.get(card["src"]) as thumb:
            assert (thumb.status_code, thumb.mimetype) == (200, "image/webp")
        overlay = soup(client.get(f"/admin/history/jobs/{done['prompt_id']}", headers={"HX-Request": "true"}))
        assert overlay.select_one('[data-field="comfyui_server"] code').get_text() == double.url
        shown = [img["src"] for img in overlay.select("img") if "/media/preview/output/" in img["src"]]
        assert shown and fetched(client, shown[0]) == 200
        assets = soup(client.get(f"/admin/assets?dir={done['output_dir']}"))
        assert [fetched(client, img["src"]) for img in assets.select("img.asset-thumb")] == [200]
        package = client.get(f"/api/admin/history/{done['prompt_id']}/package")
        assert package.status_code == 200
        assert f"output/{ref['filename']}" in zipfile.ZipFile(io.BytesIO(package.data)).namelist()

    b_ref = records[b.url]["outputs"][0]
    # The same path under the shared folder or A's is not B's file.
    path = f"/media/output/{b_ref['subfolder']}/{b_ref['filename']}"
    assert [fetched(client, path + query) for query in ("", "?server=0", "?server=1", "?server=7", "?server=x")] == [
        404, 404, 200, 404, 404
    ]

    usage = client.post("/api/admin/history/usage", json={"prompt_ids": [first, second]})
    assert usage.status_code == 200 and usage.json["files"] == 2, usage.json
    deleted = client.post("/api/admin/history/delete", json={"prompt_ids": [first, second]})
    assert sorted(deleted.json["deleted"]) == sorted([first, second])
    for double in (a, b):
        ref = records[double.url]["outputs"][0]
        assert not (double.output_dir / ref["subfolder"]).exists()


def test_each_server_is_imported_and_observed_and_never_settles_the_others_jobs(doubles, app_config, db):
    a, b = doubles
    # Before the studio starts, each server ran a prompt of another client: both are imported, each as its own.
    imported = {double.url: post_json(double.url + "/prompt", script_prompt(0x10 + index))["prompt_id"]
                for index, double in enumerate(doubles)}
    assert a.wait_idle(WAIT) and b.wait_idle(WAIT)
    b.hold()
    with another_app(app_config) as first_app:
        client = first_app.test_client()
        client.get("/healthz")
        assert first_app.extensions["studio"].executor.wait_connected(WAIT)
        for url, prompt_id in imported.items():
            taken = record(client, prompt_id)
            assert (taken["comfyui_server"], taken["workflow_id"]) == (url, "comfyui")
            assert taken["source"].endswith(f"on {url}")
        a.hold()
        on_a, on_b = execute(client), execute(client)
        assert {job(client, on_a)["comfyui_server"], job(client, on_b)["comfyui_server"]} == {a.url, b.url}
        if job(client, on_a)["comfyui_server"] != a.url:
            on_a, on_b = on_b, on_a
        a.release()
        assert record(client, on_a)["status"] == "completed"
        # A queued prompt another client deletes from A's queue: A's sweep settles what it follows, not B's job.
        a.hold()
        deleted = post_json(a.url + "/prompt", script_prompt(0x99))["prompt_id"]
        wait_for(lambda: job(client, deleted).get("status") == "queued", what="A's prompt observed")
        post_json(a.url + "/queue", {"delete": [deleted]})
        assert record(client, deleted)["error"] == REMOVED
        assert job(client, on_b)["status"] == "queued"
        # A retry of B's imported prompt goes to A (B's queue is longer) and says where the original came from.
        retried = client.post("/api/run/comfyui/execute", json={"retry_of": imported[b.url]})
        assert retried.status_code == 202, retried.json
        retry = job(client, retried.json["prompt_id"])
        assert retry["comfyui_server"] == a.url
        assert retry["source"] == f"a script on {b.url}, retried from the studio"
        first_app.extensions["studio"].stop()
    # The next process finds B's job queued: only B is asked about it (A would not know it and stall it).
    with another_app(app_config) as next_app:
        client = next_app.test_client()
        client.get("/healthz")
        assert next_app.extensions["studio"].executor.wait_connected(WAIT)
        # Both servers reconciled on connecting: A, which never had the job, left it alone.
        assert job(client, on_b)["status"] == "queued"
        b.release()
        done = record(client, on_b)
        assert (done["status"], done["comfyui_server"]) == ("completed", b.url)
        next_app.extensions["studio"].stop()


def test_a_single_url_studio_records_its_server_and_keeps_one_shared_folder(tmp_path, app_config, doubles):
    a, _b = doubles
    config = {**app_config, "STUDIO_COMFYUI_URL": a.url, "STUDIO_OUTPUT_DIR": str(a.output_dir)}
    config.pop("STUDIO_COMFYUI_OUTPUT_DIRS")
    app = create_app(config)
    try:
        client = app.test_client()
        client.get("/healthz")
        done = record(client, execute(client))
        assert (done["status"], done["comfyui_server"]) == ("completed", a.url)
        card = soup(client.get(f"/admin/history/jobs/{done['prompt_id']}/card"))
        assert card.select_one(".job-server") is None  # one server: the card does not name it
        assert "server=" not in card.select_one("img.job-thumb")["src"]
    finally:
        app.extensions["studio"].stop()


def test_a_job_taken_over_on_a_server_no_longer_configured_ends_stalled_saying_so(doubles, make_job, client):
    gone = "http://127.0.0.1:9"  # in STUDIO_COMFYUI_URL when the job ran, no longer
    left = make_job(status="running", files=0, owner="a-process-now-gone", comfyui_server=gone)
    client.get("/healthz")  # starts the studio, which takes over the jobs of workers that are gone
    ended = wait_for(lambda: (found := job(client, left.prompt_id))["status"] != "running" and found,
                     what="the job taken over ending")
    assert ended["status"] == "stalled"
    assert ended["error"].endswith(f"it was on ComfyUI at {gone}, which is no longer in STUDIO_COMFYUI_URL")
    assert ended["finished_at"] and ended["comfyui_server"] == gone


@pytest.mark.parametrize("stored", ["http://[::1", "not a url at all", "http://gone.example:8188"])
def test_a_stored_server_that_is_no_longer_configured_or_no_address_never_breaks_a_page(client, make_job, stored):
    job = make_job(comfyui_server=stored)
    card = soup(client.get(f"/admin/history/jobs/{job.prompt_id}/card"))
    assert card.select_one(".job-server")["title"] == f"Ran on ComfyUI at {stored}"
    assert fetched(client, card.select_one("img.job-thumb")["src"]) == 200  # its files: the shared output folder
    overlay = soup(client.get(f"/admin/history/jobs/{job.prompt_id}", headers={"HX-Request": "true"}))
    assert overlay.select_one('[data-field="comfyui_server"] code').get_text() == stored
