"""Several server processes on one PostgreSQL store: a job finished in one reaches the websockets of another;
web processes that run nothing and worker processes that run the jobs posted to them.

Web processes are the production server (gunicorn, gthread worker, as `make serve` runs it); workers are
`studio-history serve` with STUDIO_ROLE=worker (they answer /healthz only), as the README's systemd units run
them. All on loopback, sharing the database and the output folder.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest
import websocket

from tests.conftest import POSTGRES_URL
from tests.conftest import reset_postgres
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, server: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, "the server exited during start-up"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


def stop_processes(*processes: subprocess.Popen) -> None:
    """Ask each server process to stop (SIGTERM, all at once), and kill one that has not within 15 s."""
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def two_servers(tmp_path):
    reset_postgres(POSTGRES_URL)
    env = {
        **os.environ,
        "STUDIO_DATA_DIR": str(tmp_path / "data"),
        "STUDIO_DATABASE_URL": POSTGRES_URL,
        "STUDIO_DEMO": "0",
        "STUDIO_SECRET_KEY": "shared-by-both-processes",
    }
    servers = []
    ports = []
    try:
        for _ in range(2):
            port = free_port()
            server = subprocess.Popen(
                [str(Path(sys.executable).with_name("gunicorn")), "-w", "1", "-k", "gthread", "--threads", "16",
                 "--no-control-socket", "-b", f"127.0.0.1:{port}", "--log-level", "warning", "app:create_app()"],
                cwd=ROOT, env=env,
            )
            servers.append(server)
            wait_for_port(port, server)
            ports.append(port)
        yield ports
    finally:
        stop_processes(*servers)


def execute(port: int, prompt: str, size: int = 64, batch: int = 1) -> str:
    base = f"http://127.0.0.1:{port}"
    params = {"positive_prompt": prompt, "width": size, "height": size, "batch_size": batch}
    request = urllib.request.Request(
        f"{base}/api/run/txt2img-example/execute",
        data=json.dumps({"params": params}).encode(),
        headers={"Content-Type": "application/json", "Origin": base},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=15) as response:
        assert response.status == 202
        return json.loads(response.read())["prompt_id"]


def hear_a_job_end_to_end(ws, post, seconds_each: float) -> tuple[str, dict[str, list[str]]]:
    """Post jobs (``post()`` answers a prompt_id) until ``ws`` hears one from job.queued to job.completed
    (30 s at most, ``seconds_each`` per job); answer the last job posted and the event types heard, by job."""
    deadline = time.monotonic() + 30
    heard: dict[str, list[str]] = {}
    while time.monotonic() < deadline:
        prompt_id = post()
        heard[prompt_id] = []
        until = time.monotonic() + seconds_each
        while time.monotonic() < until:
            ws.settimeout(max(0.05, until - time.monotonic()))
            try:
                frame = json.loads(ws.recv())
            except websocket.WebSocketTimeoutException:
                break
            heard.setdefault(frame["data"].get("prompt_id"), []).append(frame["type"])
            if frame["type"] == "job.completed" and frame["data"]["prompt_id"] == prompt_id:
                break
        if heard[prompt_id][:1] == ["job.queued"] and heard[prompt_id][-1:] == ["job.completed"]:
            break
    return prompt_id, heard


def test_a_job_run_by_one_process_reaches_the_websocket_of_another(two_servers):
    runs_it, watches = two_servers
    # The watcher's first request starts its studio, and with it the LISTEN on PostgreSQL.
    urllib.request.urlopen(f"http://127.0.0.1:{watches}/admin/history", timeout=15).close()
    ws = websocket.create_connection(f"ws://127.0.0.1:{watches}/ws", timeout=15, origin=f"http://127.0.0.1:{watches}")
    try:
        # The listener connects in the background: run jobs until one is heard from start to end.
        prompt_id, heard = hear_a_job_end_to_end(ws, lambda: execute(runs_it, "crossing processes"), 5)
        assert heard[prompt_id][0] == "job.queued"
        assert heard[prompt_id][-1] == "job.completed"
        assert "job.started" in heard[prompt_id]
    finally:
        ws.close()
    # The record the other process wrote is the one this process serves.
    with urllib.request.urlopen(f"http://127.0.0.1:{watches}/api/admin/history/{prompt_id}", timeout=15) as response:
        record = json.loads(response.read())
    assert record["status"] == "completed"
    assert record["outputs"]


# ---- web and worker processes ---------------------------------------------------------------------

SLOW = {"size": 2048, "batch": 4}  # a built-in job of a few seconds: long enough to act while it runs


def gunicorn(port: int) -> list[str]:
    return [str(Path(sys.executable).with_name("gunicorn")), "-w", "1", "-k", "gthread", "--threads", "16",
            "--no-control-socket", "-b", f"127.0.0.1:{port}", "--log-level", "warning", "app:create_app()"]


class Cluster:
    """One web process and two workers on one PostgreSQL store; a worker can be stopped and started again."""

    def __init__(self, data_dir: Path, logs: Path):
        self.logs = logs
        self.env = {
            **os.environ,
            "STUDIO_DATA_DIR": str(data_dir),
            "STUDIO_DATABASE_URL": POSTGRES_URL,
            "STUDIO_DEMO": "0",
            "STUDIO_SECRET_KEY": "shared-by-every-process",
            # A silent worker is taken for dead after 6 s: long enough that a loaded machine never makes a live one look dead.
            "STUDIO_HEARTBEAT_SECONDS": "2",
        }
        self.processes: dict[str, subprocess.Popen] = {}
        self.ports: dict[str, int] = {}

    def start(self, name: str) -> int:
        port = free_port()
        role = "web" if name == "web" else "worker"
        command = gunicorn(port) if role == "web" else [
            sys.executable, "-m", "history", "serve", "--host", "127.0.0.1", "--port", str(port)]
        log = open(self.logs / f"{name}.log", "a")
        self.processes[name] = subprocess.Popen(command, cwd=ROOT, env={**self.env, "STUDIO_ROLE": role},
                                                stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for_port(port, self.processes[name])
        self.ports[name] = port
        return port

    def stop(self, name: str) -> None:
        stop_processes(self.processes.pop(name))

    def health(self, name: str) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports[name]}/healthz", timeout=15) as response:
            return json.loads(response.read())

    def job(self, prompt_id: str) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['web']}/api/admin/history/{prompt_id}", timeout=15) as response:
            return json.loads(response.read())

    def worker_of(self, prompt_id: str) -> str | None:
        """The name of the worker process that holds a job (from the store: the API does not show owners)."""
        with psycopg.connect(POSTGRES_URL) as connection:
            row = connection.execute("SELECT owner FROM job WHERE prompt_id = %s", (prompt_id,)).fetchone()
        ids = {self.health(name)["worker"]: name for name in self.processes if name != "web"}
        return ids.get(row[0]) if row else None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reset_postgres(POSTGRES_URL)
    folder = tmp_path_factory.mktemp("cluster")
    running = Cluster(folder / "data", folder)
    try:
        for name in ("web", "worker-1", "worker-2"):
            running.start(name)
        yield running
    finally:
        for name in list(running.processes):
            running.stop(name)


def test_a_job_posted_to_a_web_process_runs_on_a_worker_and_its_websocket_hears_it(cluster):
    web = cluster.ports["web"]
    assert cluster.health("web")["role"] == "web"
    assert cluster.health("web")["live_workers"] == 2
    urllib.request.urlopen(f"http://127.0.0.1:{web}/admin/history", timeout=15).close()  # starts its listener
    ws = websocket.create_connection(f"ws://127.0.0.1:{web}/ws", timeout=15, origin=f"http://127.0.0.1:{web}")
    try:
        # The listener connects in the background: post jobs until one is heard from start to end.
        prompt_id, heard = hear_a_job_end_to_end(ws, lambda: execute(web, "posted to a web process"), 10)
        assert heard[prompt_id][0] == "job.queued"
        assert "job.started" in heard[prompt_id]
        assert heard[prompt_id][-1] == "job.completed"
    finally:
        ws.close()
    assert cluster.job(prompt_id)["status"] == "completed" and cluster.job(prompt_id)["outputs"]
    assert cluster.worker_of(prompt_id) in ("worker-1", "worker-2")  # the web process ran nothing
    with pytest.raises(urllib.error.HTTPError) as refused:  # and a worker serves no pages
        urllib.request.urlopen(f"http://127.0.0.1:{cluster.ports['worker-1']}/admin/history", timeout=15)
    assert refused.value.code == 404
    refused.value.close()


def test_restarting_one_worker_leaves_the_jobs_of_another_to_finish(cluster):
    stopped = cluster.health("worker-1")["worker"]
    cluster.stop("worker-1")  # every job now goes to worker-2
    with psycopg.connect(POSTGRES_URL) as connection:  # SIGTERM retired it: nobody waits for its heartbeat to expire
        assert connection.execute("SELECT count(*) FROM worker WHERE worker_id = %s", (stopped,)).fetchone() == (0,)
    prompt_ids = [execute(cluster.ports["web"], f"slow job {number}", **SLOW) for number in range(2)]
    wait_for(lambda: all(cluster.job(prompt_id)["status"] == "running" for prompt_id in prompt_ids),
             timeout=30, what="worker-2 runs both jobs")
    assert {cluster.worker_of(prompt_id) for prompt_id in prompt_ids} == {"worker-2"}
    cluster.start("worker-1")  # its start-up settles only the jobs of workers that are gone
    assert cluster.health("worker-1")["worker"]
    # It was up before worker-2's jobs had ended (else this test proves nothing).
    assert any(cluster.job(prompt_id)["status"] != "completed" for prompt_id in prompt_ids)
    ended = wait_for(lambda: [job for prompt_id in prompt_ids if (job := cluster.job(prompt_id))["status"] != "running"]
                     if all(cluster.job(prompt_id)["status"] != "running" for prompt_id in prompt_ids) else None,
                     timeout=60, what="both jobs end")
    assert [job["status"] for job in ended] == ["completed", "completed"]
    assert [job["error"] for job in ended] == [None, None]
    assert all(job["outputs"] for job in ended)


def test_a_job_stalled_by_its_silent_worker_records_its_real_end_when_that_worker_resumes(cluster):
    prompt_id = execute(cluster.ports["web"], "a worker that freezes", **SLOW)
    wait_for(lambda: cluster.job(prompt_id)["status"] == "running", timeout=30, what="the job runs")
    frozen = cluster.worker_of(prompt_id)
    process = cluster.processes[frozen]
    process.send_signal(signal.SIGSTOP)  # a frozen VM or a long pause: no heartbeats, the job mid-run
    try:
        stalled = wait_for(lambda: (job := cluster.job(prompt_id))["status"] == "stalled" and job,
                           timeout=30, what="the other worker takes the silent one's job over")
    finally:
        process.send_signal(signal.SIGCONT)
    assert "stopped sending heartbeats" in stalled["error"]
    done = wait_for(lambda: (job := cluster.job(prompt_id))["status"] == "completed" and job,
                    timeout=60, what="the resumed worker finishes the job")
    assert done["outputs"]
    assert done["error"].startswith("stalled at ")
    assert "stopped sending heartbeats" in done["error"] and ", then completed at " in done["error"]


def test_a_bad_setting_stops_gunicorn_with_one_line_saying_what_to_fix(tmp_path):
    env = {**os.environ, "STUDIO_DATA_DIR": str(tmp_path / "data"), "STUDIO_ROLE": "web"}  # web on SQLite
    env.pop("STUDIO_DATABASE_URL", None)
    started = subprocess.run(gunicorn(free_port()), cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert started.returncode != 0  # the master stopped: it did not fork the worker again and again
    assert "studio-history: STUDIO_ROLE=web needs PostgreSQL" in started.stderr
    assert "Traceback" not in started.stderr
