"""The list's search through its index: the same jobs as a substring match, kept in step by every write."""
from __future__ import annotations

import datetime
import json
import subprocess
import sys

import pytest

from history import db as store
from history import jobs
from history.db import database
from history.models import Job
from tests.conftest import BASE_TIME

JOBS = {
    "fox-1": {"workflow_name": "Text to image (example)", "params": {"positive_prompt": "A red fox in the snow", "negative_prompt": "blurry"}},
    "fox-2": {"workflow_name": "Text to image (example)", "params": {"positive_prompt": "red foxes at dawn", "negative_prompt": "low quality, jpeg"}},
    "scene-1": {"workflow_name": "Scenes (example)", "params": {"scenes": [
        {"prompt": "a foggy harbour", "duration": 2, "seed": 7}, {"prompt": "gulls over the pier", "duration": 3, "seed": 8}]}},
    "quote-1": {"workflow_name": "ComfyUI", "params": {"positive_prompt": 'a sign that says "open", 100% cotton_candy'}},
    "multi-1": {"workflow_name": "Text to image (example)", "params": {"positive_prompt": "line one\nline two", "steps": 20}},
    "odd-1": {"workflow_name": "Odd params", "params": {"positive_prompt": 42, "scenes": "not a list"}},
    "odd-2": {"workflow_name": "Odd params", "params": {"scenes": [7, "text", {"prompt": None}, {"prompt": "last harbour"}]}},
}
QUERIES = [
    "fox", "RED FOX", "red fox", "foxes at", "snow", "blurry", "jpeg", "harbour", "gulls over", "foggy harbour",
    "Scenes (ex", "example", "comfyui", "fox-", "scene-1", "e-1", '"open"', "100%", "cotton_candy", "n_c", "%",
    "line one", "one\nline", "last harbour", "not a list", "nothing like this", "ha", "x", "red fox in the snow!",
]


def expected(needle: str) -> list[str]:
    """The jobs whose name, id, prompts or scene prompts contain ``needle`` (ASCII case folded), newest first."""
    found = []
    for index, (prompt_id, job) in enumerate(JOBS.items()):
        params = job["params"]
        texts = [job["workflow_name"], prompt_id]
        texts += [params[key] for key in ("positive_prompt", "negative_prompt") if isinstance(params.get(key), str)]
        scenes = params.get("scenes")
        if isinstance(scenes, list):
            texts += [scene["prompt"] for scene in scenes if isinstance(scene, dict) and isinstance(scene.get("prompt"), str)]
        if any(needle.lower() in text.lower() for text in texts):
            found.append(prompt_id)
    return found  # JOBS is in newest-first order


@pytest.fixture
def searchable(make_job):
    for index, (prompt_id, job) in enumerate(JOBS.items()):
        make_job(prompt_id=prompt_id, files=0, queued_at=BASE_TIME - datetime.timedelta(minutes=index), **job)


def search(needle: str, limit: int = 50) -> list[str]:
    return [job.prompt_id for job in jobs.history_page(jobs.HistoryFilter.parse(None, None, needle), limit).jobs]


@pytest.mark.parametrize("needle", QUERIES)
def test_search_finds_what_contains_the_text(searchable, needle):
    assert search(needle) == expected(needle)


def test_the_list_etag_follows_the_search(searchable, client):
    first = client.get("/admin/history/list?q=harbour").headers["ETag"]
    assert client.get("/admin/history/list?q=fox").headers["ETag"] != first
    assert client.get("/admin/history/list?q=harbour").headers["ETag"] == first


def test_a_search_reads_the_index_past_the_newest_jobs(make_job, monkeypatch):
    # The newest jobs are read one by one first; a rare match further down comes from the index.
    monkeypatch.setattr(jobs, "SEARCH_PROBE_ROWS", 3)
    rare = make_job(prompt_id="rare", files=0, minutes_ago=100, params={"positive_prompt": "a narwhal"})
    for minutes in range(6):
        make_job(files=0, minutes_ago=minutes, params={"positive_prompt": f"a whale, {minutes}"})
    assert search("narwhal") == [rare.prompt_id]
    assert len(search("whale", limit=2)) == 2
    assert len(search("whale")) == 6
    assert search("a n") == [rare.prompt_id]


def test_ids_of_repeated_characters_find_exactly_the_jobs_that_hold_them(make_job, monkeypatch):
    # Such a needle asks the index for its distinct trigrams once each; a job holding them all but not the
    # needle itself ("000-00" has every trigram of "0000-0000-00") is still no match.
    monkeypatch.setattr(jobs, "SEARCH_PROBE_ROWS", 1)
    made = [make_job(prompt_id=f"00000000-0000-0000-0000-{number:012x}", files=0, minutes_ago=number) for number in (1, 2, 0x2A3E0)]
    decoy = make_job(files=0, minutes_ago=0x2A3E0 + 1, params={"positive_prompt": "frame 000-00 of 0-0"})
    assert search(made[2].prompt_id) == [made[2].prompt_id]
    assert search("0000-0000-00") == [job.prompt_id for job in made]
    assert search("000-00") == [job.prompt_id for job in made] + [decoy.prompt_id]
    for needle, count in ((made[0].prompt_id, 1), ("0000-0000-00", 3)):
        history_filter = jobs.HistoryFilter.parse(None, None, needle)
        assert jobs.count_up_to(history_filter, 100) == count
        assert jobs.removal_usage(history_filter)["jobs"] == count


def test_the_index_follows_updates_and_deletes(searchable, db):
    Job.update(params={"positive_prompt": "a grey wolf"}).where(Job.prompt_id == "fox-1").execute()
    assert search("red fox") == ["fox-2"]
    assert search("grey wolf") == ["fox-1"]
    Job.update(status="error").where(Job.prompt_id == "fox-2").execute()
    assert search("red fox") == ["fox-2"]
    Job.delete().where(Job.prompt_id == "scene-1").execute()
    assert search("harbour") == ["odd-2"]


def test_an_import_in_another_process_is_found(app, searchable, tmp_path, database_kind):
    record = {"prompt_id": "imported-1", "workflow_id": "comfyui", "workflow_name": "ComfyUI", "status": "completed",
              "queued_at": "2026-11-28T13:00:00+00:00", "params": {"positive_prompt": "a lantern festival"}}
    path = tmp_path / "records.json"
    path.write_text(json.dumps([record]))
    env = {"STUDIO_DATA_DIR": str(app.config["STUDIO"].data_dir),
           "STUDIO_DATABASE_URL": app.config["DATABASE_URL"], "STUDIO_DEMO": "0", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "flask", "--app", "app:create_app()", "history", "import", str(path)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert search("lantern fest") == ["imported-1"]


@pytest.mark.sqlite_only
def test_the_migration_indexes_jobs_stored_before_it(tmp_path):
    store.bind(f"sqlite:///{tmp_path}/old.db")
    with store.connection():
        store.migrate(target="0001_job")
        # The first schema's columns only: today's model has more (starred, bytes) than that table.
        database.execute_sql(
            "INSERT INTO job (prompt_id, workflow_id, workflow_name, status, queued_at, params, seeds, outputs) "
            "VALUES (?, 'txt2img-example', '', 'completed', ?, ?, '{}', '[]')",
            ("old-1", BASE_TIME.replace(tzinfo=None), json.dumps({"positive_prompt": "an older prompt"})),
        )
        store.migrate()
        assert search("older pro") == ["old-1"]
    store.release()


@pytest.mark.parametrize("needle", ["fox", "harbour", "example", "ha", "nothing like this"])
def test_a_capped_count_agrees_with_the_search(searchable, needle):
    # The list says "Select all N matching" up to a cap (then "N+"): the count must be the search's, cut at cap + 1.
    history_filter = jobs.HistoryFilter.parse(None, None, needle)
    assert jobs.count_up_to(history_filter, 1) == min(len(expected(needle)), 2)
    assert jobs.count_up_to(history_filter, 100) == len(expected(needle))
