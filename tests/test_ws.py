"""/ws on a live server, with a real websocket client: the frames a run sends, in order."""
from __future__ import annotations

import json
import time
import urllib.request

import websocket

from tests.conftest import wait_for


def post_json(base: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(
        f"http://{base}{path}", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "Origin": f"http://{base}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 202
        return json.loads(response.read())


def receive_until(socket, prompt_id: str, last: str, timeout: float = 10.0) -> list[dict]:
    """Frames about ``prompt_id`` until one of type ``last`` arrives."""
    frames = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        socket.settimeout(max(0.05, deadline - time.monotonic()))
        opcode, payload = socket.recv_data()
        assert opcode == websocket.ABNF.OPCODE_TEXT
        frame = json.loads(payload)
        if frame["data"].get("prompt_id") != prompt_id:
            continue
        frames.append(frame)
        if frame["type"] == last:
            return frames
    raise AssertionError(f"no {last} within {timeout}s; got {[frame['type'] for frame in frames]}")


def wait_for_subscribers(app, count: int) -> None:
    wait_for(lambda: app.extensions["studio"].bus.subscriber_count >= count, 5, "the websocket subscribing")


def test_a_run_sends_queued_started_progress_completed(app, live_server):
    socket = websocket.create_connection(f"ws://{live_server.host}/ws", timeout=10)
    try:
        wait_for_subscribers(app, 1)
        prompt_id = post_json(live_server.host, "/api/run/txt2img-example/execute", {"params": {"seed": 9}})["prompt_id"]
        frames = receive_until(socket, prompt_id, "job.completed")
    finally:
        socket.close()
    types = [frame["type"] for frame in frames]
    assert types[:2] == ["job.queued", "job.started"]
    assert types[-1] == "job.completed"
    assert set(types[2:-1]) == {"job.progress"} and len(types[2:-1]) == 3
    assert [frame["data"]["value"] for frame in frames[2:-1]] == [1, 2, 3]
    assert all(set(frame) == {"type", "data", "ts"} for frame in frames)
    completed = frames[-1]["data"]
    assert completed["status"] == "completed" and completed["output"]["filename"] == "final_00001_.png"


def test_every_client_gets_failures_too(app, live_server):
    sockets = [websocket.create_connection(f"ws://{live_server.host}/ws", timeout=10) for _ in range(2)]
    try:
        wait_for_subscribers(app, 2)
        prompt_id = post_json(live_server.host, "/api/run/upscale-fails-example/execute", {"params": {}})["prompt_id"]
        for socket in sockets:
            frames = receive_until(socket, prompt_id, "job.failed")
            assert frames[0]["type"] == "job.queued"
            assert "not a built-in node" in frames[-1]["data"]["error"]
    finally:
        for socket in sockets:
            socket.close()


def test_a_closed_client_is_unsubscribed(app, live_server):
    socket = websocket.create_connection(f"ws://{live_server.host}/ws", timeout=10)
    wait_for_subscribers(app, 1)
    socket.close()
    wait_for(lambda: not app.extensions["studio"].bus.subscriber_count, 5, "the handler dropping its subscription after the client left")


def test_a_page_that_asks_for_list_events_hears_only_those(app, live_server):
    # The history page connects with ?events=... (the events that change its list): a run sends it one frame.
    narrow = websocket.create_connection(f"ws://{live_server.host}/ws?events=job.completed,job.failed,no.such", timeout=10)
    every = websocket.create_connection(f"ws://{live_server.host}/ws", timeout=10)
    try:
        wait_for_subscribers(app, 2)
        prompt_id = post_json(live_server.host, "/api/run/txt2img-example/execute", {"params": {"seed": 3}})["prompt_id"]
        assert len(receive_until(every, prompt_id, "job.completed")) > 1
        assert [frame["type"] for frame in receive_until(narrow, prompt_id, "job.completed")] == ["job.completed"]
    finally:
        narrow.close()
        every.close()


def test_events_of_every_size_arrive_whole_to_a_client_that_offered_compression(app, live_server):
    # Each event's frame is built once for every socket (uncompressed, which permessage-deflate allows).
    socket = websocket.create_connection(f"ws://{live_server.host}/ws", timeout=10,
                                         header=["Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits"])
    try:
        wait_for_subscribers(app, 1)
        sizes = [10, 200, 70_000]  # a 7-bit, a 16-bit and a 64-bit payload length
        for size in sizes:
            app.extensions["studio"].bus.publish("job.deleted", {"prompt_id": f"size-{size}", "note": "x" * size})
        for size in sizes:
            frame = receive_until(socket, f"size-{size}", "job.deleted")[-1]
            assert frame["data"]["note"] == "x" * size
    finally:
        socket.close()
