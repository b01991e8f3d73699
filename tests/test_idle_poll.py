"""An idle poll answers from what this process knows of the store, and still sees every other writer's change."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest

from history import jobs
from history import security
from history.models import Job
from history.web import guard
from tests.conftest import another_app
from tests.conftest import same_origin_client
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


# ---- the same poll again: history/web/poll_answers.py repeats the app's answer, the guard still decides ----

PASSWORD = "a password for the poll"


def counted_pipeline(monkeypatch) -> list:
    """Count the requests the guard's pipeline runs for (a repeated idle poll is answered before it)."""
    runs = []
    monkeypatch.setattr(guard, "STEPS", (lambda: runs.append(1), *guard.STEPS))
    return runs


def polls_counted(client, answer: str) -> float:
    """The /metrics count of the list's polls answered ``answer``."""
    text = client.get("/metrics").get_data(as_text=True)
    return float(re.search(rf'^studio_list_polls_total{{answer="{answer}"}} (\S+)$', text, re.M).group(1))


@pytest.mark.sqlite_only  # on PostgreSQL a NOTIFY landing late moves the token: the repeat is tried again
def test_the_same_idle_poll_again_gets_the_same_answer_without_the_pipeline(app, client, make_job, monkeypatch):
    make_job()
    etag = shown_etag(client)
    listening(app)
    first, first_304 = poll(client, etag), client.get("/admin/history/list", headers={"If-None-Match": f'"{etag}"'})
    assert (first.status_code, first_304.status_code) == (204, 304)
    assert first.headers["X-Content-Type-Options"] == "nosniff" and first.headers["Cache-Control"] == "no-store"
    counted_before = polls_counted(client, "204")
    runs = counted_pipeline(monkeypatch)
    for _ in range(3):
        again = poll(client, etag)
        assert (again.status_code, dict(again.headers), again.data) == (204, dict(first.headers), b"")
        again_304 = client.get("/admin/history/list", headers={"If-None-Match": f'"{etag}"'})
        assert (again_304.status_code, dict(again_304.headers)) == (304, dict(first_304.headers))
    assert runs == []
    assert polls_counted(client, "204") == counted_before + 3  # /metrics still counts every poll
    assert poll(client, "another etag").status_code == 200 and runs  # anything else goes through the app


@pytest.mark.sqlite_only
def test_after_a_change_the_same_poll_again_gets_the_same_new_list_until_the_next_change(app, client, make_job,
                                                                                          monkeypatch):
    make_job(minutes_ago=5)
    shown = shown_etag(client)
    listening(app)
    arrived = make_job(minutes_ago=1)
    first = poll(client, shown)
    assert first.status_code == 200 and arrived.prompt_id in first.get_data(as_text=True)
    runs = counted_pipeline(monkeypatch)
    again = poll(client, shown)  # another page that showed the same list asks the same
    assert (again.status_code, dict(again.headers), again.data) == (200, dict(first.headers), first.data)
    assert runs == []
    latest = make_job(minutes_ago=0)
    after = poll(client, shown)
    assert after.status_code == 200 and latest.prompt_id in after.get_data(as_text=True)
    assert runs


@pytest.mark.sqlite_only
def test_without_a_password_the_same_poll_by_another_host_name_is_refused(app, client, make_job):
    make_job()
    etag = shown_etag(client)
    listening(app)
    assert [poll(client, etag).status_code for _ in range(2)] == [204, 204]
    rebound = client.get("/admin/history/list", headers={**HTMX, "X-List-ETag": etag, "Host": "rebound.example"})
    assert rebound.status_code == 403


@pytest.fixture
def secured(app, app_config, database_kind):
    """The app with a password (its own, on the test's store; the test's app runs the jobs: on SQLite one process
    does). On PostgreSQL it is a web process, whose listener lets its polls be repeated."""
    runs_nothing = {"STUDIO_ROLE": "web"} if database_kind == "postgres" else {"START_RUNNER": False}
    with another_app({**app_config, "STUDIO_ADMIN_PASSWORD": PASSWORD, **runs_nothing}) as secured_app:
        yield secured_app


def logged_in(secured_app):
    browser = same_origin_client(secured_app)
    assert browser.post("/login", data={"password": PASSWORD}).status_code == 303
    return browser


@pytest.mark.sqlite_only
def test_with_a_password_the_same_poll_is_repeated_only_to_the_same_caller(secured, make_job):
    make_job()
    browser = logged_in(secured)
    etag = shown_etag(browser)
    assert [poll(browser, etag).status_code for _ in range(3)] == [204, 204, 204]
    assert poll(same_origin_client(secured), etag).status_code == 401  # no cookie: refused, not repeated
    forged = same_origin_client(secured)
    forged.set_cookie(secured.config["SESSION_COOKIE_NAME"], "not-a-session")
    assert poll(forged, etag).status_code == 401
    token = {"Authorization": f"Bearer {security.derive_api_token(PASSWORD)}"}
    script = secured.test_client()
    assert [script.get("/admin/history/list", headers={**HTMX, "X-List-ETag": etag, **token}).status_code
            for _ in range(2)] == [204, 204]
    wrong = script.get("/admin/history/list", headers={**HTMX, "X-List-ETag": etag, "Authorization": "Bearer wrong"})
    assert wrong.status_code == 401


@pytest.mark.sqlite_only
def test_a_poll_after_a_logout_or_the_end_of_a_login_is_refused(secured, make_job, monkeypatch):
    make_job()
    clock = [time.time()]
    monkeypatch.setattr(guard.time, "time", lambda: clock[0])
    browser = logged_in(secured)
    copy = same_origin_client(secured)  # the same login in another tab
    cookie = browser.get_cookie(secured.config["SESSION_COOKIE_NAME"])
    copy.set_cookie(cookie.key, cookie.value)
    etag = shown_etag(browser)
    assert [poll(copy, etag).status_code for _ in range(2)] == [204, 204]
    assert browser.post("/logout").status_code == 303
    assert poll(copy, etag).status_code == 401  # a logout ends the login in every tab at once
    later = logged_in(secured)
    assert [poll(later, etag).status_code for _ in range(2)] == [204, 204]
    clock[0] += secured.config["LOGIN_LIFETIME"]
    assert poll(later, etag).status_code == 401  # the login ran out


def test_a_logout_in_another_process_ends_the_repeats_within_a_second(secured, app_config, make_job):
    # On PostgreSQL a logout moves no job, so no change token: only the login's own deadline ends the repeats.
    make_job()
    browser = logged_in(secured)
    cookie = browser.get_cookie(secured.config["SESSION_COOKIE_NAME"])
    etag = shown_etag(browser)
    listening(secured)
    assert [poll(browser, etag).status_code for _ in range(2)] == [204, 204]
    with another_app({**app_config, "STUDIO_ADMIN_PASSWORD": PASSWORD, "START_RUNNER": False}) as elsewhere:
        other = same_origin_client(elsewhere)
        other.set_cookie(cookie.key, cookie.value)
        assert other.post("/logout").status_code == 303
    wait_for(lambda: poll(browser, etag).status_code == 401, timeout=guard.ENDED_LOGINS_SECONDS + 2,
             what="the logout elsewhere refusing the poll")
