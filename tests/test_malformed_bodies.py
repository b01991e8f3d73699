"""Malformed requests get a JSON 4xx that says what is wrong, never a 500: bodies nested too deep or holding
text that is not valid Unicode, number look-alikes in ``limit``, a form over a limit, and (under gunicorn)
a broken chunked body."""
from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from history.models import Job
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent
JSON_ROUTES = [
    "/api/admin/history/delete",
    "/api/admin/history/usage",
    "/api/admin/history/export",
    "/api/run/txt2img-example/execute",
]


@pytest.mark.parametrize("url", JSON_ROUTES)
def test_json_nested_a_thousand_deep_is_400(client, url):
    body = "[" * 1000 + "]" * 1000  # 2 KB, past Python's recursion limit
    response = client.post(url, data=body, content_type="application/json")
    assert response.status_code == 400
    assert "nests deeper than 32 levels" in response.json["error"]


@pytest.mark.parametrize("url", JSON_ROUTES)
def test_a_lone_surrogate_anywhere_in_a_json_body_is_400_naming_the_field(client, make_job, url):
    job = make_job()
    body = '{"prompt_ids": ["%s", "x\\ud800"]}' % job.prompt_id
    response = client.post(url, data=body, content_type="application/json")
    assert response.status_code == 400
    assert response.json["error"].startswith("prompt_ids[1]: is not valid Unicode text")
    assert Job.get_or_none(Job.prompt_id == job.prompt_id) is not None


@pytest.mark.parametrize("limit", ["²", "①", "٣", "9" * 5000, "1e3", " 5", "-1", "0"])
def test_limit_accepts_ascii_digits_only(client, limit):
    response = client.get("/api/admin/history", query_string={"limit": limit})
    assert response.status_code == 400
    assert response.json["error"] == "limit must be a whole number from 1 to 1000"


def test_a_form_of_5000_fields_is_413_naming_the_field_limit(client):
    # Encoded here: the test client's own encoder spools a body this long to a temporary file it leaves open.
    body = b"".join(
        b'--zz\r\nContent-Disposition: form-data; name="field%d"\r\n\r\nx\r\n' % number for number in range(5000)
    ) + b"--zz--\r\n"
    response = client.post("/api/run/txt2img-example/execute", data=body, content_type="multipart/form-data; boundary=zz")
    assert response.status_code == 413
    assert "at most 1,000 fields" in response.json["error"] and "MiB" not in response.json["error"]


@pytest.fixture
def gunicorn_server(app_config):
    """The production server (`make serve`'s gunicorn, gthread) on a port the OS picks."""
    env_config = " ".join(f"{key}={value}" for key, value in app_config.items() if key.startswith("STUDIO_"))
    command = [sys.executable, "-m", "gunicorn", "-w", "1", "--threads", "4", "--no-control-socket", "-b", "127.0.0.1:0",
               "--error-logfile", "-", "app:create_app()"]
    env = dict(line.split("=", 1) for line in env_config.split())
    import os

    server = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    port = None
    deadline = time.monotonic() + 30
    while port is None and time.monotonic() < deadline:
        line = server.stdout.readline()
        found = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", line)
        port = int(found.group(1)) if found else None
        assert line or server.poll() is None, "gunicorn exited"
    assert port, "gunicorn did not say where it listens"
    yield port
    server.terminate()
    server.wait(10)
    server.stdout.close()


def raw_request(port: int, request: bytes) -> bytes:
    """Send bytes as they are and read the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(request)
        connection.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return answer


# A chunk size that is no number, a chunk longer than its size, a body that ends inside a chunk.
MALFORMED_CHUNKS = [b"ZZ\r\n{}\r\n0\r\n\r\n", b"2\r\n{}XX0\r\n\r\n", b"10\r\n{}"]


def test_a_malformed_chunked_body_under_gunicorn_is_400(gunicorn_server):
    # One server for every body (it starts in over a second): each request is a connection of its own.
    for chunks in MALFORMED_CHUNKS:
        request = (
            b"POST /api/admin/history/delete HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + chunks
        )
        answer = wait_for(lambda request=request: raw_request(gunicorn_server, request), what="an answer")
        status = int(answer.split(b" ", 2)[1])
        assert 400 <= status < 500, (chunks, answer[:300])
        head, _, body = answer.partition(b"\r\n\r\n")
        assert b"application/json" in head and b'"error"' in body, (chunks, answer[:300])  # the app's answer, not the server's
