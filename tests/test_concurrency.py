"""The built-in executor writing, ~100 pollers reading and a batch delete running at once: zero errors.

A real threaded server; POLLERS client threads (default 100) each poll the list fragment and the JSON list
over keep-alive connections about every STUDIO_TEST_POLL_SECONDS (0.5: ten times the page's default
rate); 40 jobs are queued at the start and one thread submits more, which the built-in executor runs;
one thread deletes
the 150 jobs made beforehand, in batches, and every completed job it sees. Run for
STUDIO_TEST_CONCURRENCY_SECONDS (default 6; the issue's 30 s is a manual run), on SQLite and PostgreSQL.

Then: no 5xx, no exception, no "database is locked" anywhere in the log; every submitted job ended (none
left queued or running: no lost update), a deleted job has neither record nor folder, a kept one has its
record, its files and its times, and no folder is left without a record that names it.
"""
from __future__ import annotations

import http.client
import json
import logging
import os
import threading
import time
from collections import Counter


from history import files
from history.db import database
from history.models import Job
from tests.conftest import LiveServer
from tests.conftest import same_origin_client
from tests.conftest import wait_for

DURATION = float(os.environ.get("STUDIO_TEST_CONCURRENCY_SECONDS", "6"))
POLLERS = int(os.environ.get("STUDIO_TEST_POLLERS", "100"))
POLL_SECONDS = float(os.environ.get("STUDIO_TEST_POLL_SECONDS", "0.5"))
PREMADE = 150
QUEUED_AT_START = 40


class Recorder(logging.Handler):
    """Keeps every warning and error logged anywhere while the test runs."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record):
        self.records.append(f"{record.name}: {record.getMessage()} {record.exc_text or ''}")


def request(conn, method, path, body=None, headers=None):
    """One request on a keep-alive connection; (status, parsed JSON or text)."""
    headers = dict(headers or {})
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers.update({"Content-Type": "application/json", "Origin": f"http://{conn.host}:{conn.port}"})
    conn.request(method, path, body=data, headers=headers)
    response = conn.getresponse()
    raw = response.read()
    if response.getheader("Content-Type", "").startswith("application/json"):
        return response.status, json.loads(raw)
    return response.status, raw.decode("utf-8", "replace")


def test_executor_pollers_and_a_batch_delete_together(app, make_job, settings, database_kind, db):
    premade = [make_job(files=1).prompt_id for _ in range(PREMADE)]
    db.close()
    # A queue for the executor to work through from the first second (the submitter adds more as it goes).
    setup = same_origin_client(app)
    params = {"positive_prompt": "concurrency", "width": 64, "height": 64, "seed": -1}
    submitted: list[str] = []
    for _ in range(QUEUED_AT_START):
        response = setup.post("/api/run/txt2img-example/execute", json={"params": params})
        assert response.status_code == 202, response.json
        submitted.append(response.json["prompt_id"])
    recorder = Recorder()
    logging.getLogger().addHandler(recorder)
    server = LiveServer(app).start()
    port = server.server.server_port
    stop = threading.Event()
    errors: list[str] = []
    counts = Counter()
    lock = threading.Lock()
    deleted: set[str] = set()

    def note(kind: str, detail: str):
        with lock:
            errors.append(f"{kind}: {detail}"[:400])

    def guarded(function):
        def run(*args):
            try:
                function(*args)
            except Exception as error:  # any failure in a client thread is a test failure
                note(function.__name__, repr(error))
        return run

    @guarded
    def poller(number: int):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        paths = [("/admin/history/list", {"HX-Request": "true"}), ("/api/admin/history?limit=20", {})]
        while not stop.is_set():
            for path, headers in paths:
                status, body = request(conn, "GET", path, headers=headers)
                with lock:
                    counts["polls"] += 1
                if status >= 500 or status not in (200, 204, 304):
                    note("poll", f"{path} {status} {str(body)[:200]}")
            stop.wait(POLL_SECONDS * (0.5 + (number % 10) / 10))  # a poller's pace, spread out
        conn.close()

    @guarded
    def submitter():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while not stop.is_set():
            status, body = request(conn, "POST", "/api/run/txt2img-example/execute", {"params": params})
            if status != 202:
                note("execute", f"{status} {body}")
            else:
                with lock:
                    submitted.append(body["prompt_id"])
            stop.wait(0.02)
        conn.close()

    @guarded
    def deleter():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        backlog = list(premade)
        while not stop.is_set() or backlog:  # the made jobs all go, however slow the machine
            batch, backlog = backlog[:50], backlog[50:]
            status, listed = request(conn, "GET", "/api/admin/history?status=completed&limit=200")
            ran = [job["prompt_id"] for job in listed if job["prompt_id"] not in premade] if status == 200 else []
            batch += ran[::2]  # every other executed job goes; the rest must survive whole
            if not batch:
                stop.wait(0.05)
                continue
            status, report = request(conn, "POST", "/api/admin/history/delete", {"prompt_ids": batch})
            if status != 200:
                note("delete", f"{status} {report}")
                continue
            for failure in report["failed"]:
                if failure.get("status") != 409:  # a job still running is refused, and that is right
                    note("delete", json.dumps(failure))
            with lock:
                deleted.update(report["deleted"])
                counts["deleted"] += len(report["deleted"])
        conn.close()

    threads = [threading.Thread(target=poller, args=(n,), name=f"poller-{n}") for n in range(POLLERS)]
    threads += [threading.Thread(target=submitter, name="submitter"), threading.Thread(target=deleter, name="deleter")]
    started = time.monotonic()
    try:
        for thread in threads:
            thread.start()
        stop.wait(DURATION)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in threads)
        elapsed = time.monotonic() - started

        # Every submitted job ends: none is left queued or running (an update lost would leave one there).
        def drained():
            with database.connection_context():
                return not Job.select().where(Job.status.in_(("queued", "running"))).exists()

        wait_for(drained, 60, "the executor finishing every submitted job")
    finally:
        stop.set()
        server.stop()
        logging.getLogger().removeHandler(recorder)

    assert errors == []
    noisy = [line for line in recorder.records if "locked" in line.lower() or "Traceback" in line or "error" in line.lower()]
    assert noisy == []
    assert submitted and deleted, (len(submitted), len(deleted))
    assert set(premade) <= deleted  # the batch delete went through while all this ran

    studio = settings.output_dir / files.STUDIO_FOLDER
    with database.connection_context():
        records = {job.prompt_id: job for job in Job.select()}
    for prompt_id in deleted:
        assert prompt_id not in records
    kept = [prompt_id for prompt_id in submitted if prompt_id not in deleted]
    for prompt_id in kept:
        job = records[prompt_id]
        assert job.status == "completed", (prompt_id, job.status, job.error)
        assert job.started_at and job.finished_at and job.duration is not None and job.outputs
        for ref in job.outputs:
            assert files.output_file(settings.output_dir, ref).is_file(), (prompt_id, ref)
    named = {job.output_dir for job in records.values() if job.output_dir}
    on_disk = {entry.name for entry in studio.iterdir()}
    assert on_disk - named == set(), "folders left without a record"
    print(
        f"\nconcurrency ({database_kind}, {POLLERS} pollers, {elapsed:.1f}s): {counts['polls']} polls, "
        f"{len(submitted)} jobs run, {counts['deleted']} deleted ({PREMADE} made before), "
        f"{len(kept)} kept whole, errors {len(errors)}"
    )
