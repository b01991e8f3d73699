"""Completion-to-screen latency: from a job's job.completed event to its card on the history page.

Run: ``python -m bench.events [--runs 20] [--poll 5]``. It starts the app (built-in executor, a temporary
data folder, no demo) on 127.0.0.1 with Werkzeug's threaded server, opens /admin/history in Debian's
Chromium through Playwright, and runs the txt2img example ``--runs`` times through
POST /api/run/txt2img-example/execute. For each run it compares the server's timestamp of the
``job.completed`` event with the moment a MutationObserver in the page sees the card with
``data-status="completed"`` (both on this machine's clock). With the websocket working, the figure is far
below the poll interval; without it, it would be up to one poll interval. A benchmark, not a test.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]

# Records, per prompt id, when a completed card first appears (ms since the epoch).
OBSERVER = """
() => {
  window.__completedSeen = {};
  const look = () => {
    for (const card of document.querySelectorAll('.job-card[data-status="completed"]')) {
      const id = card.dataset.promptId;
      if (!(id in window.__completedSeen)) window.__completedSeen[id] = Date.now();
    }
  };
  new MutationObserver(look).observe(document.body, {subtree: true, childList: true, attributes: true,
                                                     attributeFilter: ["data-status"]});
  look();
}
"""


def post_execute(base_url: str, params: dict) -> str:
    """Queue one txt2img run; answer its prompt id."""
    request = urllib.request.Request(
        f"{base_url}/api/run/txt2img-example/execute",
        data=json.dumps({"params": params}).encode(),
        headers={"Content-Type": "application/json", "Origin": base_url},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["prompt_id"]


def main(argv: list[str] | None = None) -> int:
    """Measure and print the latency figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="jobs to run (default 20)")
    parser.add_argument("--poll", type=float, default=5.0, help="the list's poll interval in seconds (default 5)")
    parser.add_argument("--polling-runs", type=int, default=6,
                        help="runs with the websocket extension blocked, so only polling refreshes (default 6; 0 skips)")
    args = parser.parse_args(argv)
    status = measure(args.runs, args.poll, websocket=True)
    if args.polling_runs:
        status = measure(args.polling_runs, args.poll, websocket=False) or status
    return status


def measure(runs: int, poll: float, websocket: bool) -> int:
    """Run ``runs`` jobs with the page open and print completion-to-screen figures."""

    from playwright.sync_api import sync_playwright
    from werkzeug.serving import make_server

    from history import create_app

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    data_dir = tempfile.mkdtemp(prefix="bench-events-")
    app = create_app({"STUDIO_DATA_DIR": data_dir, "STUDIO_DEMO": "0", "STUDIO_POLL_SECONDS": str(poll)})
    studio = app.extensions["studio"]
    server = make_server("127.0.0.1", 0, app, threaded=True)
    base_url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    latencies = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page()
            if not websocket:
                # Without htmx's websocket extension the page has only its poller.
                page.route(lambda url: "/ext/hx-ws" in url, lambda route: route.abort())
            page.goto(f"{base_url}/admin/history")
            deadline = time.monotonic() + 10
            while websocket and studio.bus.subscriber_count < 1:  # the page's websocket is open
                if time.monotonic() > deadline:
                    print("the page never opened its websocket", file=sys.stderr)
                    return 1
                time.sleep(0.02)
            page.evaluate(OBSERVER)
            with studio.bus.subscribe() as events:
                for run in range(runs):
                    prompt_id = post_execute(base_url, {"positive_prompt": f"bench run {run}", "seed": run, "width": 256, "height": 256})
                    completed_ts = None
                    deadline = time.monotonic() + 20
                    while completed_ts is None and time.monotonic() < deadline:
                        message = events.get(timeout=1)
                        if message:
                            frame = json.loads(message)
                            if frame["type"] == "job.completed" and frame["data"]["prompt_id"] == prompt_id:
                                completed_ts = frame["ts"]
                    page.wait_for_function(f"() => '{prompt_id}' in window.__completedSeen", timeout=3 * poll * 1000)
                    seen_ms = page.evaluate(f"() => window.__completedSeen['{prompt_id}']")
                    latencies.append(seen_ms - completed_ts * 1000)
            browser.close()
    finally:
        studio.stop()
        server.shutdown()
        server.server_close()
        shutil.rmtree(data_dir, ignore_errors=True)

    ordered = sorted(latencies)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    how = "pushed by the websocket" if websocket else "polling alone (websocket extension blocked)"
    print(f"completion-to-screen latency over {len(latencies)} runs, {how}, poll interval {poll:g} s")
    print(f"  median {statistics.median(latencies):7.1f} ms")
    print(f"  p95    {p95:7.1f} ms")
    print(f"  max    {max(latencies):7.1f} ms")
    print(f"  min    {min(latencies):7.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
