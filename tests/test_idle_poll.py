"""An idle poll answers from what this process knows of the store, and still sees every other writer's change."""
from __future__ import annotations

import json
import subprocess
import sys

from history import jobs
from history.models import Job
from tests.conftest import wait_for

HTMX = {"HX-Request": "true"}


def shown_etag(client, path="/admin/history/list") -> str:
    return client.get(path, headers=HTMX).headers["ETag"].strip('"')


def poll(client, etag: str, path="/admin/history/list"):
    return client.get(path, headers={**HTMX, "X-List-ETag": etag})


def listening(app) -> None:
    """On PostgreSQL, wait for this process's LISTEN (until then every poll asks the store)."""
    bus = app.extensions["studio"].bus
    if hasattr(bus, "wait_listening"):
        assert bus.wait_listening(), "the listener did not connect to PostgreSQL"


def test_an_idle_poll_reads_nothing_from_the_store(app, client, make_job, monkeypatch):
    make_job()
    etag = shown_etag(client)  # the first request starts the studio, and on PostgreSQL its listener
    listening(app)
    assert poll(client, etag).status_code == 204
    reads = []
    original = jobs.list_etag
    monkeypatch.setattr(jobs, "list_etag", lambda *args, **kwargs: reads.append(args) or original(*args, **kwargs))
    for _ in range(5):
        assert poll(client, etag).status_code == 204
    assert client.get("/admin/history/list", headers={"If-None-Match": f'"{etag}"'}).status_code == 304
    assert reads == []


def changed_poll(app, client, etag: str, database_kind: str):
    """The poll that first answers a change: on SQLite the very next one (data_version moves with any commit);
    on PostgreSQL one within a poll interval (the NOTIFY of a write reaches the listener a moment after it)."""
    if database_kind == "sqlite":
        return poll(client, etag)
    return wait_for(lambda: (answer := poll(client, etag)).status_code == 200 and answer,
                    timeout=app.config["STUDIO"].poll_seconds, what="the change on a poll")


def test_a_write_outside_any_request_shows_on_the_next_poll(app, client, make_job, db, database_kind):
    job = make_job(minutes_ago=3)
    etag = shown_etag(client)
    listening(app)
    assert poll(client, etag).status_code == 204
    Job.update(status="error").where(Job.prompt_id == job.prompt_id).execute()
    changed = changed_poll(app, client, etag, database_kind)
    assert changed.status_code == 200
    assert 'data-status="error"' in changed.get_data(as_text=True)


def test_a_delete_through_the_api_shows_on_the_next_poll_at_once(app, client, make_job):
    # A state-changing request moves this process's token before its answer (even before PostgreSQL's NOTIFY).
    job = make_job(minutes_ago=2, files=0)
    make_job(minutes_ago=3, files=0)
    etag = shown_etag(client)
    listening(app)
    assert poll(client, etag).status_code == 204
    assert client.post("/api/admin/history/delete", json={"prompt_ids": [job.prompt_id]}).status_code == 200
    changed = poll(client, etag)
    assert changed.status_code == 200
    assert job.prompt_id not in changed.get_data(as_text=True)


def test_an_import_by_another_process_shows_on_the_next_poll(app, client, make_job, tmp_path, database_kind):
    make_job(minutes_ago=10)
    etag = shown_etag(client)
    listening(app)
    assert poll(client, etag).status_code == 204
    record = {"prompt_id": "from-the-cli", "workflow_id": "comfyui", "workflow_name": "ComfyUI", "status": "completed",
              "queued_at": "2026-11-28T13:00:00+00:00", "params": {"positive_prompt": "imported meanwhile"}}
    path = tmp_path / "records.json"
    path.write_text(json.dumps([record]))
    env = {"STUDIO_DATA_DIR": str(app.config["STUDIO"].data_dir), "STUDIO_DATABASE_URL": app.config["DATABASE_URL"],
           "STUDIO_DEMO": "0", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "flask", "--app", "app:create_app()", "history", "import", str(path)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    changed = changed_poll(app, client, etag, database_kind)
    assert changed.status_code == 200
    assert 'data-prompt-id="from-the-cli"' in changed.get_data(as_text=True)
