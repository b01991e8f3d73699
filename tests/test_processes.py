"""Several server processes on one PostgreSQL store: a job finished in one reaches the websockets of another.

Both processes are the production server (gunicorn, gthread worker, as `make serve` runs it) on loopback,
sharing the database and the output folder.
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

import pytest
import websocket

from tests.conftest import POSTGRES_URL
from tests.conftest import reset_postgres

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
        for server in servers:
            server.send_signal(signal.SIGTERM)
        for server in servers:
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def execute(port: int, prompt: str) -> str:
    base = f"http://127.0.0.1:{port}"
    request = urllib.request.Request(
        f"{base}/api/run/txt2img-example/execute",
        data=json.dumps({"params": {"positive_prompt": prompt, "width": 64, "height": 64}}).encode(),
        headers={"Content-Type": "application/json", "Origin": base},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=15) as response:
        assert response.status == 202
        return json.loads(response.read())["prompt_id"]


def test_a_job_run_by_one_process_reaches_the_websocket_of_another(two_servers):
    runs_it, watches = two_servers
    # The watcher's first request starts its studio, and with it the LISTEN on PostgreSQL.
    urllib.request.urlopen(f"http://127.0.0.1:{watches}/admin/history", timeout=15).close()
    ws = websocket.create_connection(f"ws://127.0.0.1:{watches}/ws", timeout=15, origin=f"http://127.0.0.1:{watches}")
    try:
        # The listener connects in the background; run jobs until one is heard from start to end.
        deadline = time.monotonic() + 30
        heard: dict[str, list[str]] = {}
        while time.monotonic() < deadline:
            prompt_id = execute(runs_it, "crossing processes")
            heard[prompt_id] = []
            until = time.monotonic() + 5
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
