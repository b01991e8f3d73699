"""A thousand viewers at once: open websockets and polling pages against the production server, jobs running.

Run: ``python -m bench.load [--websockets 1000] [--pollers 200] [--seconds 60] [--worker gevent]``. It starts
gunicorn as `make serve WORKER=gevent` does (one worker; ``gevent``, or ``gthread`` with a thread per open
socket and per poller, which does not hold a thousand), on loopback only, over a store of 1,000 jobs; opens the websockets; has each poller ask for the
list once a second the way the page does (the ETag it was shown, 204 while nothing changed); runs a job
through the built-in executor every few seconds; and stops by itself after ``--seconds``. Every client is
one asyncio task in this process (raw sockets: a websocket handshake, masked pongs, unmasked text frames),
so the client side costs no thread per viewer. It prints errors, poll latency, the fan-out latency of
every event (the server's ``ts`` to its arrival at each socket, one clock), and the worker's memory per
open websocket. A benchmark that prints figures, not a test.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FANOUT_GOAL_MS = 250
# The websocket the history page opens: the events that change its list (history/web/history.py).
WS_PATH = "/ws?events=job.completed,job.failed,job.stalled,job.deleted"


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
    fill_jobs(jobs, output_root=app.config["STUDIO"].output_dir, files_for=60)
    app.extensions["studio"].stop()


def start_server(data_dir: Path, port: int, worker: str, threads: int) -> subprocess.Popen:
    """gunicorn as `make serve` runs it (``make serve WORKER=gevent`` for the other worker class)."""
    env = {**os.environ, "STUDIO_DATA_DIR": str(data_dir), "STUDIO_DEMO": "0", "STUDIO_POLL_SECONDS": "1"}
    command = [str(Path(sys.executable).with_name("gunicorn")), "-w", "1", "-k", worker]
    if worker == "gthread":
        command += ["--threads", str(threads)]
    else:
        command += ["--worker-connections", str(threads)]
    command += ["--no-control-socket", "-b", f"127.0.0.1:{port}", "--log-level", "warning", "app:create_app()"]
    server = subprocess.Popen(command, cwd=ROOT, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        # The master listens before its worker has booted: wait for the worker's own answer.
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as probe:
                probe.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
                if probe.recv(12).startswith(b"HTTP/1.1 200"):
                    return server
        except OSError:
            pass
        time.sleep(0.1)
    server.kill()
    raise SystemExit("gunicorn did not start")


def stop_server(server: subprocess.Popen, timeout: float) -> None:
    """Ask gunicorn to stop, and kill it when it has not within ``timeout`` seconds."""
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        server.kill()


def worker_rss(master_pid: int) -> int:
    """The resident memory (bytes) of gunicorn's worker process (the master's one child)."""
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    total = 0
    for pid in children:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


def cpu_seconds(master_pid: int) -> float:
    """CPU time (user + system) the worker process has used so far."""
    total = 0.0
    for pid in Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split():
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


class Tally:
    """What every client saw."""

    def __init__(self):
        self.poll_latencies: list[float] = []
        self.statuses: dict[int, int] = {}
        self.errors: list[str] = []
        self.fanout: list[float] = []
        self.heard: list[int] = []
        self.open = 0
        self.reconnects = 0  # kept-alive poll connections the server had closed, opened again


class Watcher(asyncio.Protocol):
    """One open websocket: handshake, then read frames as they arrive (no task or future per frame, so a
    burst of a thousand frames costs this client little), answer pings, note when each event arrives."""

    def __init__(self, port: int, tally: Tally, opened):
        self.port = port
        self.tally = tally
        self.opened = opened  # called once: True when the handshake succeeded
        self.buffer = b""
        self.upgraded = False
        self.heard = 0
        self.transport = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write((f"GET {WS_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\n"
                         f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                         f"Origin: http://127.0.0.1:{self.port}\r\n\r\n").encode())

    def data_received(self, data: bytes) -> None:
        arrived = time.time()
        self.buffer += data
        if not self.upgraded:
            head, found, rest = self.buffer.partition(b"\r\n\r\n")
            if not found:
                return
            if not head.startswith(b"HTTP/1.1 101"):
                status_line = head.split(b"\r\n")[0].decode(errors="replace")
                self.tally.errors.append(f"websocket connect: {status_line}")
                self.opened(False)
                self.transport.close()
                return
            self.upgraded, self.buffer = True, rest
            self.opened(True)
        while len(self.buffer) >= 2:
            first, second = self.buffer[0], self.buffer[1]
            length, start = second & 0x7F, 2
            if length == 126:
                length, start = int.from_bytes(self.buffer[2:4], "big"), 4
            elif length == 127:
                length, start = int.from_bytes(self.buffer[2:10], "big"), 10
            if len(self.buffer) < start + length:
                return
            payload, self.buffer = self.buffer[start:start + length], self.buffer[start + length:]
            opcode = first & 0x0F
            if opcode == 0x9:  # ping: the server closes a socket that does not answer
                self.transport.write(masked_frame(0xA, payload))
            elif opcode == 0x8:
                self.tally.errors.append(f"websocket closed by the server: {payload[2:].decode(errors='replace')}")
                self.transport.close()
                return
            elif opcode == 0x1:
                # events.encode() writes "ts" last: read it without parsing the whole frame (a cheap client).
                self.tally.fanout.append(arrived - float(payload.rsplit(b'"ts": ', 1)[1].rstrip(b"}")))
                self.heard += 1

    def connection_lost(self, exc) -> None:
        if not self.upgraded:
            self.tally.errors.append(f"websocket connect: {exc!r}")
            self.opened(False)
        if not self.closed.done():
            self.closed.set_result(None)

    def close(self) -> None:
        """Say goodbye (a close frame) and close the connection."""
        if not self.transport.is_closing():
            self.transport.write(masked_frame(0x8, (1000).to_bytes(2, "big")))
            self.transport.close()


def masked_frame(opcode: int, payload: bytes) -> bytes:
    """A client frame (clients must mask)."""
    mask = os.urandom(4)
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def watch(port: int, stop: asyncio.Event, opened: asyncio.Event, tally: Tally, want: int) -> None:
    """Hold one websocket open until ``stop``, answering pings and noting when each event arrives."""
    answered = []

    def handshake_done(ok: bool) -> None:
        if answered:
            return
        answered.append(ok)
        tally.open += 1
        if tally.open >= want:
            opened.set()

    loop = asyncio.get_running_loop()
    try:
        _transport, watcher = await loop.create_connection(lambda: Watcher(port, tally, handshake_done), "127.0.0.1", port)
    except OSError as error:
        tally.errors.append(f"websocket connect: {error!r}")
        handshake_done(False)
        return
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({stopping, watcher.closed}, return_when=asyncio.FIRST_COMPLETED)
    if stopping.done() and not watcher.closed.done():
        watcher.close()
    elif not stopping.done():
        tally.errors.append("websocket: the server closed the connection")
    stopping.cancel()
    tally.heard.append(watcher.heard)


async def poll(port: int, stop: asyncio.Event, tally: Tally, offset: float = 0.0) -> None:
    """Ask for the list once a second with the ETag last shown, like the page's poller, starting ``offset``
    seconds into the first second (pages opened at different moments poll at different moments). A kept-alive
    connection the server closed meanwhile (gunicorn's keep-alive is 2 s) is opened again and the poll sent
    again, as a browser does; those are counted apart from errors."""
    connection = None
    etag = ""
    next_at = time.monotonic() + offset
    await asyncio.sleep(offset)
    try:
        while not stop.is_set():
            started = time.perf_counter()
            request = (f"GET /admin/history/list HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nHX-Request: true\r\n"
                       f"X-List-ETag: {etag}\r\n\r\n").encode()
            for attempt in range(2):
                reused = connection is not None
                if connection is None:
                    connection = await asyncio.open_connection("127.0.0.1", port)
                reader, writer = connection
                try:
                    writer.write(request)
                    head = await reader.readuntil(b"\r\n\r\n")
                    break
                except (ConnectionResetError, BrokenPipeError, asyncio.IncompleteReadError):
                    writer.close()
                    connection = None
                    if not reused or attempt:
                        raise
                    tally.reconnects += 1
            status = int(head[9:12])
            headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line)
            length = int(headers.get(b"Content-Length", b"0"))
            if length:
                await reader.readexactly(length)
            if status == 200:
                etag = headers.get(b"ETag", b"").decode().strip('"')
            elif status != 204:
                tally.errors.append(f"poll answered {status}")
            tally.statuses[status] = tally.statuses.get(status, 0) + 1
            tally.poll_latencies.append(time.perf_counter() - started)
            next_at += 1.0
            try:
                await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.monotonic()))
            except asyncio.TimeoutError:
                pass
    except (OSError, asyncio.IncompleteReadError) as error:
        tally.errors.append(f"poll: {error!r}")
    finally:
        if connection is not None:
            connection[1].close()


async def run_jobs(port: int, stop: asyncio.Event, tally: Tally, every: float) -> int:
    """Run a small job through the built-in executor every ``every`` seconds; answer how many started."""
    started = 0
    body = json.dumps({"params": {"positive_prompt": "load test", "width": 64, "height": 64, "batch_size": 1}}).encode()
    while True:
        try:
            await asyncio.wait_for(stop.wait(), every)
            return started
        except asyncio.TimeoutError:
            pass
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write((f"POST /api/run/txt2img-example/execute HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                          f"Content-Type: application/json\r\nOrigin: http://127.0.0.1:{port}\r\n"
                          f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body)
            head = await reader.readuntil(b"\r\n\r\n")
            writer.close()
            if head.startswith(b"HTTP/1.1 202"):
                started += 1
            else:
                tally.errors.append(f"execute answered {head.split(b' ')[1].decode()}")
        except (OSError, asyncio.IncompleteReadError) as error:
            tally.errors.append(f"execute: {error!r}")


async def drive(port: int, args, server_pid: int) -> tuple[Tally, dict]:
    """Open every viewer, run the load for ``args.seconds``, close everything."""
    tally = Tally()
    stop = asyncio.Event()
    opened = asyncio.Event()
    memory = {"before": worker_rss(server_pid), "cpu_before": cpu_seconds(server_pid), "client_before": time.process_time()}
    started = time.perf_counter()
    watchers = []
    for index in range(args.websockets):
        watchers.append(asyncio.ensure_future(watch(port, stop, opened, tally, args.websockets)))
        if index % 50 == 49:
            await asyncio.sleep(0.05)  # a crowd arriving, not one SYN flood
    try:
        await asyncio.wait_for(opened.wait(), 120)
    except asyncio.TimeoutError:
        tally.errors.append(f"only {tally.open} of {args.websockets} websockets opened in 120 s")
    memory["open_seconds"] = time.perf_counter() - started
    await asyncio.sleep(1.0)
    memory["with_sockets"] = worker_rss(server_pid)
    pollers = [asyncio.ensure_future(poll(port, stop, tally, index / args.pollers)) for index in range(args.pollers)]
    jobs = asyncio.ensure_future(run_jobs(port, stop, tally, args.job_every))
    await asyncio.sleep(args.seconds)
    memory["under_load"] = worker_rss(server_pid)
    memory["cpu"] = cpu_seconds(server_pid) - memory["cpu_before"]
    memory["client_cpu"] = time.process_time() - memory["client_before"]
    await asyncio.sleep(1.5)  # the last job's events
    stop.set()
    memory["jobs"] = await jobs
    await asyncio.gather(*watchers, *pollers)
    memory["sent"] = sent_latencies(port)
    return tally, memory


def sent_latencies(port: int) -> dict[float, float]:
    """The server's own view of the fan-out: /metrics' histogram of publication-to-send, {bucket bound: share}."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
        text = answer.read().decode()
    counts = {}
    for line in text.splitlines():
        if line.startswith("studio_event_delivery_seconds_bucket{"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            counts[float(bound)] = float(line.rsplit(" ", 1)[1])
    total = counts.get(float("inf")) or 1
    return {bound: count / total for bound, count in sorted(counts.items())}


def measure(websockets: int = 1000, pollers: int = 200, seconds: float = 60, job_every: float = 3.0,
            worker: str = "gevent") -> dict:
    """Run the load once, print its figures, and answer the summary (errors, fan-out p95, memory per viewer)."""
    args = argparse.Namespace(websockets=websockets, pollers=pollers, seconds=seconds, job_every=job_every, worker=worker)
    data_dir = Path(tempfile.mkdtemp(prefix="bench-load-"))
    port = free_port()
    seed_store(data_dir, 1000)
    server = start_server(data_dir, port, args.worker, threads=args.websockets + args.pollers + 64)
    try:
        tally, memory = asyncio.run(drive(port, args, server.pid))
    finally:
        stop_server(server, timeout=30)
        shutil.rmtree(data_dir, ignore_errors=True)

    latencies = sorted(tally.poll_latencies)
    fanout = sorted(tally.fanout)

    def pct(values, share):
        return values[int(share * (len(values) - 1))] * 1000 if values else float("nan")

    per_viewer = (memory["with_sockets"] - memory["before"]) / max(1, args.websockets)
    print(f"load: {args.websockets} websockets, {args.pollers} pollers once a second, {args.seconds:g} s, a job every"
          f" {args.job_every:g} s (gunicorn {args.worker}, 1 worker, loopback)")
    print(f"  websockets open  {tally.open - sum(1 for e in tally.errors if e.startswith('websocket connect'))}"
          f" of {args.websockets} in {memory['open_seconds']:.1f} s")
    print(f"  poll requests    {len(latencies):>8}   statuses {dict(sorted(tally.statuses.items()))}"
          f"   (reconnected after gunicorn's keep-alive closed them: {tally.reconnects})")
    print(f"  poll latency     median {pct(latencies, 0.5):7.1f} ms   p95 {pct(latencies, 0.95):7.1f} ms   max {pct(latencies, 1):7.1f} ms")
    print(f"  jobs run         {memory['jobs']:>8}")
    if tally.heard:
        print(f"  events heard     {len(fanout)} (per socket min {min(tally.heard)}, median {statistics.median(tally.heard):g}, max {max(tally.heard)})")
    print(f"  fan-out latency  median {pct(fanout, 0.5):7.1f} ms   p95 {pct(fanout, 0.95):7.1f} ms   max {pct(fanout, 1):7.1f} ms"
          f"   (goal p95 < {FANOUT_GOAL_MS} ms: {'met' if fanout and pct(fanout, 0.95) < FANOUT_GOAL_MS else 'NOT met'})")
    sent_p95 = next((bound for bound, share in memory["sent"].items() if share >= 0.95), float("nan"))
    print(f"  server's sends   95% within {sent_p95 * 1000:g} ms of publication (its /metrics histogram: the rest"
          " of the fan-out is the kernel and this client)")
    print(f"  worker memory    {memory['before'] / 1e6:.0f} MB idle, {memory['with_sockets'] / 1e6:.0f} MB with the sockets open,"
          f" {memory['under_load'] / 1e6:.0f} MB under load: {per_viewer / 1e3:.0f} KB per open websocket")
    print(f"  CPU              server worker {memory['cpu']:.1f} s, this client {memory['client_cpu']:.1f} s, over"
          f" {args.seconds:g} s (2 cores shared with others: load average {os.getloadavg()[0]:.1f})")
    print(f"  errors           {len(tally.errors):>8}" + (f"   first: {tally.errors[0]}" if tally.errors else "") + "   (goal 0)")
    summary = {"errors": len(tally.errors), "fanout_p95_ms": pct(fanout, 0.95), "kb_per_viewer": per_viewer / 1e3,
               "open": tally.open, "heard_min": min(tally.heard) if tally.heard else 0}
    return summary


def main(argv: list[str] | None = None) -> int:
    """Run the load from the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--websockets", type=int, default=1000)
    parser.add_argument("--pollers", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--job-every", type=float, default=3.0, help="seconds between jobs run during the load")
    parser.add_argument("--worker", choices=("gthread", "gevent"), default="gevent")
    args = parser.parse_args(argv)
    summary = measure(args.websockets, args.pollers, args.seconds, args.job_every, args.worker)
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
