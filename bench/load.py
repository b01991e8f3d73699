"""Many watchers at once: open websockets and polling clients against gunicorn, with jobs running.

Run: ``python -m bench.load [--websockets 200] [--pollers 100] [--seconds 60]``. It starts the production
server (``gunicorn -k gthread --no-control-socket``, one worker, enough threads for every socket) on
loopback over a store of 500 jobs, opens the websockets, has each poller ask for the list once a second the
way the page does (the ETag it was shown, 204 while nothing changed), runs a job through the built-in
executor every few seconds, and prints errors, p95 latency and how many events each socket heard.
A benchmark that prints figures, not a test.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import websocket

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def seed_store(data_dir: Path, jobs: int) -> None:
    """Fill a fresh store with ``jobs`` finished jobs (with real files for the first page)."""
    from bench.fill import fill_jobs
    from history import create_app

    app = create_app({"START_RUNNER": False, "STUDIO_DATA_DIR": str(data_dir), "STUDIO_DEMO": "0"})
    fill_jobs(jobs, output_root=app.config["STUDIO"].output_dir, files_for=jobs)
    app.extensions["studio"].stop()


def start_server(data_dir: Path, port: int, threads: int) -> subprocess.Popen:
    """gunicorn as `make serve` runs it, with threads for every open socket."""
    env = {**os.environ, "STUDIO_DATA_DIR": str(data_dir), "STUDIO_DEMO": "0", "STUDIO_POLL_SECONDS": "1"}
    command = [
        str(Path(sys.executable).with_name("gunicorn")), "-w", "1", "-k", "gthread", "--threads", str(threads),
        "--no-control-socket", "-b", f"127.0.0.1:{port}", "--log-level", "warning", "app:create_app()",
    ]
    server = subprocess.Popen(command, cwd=ROOT, env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return server
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise SystemExit("gunicorn did not start")


class Tally:
    """Counts shared by the client threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.statuses: dict[int, int] = {}
        self.errors: list[str] = []
        self.events: list[int] = []

    def request(self, status: int, seconds: float) -> None:
        with self.lock:
            self.statuses[status] = self.statuses.get(status, 0) + 1
            self.latencies.append(seconds)

    def error(self, message: str) -> None:
        with self.lock:
            self.errors.append(message)


def poller(port: int, stop: threading.Event, tally: Tally) -> None:
    """Ask for the list once a second with the ETag last shown, like the page's poller."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    etag = ""
    next_at = time.monotonic()
    while not stop.is_set():
        started = time.perf_counter()
        try:
            connection.request("GET", "/admin/history/list", headers={"HX-Request": "true", "X-List-ETag": etag})
            response = connection.getresponse()
            response.read()
            if response.status == 200:
                etag = (response.getheader("ETag") or "").strip('"')
            elif response.status != 204:
                tally.error(f"poll answered {response.status}")
            tally.request(response.status, time.perf_counter() - started)
        except (OSError, http.client.HTTPException) as error:
            tally.error(f"poll: {error!r}")
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
        next_at += 1.0
        stop.wait(max(0.0, next_at - time.monotonic()))
    connection.close()


def watcher(port: int, stop: threading.Event, opened: threading.Barrier, tally: Tally) -> None:
    """Hold one websocket open and count the events it hears."""
    heard = 0
    try:
        ws = websocket.create_connection(f"ws://127.0.0.1:{port}/ws", timeout=15, origin=f"http://127.0.0.1:{port}")
        ws.settimeout(1)
    except Exception as error:  # noqa: BLE001 - every failure to connect is a counted error
        tally.error(f"websocket connect: {error!r}")
        opened.wait()
        return
    opened.wait()
    while not stop.is_set():
        try:
            frame = ws.recv()
            if frame:
                json.loads(frame)
                heard += 1
        except websocket.WebSocketTimeoutException:
            continue
        except Exception as error:  # noqa: BLE001
            tally.error(f"websocket: {error!r}")
            break
    ws.close()
    with tally.lock:
        tally.events.append(heard)


def run_jobs(port: int, stop: threading.Event, tally: Tally, every: float) -> int:
    """Run a small job through the built-in executor every ``every`` seconds; return how many started."""
    started = 0
    body = json.dumps({"params": {"positive_prompt": "load test", "width": 64, "height": 64, "batch_size": 1}})
    while not stop.wait(every):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
        try:
            connection.request("POST", "/api/run/txt2img-example/execute", body=body, headers={
                "Content-Type": "application/json", "Origin": f"http://127.0.0.1:{port}"})
            response = connection.getresponse()
            response.read()
            if response.status == 202:
                started += 1
            else:
                tally.error(f"execute answered {response.status}")
        except (OSError, http.client.HTTPException) as error:
            tally.error(f"execute: {error!r}")
        finally:
            connection.close()
    return started


def main(argv: list[str] | None = None) -> int:
    """Run the load and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--websockets", type=int, default=200)
    parser.add_argument("--pollers", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--job-every", type=float, default=3.0, help="seconds between jobs run during the load")
    args = parser.parse_args(argv)

    data_dir = Path(tempfile.mkdtemp(prefix="bench-load-"))
    port = free_port()
    seed_store(data_dir, 500)
    server = start_server(data_dir, port, threads=args.websockets + args.pollers + 32)
    tally = Tally()
    stop = threading.Event()
    opened = threading.Barrier(args.websockets + 1)
    threads = [threading.Thread(target=watcher, args=(port, stop, opened, tally), daemon=True) for _ in range(args.websockets)]
    try:
        for thread in threads:
            thread.start()
        opened.wait(timeout=60)
        pollers = [threading.Thread(target=poller, args=(port, stop, tally), daemon=True) for _ in range(args.pollers)]
        for thread in pollers:
            thread.start()
        jobs_started = [0]
        job_thread = threading.Thread(target=lambda: jobs_started.__setitem__(0, run_jobs(port, stop, tally, args.job_every)))
        job_thread.start()
        time.sleep(args.seconds)
        time.sleep(1.5)  # let the last job's events arrive before the sockets close
        stop.set()
        for thread in threads + pollers + [job_thread]:
            thread.join(timeout=10)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(data_dir, ignore_errors=True)

    latencies = sorted(tally.latencies)
    p95 = latencies[int(0.95 * (len(latencies) - 1))] if latencies else float("nan")
    print(f"load: {args.websockets} websockets open, {args.pollers} clients polling once a second, {args.seconds:g} s,"
          f" a job every {args.job_every:g} s (gunicorn gthread, 1 worker)")
    print(f"  poll requests   {len(latencies):>8}   statuses {dict(sorted(tally.statuses.items()))}")
    print(f"  poll latency    median {statistics.median(latencies) * 1000 if latencies else float('nan'):7.1f} ms"
          f"   p95 {p95 * 1000:7.1f} ms   max {latencies[-1] * 1000 if latencies else float('nan'):7.1f} ms")
    print(f"  jobs run        {jobs_started[0]:>8}")
    if tally.events:
        print(f"  events heard    per socket min {min(tally.events)}  median {statistics.median(tally.events):g}  max {max(tally.events)}")
    print(f"  errors          {len(tally.errors):>8}" + (f"   first: {tally.errors[0]}" if tally.errors else ""))
    return 1 if tally.errors else 0


if __name__ == "__main__":
    sys.exit(main())
