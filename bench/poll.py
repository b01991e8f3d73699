"""What the History list's live refresh costs: an idle poll, a changed poll and the JSON API, and how the
first page and an idle poll scale from 1,000 to 100,000 jobs.

Run: ``python -m bench.poll [--repeat 200] [--in-process]``. Each store lives in a temporary data folder on
SQLite, filled by DB-API executemany, and is served by a threaded Werkzeug server on 127.0.0.1; requests go
over one kept-alive HTTP/1.1 connection, so a time is what a client on this machine waits (with
``--in-process``, Flask's test client instead: server time alone). "bytes" is the body; "wire" adds the
status line and headers as they crossed the socket. It prints tables; it is a benchmark, not a test.
"""
from __future__ import annotations

import argparse
import http.client
import logging
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.fill import fill_jobs
from bench.fill import make_rows  # noqa: F401 - other benches import it from here

HTMX = {"HX-Request": "true"}
def build_store(job_count: int, files_for: int = 0):
    """A fresh app on a temporary data folder holding ``job_count`` jobs (bench.fill's bulk insert)."""
    from history import create_app

    data_dir = Path(tempfile.mkdtemp(prefix="bench-poll-"))
    app = create_app({
        "TESTING": True,
        "START_RUNNER": False,
        "STUDIO_DATA_DIR": str(data_dir),
        "STUDIO_DEMO": "0",
    })
    seconds = fill_jobs(job_count, output_root=app.config["STUDIO"].output_dir, files_for=files_for)
    return app, data_dir, seconds


class LoopbackClient:
    """Just enough of Flask's test client over real HTTP: ``get(path, headers)`` on a kept-alive connection."""

    class Response:
        def __init__(self, raw, body: bytes):
            self.status_code = raw.status
            self.headers = {name: value for name, value in raw.getheaders()}
            self.body = body
            # What crossed the socket: status line, headers, blank line, body.
            self.wire_bytes = len(f"HTTP/1.1 {raw.status} {raw.reason}\r\n") + sum(
                len(f"{name}: {value}\r\n") for name, value in raw.getheaders()) + 2 + len(body)

        def get_data(self) -> bytes:
            return self.body

    def __init__(self, app):
        from werkzeug.serving import WSGIRequestHandler
        from werkzeug.serving import make_server

        class KeepAliveHandler(WSGIRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_request(self, *args, **kwargs):
                pass

        self.server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=KeepAliveHandler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.connection = http.client.HTTPConnection("127.0.0.1", self.server.server_port, timeout=60)

    def get(self, path: str, headers: dict | None = None) -> "LoopbackClient.Response":
        self.connection.request("GET", path, headers=headers or {})
        raw = self.connection.getresponse()
        return self.Response(raw, raw.read())

    def close(self) -> None:
        self.connection.close()
        self.server.shutdown()
        self.server.server_close()


def open_client(app, in_process: bool):
    """The test client, or a real HTTP client of a live server on loopback."""
    return app.test_client() if in_process else LoopbackClient(app)


def close_client(client) -> None:
    if isinstance(client, LoopbackClient):
        client.close()


def measure(client, path: str, headers: dict, repeat: int, expect: int, before_each=None) -> dict:
    """Mean and median server time of one request, requests per second, and the body's bytes."""
    response = client.get(path, headers=headers)
    assert response.status_code == expect, (path, response.status_code, response.get_data()[:200])
    size = len(response.get_data())
    wire = getattr(response, "wire_bytes", size)
    times = []
    for _ in range(repeat):
        if before_each is not None:
            before_each()
        started = time.perf_counter()
        response = client.get(path, headers=headers)
        response.get_data()
        times.append(time.perf_counter() - started)
        assert response.status_code == expect, (path, response.status_code)
    mean = statistics.fmean(times)
    return {"status": response.status_code, "bytes": size, "wire": wire, "mean_ms": mean * 1000,
            "median_ms": statistics.median(times) * 1000, "rps": 1 / mean}


def poll_headers(client, path: str) -> dict:
    """The headers the page's poller sends when nothing changed: the ETag the list rendered."""
    etag = client.get(path, headers=HTMX).headers["ETag"].strip('"')
    return {**HTMX, "X-List-ETag": etag}


def print_table(title: str, rows: list[tuple[str, dict]]) -> None:
    print(f"\n{title}")
    print(f"  {'request':<52} {'status':>6} {'bytes':>9} {'wire':>9} {'mean ms':>9} {'median ms':>10} {'req/s':>8}")
    for label, result in rows:
        print(f"  {label:<52} {result['status']:>6} {result['bytes']:>9,} {result['wire']:>9,} {result['mean_ms']:>9.2f}"
              f" {result['median_ms']:>10.2f} {result['rps']:>8.0f}")


def bench_poll_kinds(repeat: int, in_process: bool) -> None:
    """Idle poll vs changed poll vs the JSON API, on a store of 200 jobs with real output files."""
    app, data_dir, _ = build_store(200, files_for=200)
    client = open_client(app, in_process)
    try:
        idle = poll_headers(client, "/admin/history/list")
        results = {
            "idle": measure(client, "/admin/history/list", idle, repeat, 204),
            "304": measure(client, "/admin/history/list", {"If-None-Match": f'"{idle["X-List-ETag"]}"'}, repeat, 304),
            "changed": measure(client, "/admin/history/list", {**HTMX, "X-List-ETag": "stale"}, repeat // 4, 200,
                               before_each=lambda: app.extensions.pop("history.rendered_lists", None)),
            "changed, cached": measure(client, "/admin/history/list", {**HTMX, "X-List-ETag": "stale"}, repeat // 4, 200),
            "page": measure(client, "/admin/history", {}, repeat // 4, 200),
            "api": measure(client, "/api/admin/history", {}, repeat // 4, 200),
        }
        static = client.get("/static/placeholder-thumb.svg")
        results["floor"] = measure(client, "/static/placeholder-thumb.svg", {"If-None-Match": static.headers["ETag"]}, repeat, 304)
        print_table(f"200 jobs: what one refresh costs ({'in-process' if in_process else 'HTTP on loopback'})", [
            ("idle poll: /admin/history/list (204, ETag matches)", results["idle"]),
            ("plain If-None-Match (304)", results["304"]),
            ("changed poll, first reader: renders 50 cards", results["changed"]),
            ("changed poll, every other reader: the same render", results["changed, cached"]),
            ("full page: /admin/history (50 cards)", results["page"]),
            ("GET /api/admin/history (200 records, the original's poll)", results["api"]),
            ("floor: a static file's 304 (no database, no view)", results["floor"]),
        ])
        idle, api = results["idle"], results["api"]
        print(f"  idle poll vs the original's 200-record fetch: {api['mean_ms'] / idle['mean_ms']:.1f}x cheaper in time,"
              f" {api['wire'] / max(1, idle['wire']):.0f}x fewer bytes on the wire ({idle['wire']} bytes)")
        floor = results["floor"]["mean_ms"]
        print(f"  above the floor of any request on this server ({floor:.2f} ms): idle poll {idle['mean_ms'] - floor:.2f} ms,"
              f" the 200-record fetch {api['mean_ms'] - floor:.2f} ms ({(api['mean_ms'] - floor) / max(0.01, idle['mean_ms'] - floor):.0f}x)")
    finally:
        close_client(client)
        shutil.rmtree(data_dir, ignore_errors=True)


def bench_scale(counts: list[int], repeat: int, in_process: bool) -> None:
    """First page and idle poll as the store grows."""
    firsts = {}
    for count in counts:
        app, data_dir, insert_seconds = build_store(count, files_for=60)
        client = open_client(app, in_process)
        try:
            idle = poll_headers(client, "/admin/history/list")
            error_idle = poll_headers(client, "/admin/history/list?status=error")
            search_idle = poll_headers(client, "/admin/history/list?q=number+7")
            rows = [
                ("first page: /admin/history", measure(client, "/admin/history", {}, max(5, repeat // 10), 200)),
                ("first page fragment (changed poll, rendered)", measure(
                    client, "/admin/history/list", HTMX, max(5, repeat // 10), 200,
                    before_each=lambda: app.extensions.pop("history.rendered_lists", None))),
                ("idle poll", measure(client, "/admin/history/list", idle, repeat, 204)),
                ("idle poll, status=error", measure(client, "/admin/history/list?status=error", error_idle, repeat, 204)),
                ("idle poll, q=number 7 (LIKE over prompts)", measure(client, "/admin/history/list?q=number+7", search_idle, max(5, repeat // 10), 204)),
            ]
            firsts[count] = (rows[0][1], rows[2][1])
            print_table(f"{count:,} jobs (bulk insert {insert_seconds:.1f} s)", rows)
        finally:
            close_client(client)
            shutil.rmtree(data_dir, ignore_errors=True)
    if len(firsts) >= 2:
        small, large = min(firsts), max(firsts)
        print(f"\n  {large:,} vs {small:,} jobs: first page {firsts[large][0]['median_ms'] / firsts[small][0]['median_ms']:.2f}x,"
              f" idle poll {firsts[large][1]['median_ms'] / firsts[small][1]['median_ms']:.2f}x (medians)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200, help="requests per idle measurement (default 200)")
    parser.add_argument("--jobs", type=int, nargs="*", default=[1_000, 100_000], help="store sizes for the scale table")
    parser.add_argument("--in-process", action="store_true", help="Flask's test client instead of HTTP on loopback")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    started = time.perf_counter()
    bench_poll_kinds(args.repeat, args.in_process)
    bench_scale(args.jobs, args.repeat, args.in_process)
    print(f"\n(done in {time.perf_counter() - started:.0f} s; Python {sys.version.split()[0]}, SQLite)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
