"""Web and worker processes on one PostgreSQL store: jobs per second through one worker and through two, and the
event fan-out across three web processes.

Run: ``STUDIO_BENCH_POSTGRES_URL=postgresql://... python -m bench.workers [--jobs 300] [--events 60]``. The
database must be a throw-away one: the app's tables are dropped and made again (STUDIO_TEST_POSTGRES_URL is used
when the bench variable is unset; without either, `make bench` says so and skips this part).

1. Jobs per second: one web process (gunicorn, STUDIO_ROLE=web) and one, then two, workers
   (``studio-history serve``, STUDIO_ROLE=worker, the built-in executor with its two threads), a 64x64
   text-to-image job posted ``--jobs`` times by four clients at once; the clock runs from the first post to the
   last ``job.completed`` heard on the web process's websocket. Each worker claims what it has room for
   (``FOR UPDATE SKIP LOCKED``), woken by the job's NOTIFY.
2. Fan-out: three web processes and one worker; ``--events`` jobs posted one by one to the first web process.
   Each ``job.completed`` leaves the worker stamped with its ``ts`` (one clock: loopback) and is timed as it
   arrives on a websocket connected to each web process (NOTIFY, each process's listener, its socket).
Every process listens on loopback only; each part stops by itself (about a minute each, at most). A benchmark
that prints figures, not a test.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import websocket

from bench.load import free_port

ROOT = Path(__file__).resolve().parent.parent
SIZE = 64  # the job's width and height (--size): 64 is mostly the store's and the events' cost, 512 Pillow's
PART_SECONDS = 60


def postgres_url() -> str | None:
    """The throw-away database: STUDIO_BENCH_POSTGRES_URL, else STUDIO_TEST_POSTGRES_URL."""
    return os.environ.get("STUDIO_BENCH_POSTGRES_URL") or os.environ.get("STUDIO_TEST_POSTGRES_URL")


def reset_store(url: str) -> None:
    """Drop the app's tables (every process makes them again as it starts)."""
    from history.db import open_database
    from history.db import release

    db = open_database(url)
    db.connect()
    try:
        db.execute_sql("DROP TABLE IF EXISTS job, job_graph, job_deleted, job_tally, job_waiting, worker, "
                       "ended_login, schema_version, schema_migration CASCADE")
    finally:
        release(db)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


class Processes:
    """Web processes (gunicorn) and workers (studio-history serve) on one store, started in turn, stopped together."""

    def __init__(self, url: str, data_dir: Path):
        self.env = {**os.environ, "STUDIO_DATA_DIR": str(data_dir), "STUDIO_DATABASE_URL": url, "STUDIO_DEMO": "0",
                    "STUDIO_SECRET_KEY": "bench"}
        self.started: list[subprocess.Popen] = []
        self.webs: list[int] = []

    def start(self, role: str) -> int:
        port = free_port()
        if role == "web":
            command = [str(Path(sys.executable).with_name("gunicorn")), "-w", "1", "-k", "gthread", "--threads", "32",
                       "--no-control-socket", "-b", f"127.0.0.1:{port}", "--log-level", "warning", "app:create_app()"]
        else:
            command = [sys.executable, "-m", "history", "serve", "--host", "127.0.0.1", "--port", str(port)]
        process = subprocess.Popen(command, cwd=ROOT, env={**self.env, "STUDIO_ROLE": role},
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.started.append(process)
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"a {role} process did not start")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        if role == "web":
            self.webs.append(port)
        return port

    def stop(self) -> None:
        for process in self.started:
            process.send_signal(signal.SIGTERM)
        for process in self.started:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def post(port: int, size: int = SIZE) -> tuple[str, float]:
    """Post one job to a web process; answer its prompt_id and when it was posted."""
    base = f"http://127.0.0.1:{port}"
    job = {"params": {"positive_prompt": "a benchmark job", "width": size, "height": size}}
    request = urllib.request.Request(f"{base}/api/run/txt2img-example/execute", data=json.dumps(job).encode(),
                                     headers={"Content-Type": "application/json", "Origin": base}, method="POST")
    posted = time.time()
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())["prompt_id"], posted


class Listener:
    """A websocket on one web process, noting when each job.completed arrives (and its publisher's ts)."""

    def __init__(self, port: int):
        self.arrivals: dict[str, tuple[float, float]] = {}  # prompt_id -> (arrived, ts)
        self.changed = threading.Condition()
        self.socket = websocket.create_connection(f"ws://127.0.0.1:{port}/ws?events=job.completed", timeout=60,
                                                  origin=f"http://127.0.0.1:{port}")
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while True:
            try:
                frame = json.loads(self.socket.recv())
            except (websocket.WebSocketException, OSError, ValueError):
                return
            arrived = time.time()
            with self.changed:
                self.arrivals[frame["data"]["prompt_id"]] = (arrived, frame["ts"])
                self.changed.notify_all()

    def wait(self, prompt_ids, timeout: float) -> bool:
        """Wait until every one of ``prompt_ids`` has completed here; False after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while not all(prompt_id in self.arrivals for prompt_id in prompt_ids):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(left)
        return True

    def close(self) -> None:
        self.socket.close()
        self.thread.join(timeout=5)


def warm_up(port: int, listeners: list[Listener]) -> None:
    """Run jobs until one is heard on every listener (each web process's LISTEN connects in the background)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        prompt_id, _posted = post(port)
        if all(listener.wait([prompt_id], 5) for listener in listeners):
            return
    raise SystemExit("the web processes never heard a job end")


def jobs_per_second(url: str, workers: int, count: int, size: int = SIZE) -> dict:
    """Post ``count`` jobs to one web process with ``workers`` workers running them; time them to the last end."""
    reset_store(url)
    data_dir = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    processes = Processes(url, data_dir)
    try:
        web = processes.start("web")
        for _ in range(workers):
            processes.start("worker")
        listener = Listener(web)
        warm_up(web, [listener])
        started = time.time()
        with ThreadPoolExecutor(4) as posters:
            posted = list(posters.map(lambda _: post(web, size), range(count)))
        posted_in = time.time() - started
        prompt_ids = [prompt_id for prompt_id, _ in posted]
        finished = listener.wait(prompt_ids, PART_SECONDS)
        ended = [listener.arrivals[prompt_id][0] for prompt_id in prompt_ids if prompt_id in listener.arrivals]
        elapsed = max(ended) - started if ended else float("nan")
        waits = [listener.arrivals[prompt_id][0] - at for prompt_id, at in posted if prompt_id in listener.arrivals]
        listener.close()
        return {"workers": workers, "jobs": len(ended), "all": finished, "seconds": elapsed,
                "per_second": len(ended) / elapsed if ended else 0.0, "posted_per_second": count / posted_in,
                "post_to_end_p50_ms": 1000 * percentile(waits, 0.5)}
    finally:
        processes.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def fan_out(url: str, events: int, webs: int = 3) -> dict:
    """Post ``events`` jobs one by one; time each job.completed from the worker's ts to each web process's socket."""
    reset_store(url)
    data_dir = Path(tempfile.mkdtemp(prefix="bench-fanout-"))
    processes = Processes(url, data_dir)
    try:
        ports = [processes.start("web") for _ in range(webs)]
        processes.start("worker")
        listeners = [Listener(port) for port in ports]
        warm_up(ports[0], listeners)
        prompt_ids = []
        deadline = time.monotonic() + PART_SECONDS
        for _ in range(events):
            if time.monotonic() > deadline:
                break
            prompt_id, _posted = post(ports[0])
            prompt_ids.append(prompt_id)
            listeners[0].wait([prompt_id], 10)  # one at a time: the fan-out, not a queue, is measured
        for listener in listeners:
            listener.wait(prompt_ids, 10)
        delays = [[1000 * (listener.arrivals[p][0] - listener.arrivals[p][1]) for p in prompt_ids if p in listener.arrivals]
                  for listener in listeners]
        for listener in listeners:
            listener.close()
        every = [delay for per_process in delays for delay in per_process]
        return {"events": len(prompt_ids), "heard": [len(per_process) for per_process in delays],
                "p50_ms": [percentile(d, 0.5) for d in delays], "p95_ms": [percentile(d, 0.95) for d in delays],
                "all_p50_ms": percentile(every, 0.5), "all_p95_ms": percentile(every, 0.95),
                "mean_ms": statistics.fmean(every) if every else float("nan")}
    finally:
        processes.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Measure both parts and print their table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300, help="jobs posted per worker count")
    parser.add_argument("--size", type=int, default=SIZE, help="the jobs' width and height (64 to 2048)")
    parser.add_argument("--events", type=int, default=60, help="jobs whose completion is timed across the web processes")
    args = parser.parse_args(argv)
    url = postgres_url()
    if not url:
        print("skipped: set STUDIO_BENCH_POSTGRES_URL (or STUDIO_TEST_POSTGRES_URL) to a throw-away PostgreSQL database")
        return 0
    load = "/".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"web and worker processes on PostgreSQL (2 cores shared; load average {load})", flush=True)
    one = jobs_per_second(url, 1, args.jobs, args.size)
    two = jobs_per_second(url, 2, args.jobs, args.size)
    spread = fan_out(url, args.events)
    rows = [
        (f"jobs/s, 1 worker ({args.size}x{args.size} built-in job)", f"{one['per_second']:.1f} ({one['jobs']} jobs in {one['seconds']:.1f} s; "
         f"posted at {one['posted_per_second']:.0f}/s)"),
        ("jobs/s, 2 workers", f"{two['per_second']:.1f} ({two['jobs']} jobs in {two['seconds']:.1f} s; "
         f"{two['per_second'] / max(one['per_second'], 0.01):.2f}x one worker)"),
        ("post to completed heard, p50 (1 / 2 workers)", f"{one['post_to_end_p50_ms']:.0f} / {two['post_to_end_p50_ms']:.0f} ms"),
        ("fan-out to 3 web processes, p50 / p95 (all)", f"{spread['all_p50_ms']:.1f} / {spread['all_p95_ms']:.1f} ms "
         f"({spread['events']} events, heard {spread['heard']})"),
        ("fan-out p95 per web process", " / ".join(f"{value:.1f}" for value in spread["p95_ms"]) + " ms"),
    ]
    if not (one["all"] and two["all"]):
        rows.append(("NOTE", f"not every job ended within {PART_SECONDS} s"))
    width = max(len(label) for label, _ in rows)
    print(f"\n  {'figure':<{width}}  value")
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
