"""The many-viewers recipe (`make serve WORKER=gevent`): gunicorn's gevent worker serves the page's poll and websocket."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import websocket

from tests.test_processes import free_port
from tests.test_processes import stop_processes
from tests.test_processes import wait_for_port
from tests.test_ws import receive_until

ROOT = Path(__file__).resolve().parent.parent


def test_the_gevent_worker_serves_the_poll_and_the_websocket(tmp_path):
    port = free_port()
    env = {**os.environ, "STUDIO_DATA_DIR": str(tmp_path / "data"), "STUDIO_DEMO": "0"}
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("gunicorn")), "-w", "1", "-k", "gevent", "--worker-connections", "100",
         "--no-control-socket", "-b", f"127.0.0.1:{port}", "--log-level", "warning", "app:create_app()"],
        cwd=ROOT, env=env,
    )
    base = f"127.0.0.1:{port}"
    try:
        wait_for_port(port, server)
        poll = urllib.request.Request(f"http://{base}/admin/history/list", headers={"HX-Request": "true"})
        with urllib.request.urlopen(poll, timeout=15) as response:
            etag = response.headers["ETag"].strip('"')
        socket = websocket.create_connection(f"ws://{base}/ws?events=job.completed", timeout=15, origin=f"http://{base}")
        try:
            request = urllib.request.Request(
                f"http://{base}/api/run/txt2img-example/execute", method="POST",
                data=json.dumps({"params": {"positive_prompt": "on gevent", "width": 64, "height": 64}}).encode(),
                headers={"Content-Type": "application/json", "Origin": f"http://{base}"},
            )
            with urllib.request.urlopen(request, timeout=15) as response:
                prompt_id = json.loads(response.read())["prompt_id"]
            frames = receive_until(socket, prompt_id, "job.completed", timeout=30)
        finally:
            socket.close()
        assert [frame["type"] for frame in frames] == ["job.completed"]
        changed = urllib.request.Request(f"http://{base}/admin/history/list", headers={"HX-Request": "true", "X-List-ETag": etag})
        with urllib.request.urlopen(changed, timeout=15) as response:
            assert response.status == 200
            assert f'data-prompt-id="{prompt_id}"' in response.read().decode()
    finally:
        stop_processes(server)
