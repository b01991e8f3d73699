"""What thumbnails cost and save: bytes a page of cards downloads, and time to make vs serve one.

Run: ``python -m bench.thumbnails [--count 50] [--size 1024]``. It writes N real images (half PNG, half
JPEG) as job outputs in a temporary data folder, starts the app on 127.0.0.1 with Werkzeug's server in a
thread, and fetches the thumbnails a page of N cards shows: first (each made by Pillow), again (served from
the disk cache), and revalidated (304). It prints one table; it is a benchmark, not a test.
"""
from __future__ import annotations

import argparse
import datetime
import http.client
import logging
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from html.parser import HTMLParser
from pathlib import Path

from PIL import Image
from PIL import ImageDraw
from PIL import ImageFilter

TARGET_RATIO = 0.02


def make_image(size: int, seed: int) -> Image.Image:
    """A picture with the texture of a generated image: gradients, shapes and fine noise (PNG cannot squash it)."""
    base = Image.linear_gradient("L").resize((size, size)).rotate(seed * 37 % 360)
    red = base
    green = base.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    blue = Image.radial_gradient("L").resize((size, size))
    image = Image.merge("RGB", (red, green, blue))
    draw = ImageDraw.Draw(image)
    for index in range(12):
        x = (seed * 97 + index * 131) % size
        y = (seed * 53 + index * 71) % size
        radius = size // 10 + index * 7
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=((index * 40) % 256, 90, 200 - index * 10))
    image = image.filter(ImageFilter.GaussianBlur(2))
    with Image.effect_noise((size, size), 24) as noise:
        grain = Image.merge("RGB", (noise, noise, noise))
    blended = Image.blend(image, grain, 0.12)
    image.close()
    grain.close()
    return blended


def write_outputs(output_root: Path, count: int, size: int) -> list[dict]:
    """Write ``count`` job folders with one image each; answer the job rows to insert."""
    rows = []
    start = datetime.datetime(2026, 11, 28, 12, 0, tzinfo=datetime.timezone.utc)
    for index in range(count):
        queued_at = start - datetime.timedelta(minutes=index)
        output_dir = f"{queued_at:%Y%m%d_%H%M%S}_{index:06x}"
        suffix = "png" if index % 2 == 0 else "jpg"
        filename = f"final_00001_.{suffix}"
        folder = output_root / "comfyui-studio" / output_dir
        folder.mkdir(parents=True)
        with make_image(size, index) as image:
            if suffix == "png":
                image.save(folder / filename, compress_level=4)  # ComfyUI's SaveImage level
            else:
                image.save(folder / filename, quality=95)
        ref = {"filename": filename, "subfolder": f"comfyui-studio/{output_dir}", "type": "output"}
        rows.append({
            "prompt_id": str(uuid.uuid4()),
            "workflow_id": "txt2img-example",
            "workflow_name": "Text to image (example)",
            "status": "completed",
            "queued_at": queued_at,
            "started_at": queued_at + datetime.timedelta(seconds=2),
            "finished_at": queued_at + datetime.timedelta(seconds=42),
            "duration": 40.0,
            "params": {"positive_prompt": f"benchmark image {index}", "seed": index},
            "seeds": {"seed": index},
            "output": ref,
            "outputs": [ref],
            "output_dir": output_dir,
        })
    return rows


class ThumbSources(HTMLParser):
    """Collect the ``src`` of every ``img.job-thumb`` on a page."""

    def __init__(self):
        super().__init__()
        self.sources = []

    def handle_starttag(self, tag, attrs):
        values = dict(attrs)
        if tag == "img" and "job-thumb" in (values.get("class") or "").split():
            self.sources.append(values.get("src"))


def fetch(connection: http.client.HTTPConnection, url: str, headers: dict | None = None):
    """GET a URL on a kept-alive connection; answer (status, headers, body, seconds)."""
    started = time.perf_counter()
    connection.request("GET", url, headers=headers or {})
    response = connection.getresponse()
    body = response.read()
    return response.status, response, body, time.perf_counter() - started


def thumbnail_urls(app, connection, jobs: list[dict]) -> tuple[list[str], str]:
    """The thumbnail URLs of a page of cards: from the history page when it shows them, else built directly."""
    status, _response, body, _seconds = fetch(connection, "/admin/history")
    parser = ThumbSources()
    if status == 200:
        parser.feed(body.decode("utf-8", "replace"))
    sources = [src for src in parser.sources if src]
    if len(sources) >= len(jobs):
        return sources[: len(jobs)], "img.job-thumb on /admin/history"
    from history.web import media

    with app.test_request_context():
        return [media.thumbnail_url(job["output"]) for job in jobs], "thumbnail_url() of each job's output"


def parallel_cold_page(port: int, urls: list[str], workers: int) -> float:
    """Fetch every URL with ``workers`` connections at once, as a browser does; answer the wall time."""
    pending = list(urls)
    lock = threading.Lock()

    def work():
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            while True:
                with lock:
                    if not pending:
                        return
                    url = pending.pop()
                status, response, _body, _seconds = fetch(connection, url)
                assert status == 200 and response.getheader("Content-Type") == "image/webp", (url, status)
        finally:
            connection.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=work) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000 if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50, help="cards on the page (one image each)")
    parser.add_argument("--size", type=int, default=1024, help="the images' width and height in pixels")
    args = parser.parse_args(argv)

    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log lines between the figures

    from history import create_app
    from history.db import connection
    from history.models import Job

    with tempfile.TemporaryDirectory(prefix="bench-thumbnails-") as data_dir:
        app = create_app({"STUDIO_DATA_DIR": data_dir, "STUDIO_DEMO": "0"})
        settings = app.config["STUDIO"]
        started = time.perf_counter()
        rows = write_outputs(settings.output_dir, args.count, args.size)
        write_seconds = time.perf_counter() - started
        with connection():
            Job.insert_many(rows).execute()

        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        client = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=30)
        try:
            urls, source = thumbnail_urls(app, client, rows)
            cold, warm, revalidated = [], [], []
            cold_png, cold_jpeg = [], []
            thumb_bytes = 0
            etags = []
            for url, row in zip(urls, rows):
                status, response, body, seconds = fetch(client, url)
                assert status == 200 and response.getheader("Content-Type") == "image/webp", (url, status)
                cold.append(seconds)
                (cold_png if row["output"]["filename"].endswith(".png") else cold_jpeg).append(seconds)
                thumb_bytes += len(body)
                etags.append(response.getheader("ETag"))
                cache_control = response.getheader("Cache-Control")
            for url in urls:
                status, _response, _body, seconds = fetch(client, url)
                warm.append(seconds)
            for url, etag in zip(urls, etags):
                status, _response, body, seconds = fetch(client, url, {"If-None-Match": etag})
                assert status == 304, status
                revalidated.append(seconds)
            # The same page cold again, fetched six at a time like a browser (the cache emptied first).
            shutil.rmtree(settings.thumbnail_dir)
            parallel_seconds = parallel_cold_page(server.server_port, urls, 6)
            full_url = urls[0].replace("/media/thumb/output/", "/media/output/").split("?")[0]
            _status, _response, _body, full_seconds = fetch(client, full_url)
        finally:
            client.close()
            server.shutdown()
            thread.join(timeout=5)
            app.extensions["studio"].stop()

        output_bytes = sum(
            (settings.output_dir / row["output"]["subfolder"] / row["output"]["filename"]).stat().st_size
            for row in rows
        )
        cache_bytes = sum(path.stat().st_size for path in settings.thumbnail_dir.rglob("*.webp"))

    ratio = thumb_bytes / output_bytes
    lines = [
        ("images", f"{args.count} x {args.size}x{args.size} (half PNG level 4, half JPEG q95); written in {write_seconds:.1f} s"),
        ("thumbnail URLs from", source),
        ("output files, total", f"{output_bytes / 1e6:.2f} MB ({output_bytes / args.count / 1e3:.0f} KB each)"),
        ("thumbnails a page downloads", f"{thumb_bytes / 1e3:.1f} KB ({thumb_bytes / args.count:.0f} B each)"),
        ("ratio thumbnails / outputs", f"{ratio:.3%} (target < {TARGET_RATIO:.0%}: {'met' if ratio < TARGET_RATIO else 'NOT met'})"),
        ("thumbnail cache on disk", f"{cache_bytes / 1e3:.1f} KB"),
        ("first request (made), median", f"{median_ms(cold):.1f} ms  (PNG {median_ms(cold_png):.1f} ms, JPEG {median_ms(cold_jpeg):.1f} ms)"),
        ("first request, max / total", f"{max(cold) * 1000:.1f} ms / {sum(cold):.2f} s for the page"),
        ("first page, 6 connections (browser)", f"{parallel_seconds:.2f} s wall for {args.count} thumbnails"),
        ("cached request, median", f"{median_ms(warm):.2f} ms  (total {sum(warm) * 1000:.0f} ms for the page)"),
        ("revalidated (304), median", f"{median_ms(revalidated):.2f} ms"),
        ("speed-up cached vs first", f"{statistics.median(cold) / statistics.median(warm):.0f}x"),
        ("one full-size output", f"{full_seconds * 1000:.1f} ms"),
        ("Cache-Control of a versioned URL", cache_control),
    ]
    width = max(len(label) for label, _value in lines)
    print(f"Thumbnails: {args.count}-card page against a live server on 127.0.0.1")
    print("-" * (width + 60))
    for label, value in lines:
        print(f"{label:<{width}}  {value}")
    return 0 if ratio < TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())


# ---- thumbnails on arrival: a page of imported jobs in Chromium ----------------------------------

# When every thumbnail of the page has loaded, relative to the moment the list was in the document.
THUMBS_LOADED = """
() => {
  const thumbs = [...document.querySelectorAll('#job-list img.job-thumb')];
  if (!thumbs.length || !thumbs.every(img => img.complete && img.naturalWidth > 0)) return null;
  const nav = performance.getEntriesByType('navigation')[0];
  const loads = performance.getEntriesByType('resource').filter(entry => entry.name.includes('/media/thumb/'));
  return {count: thumbs.length, list: nav.domInteractive, last: Math.max(...loads.map(entry => entry.responseEnd))};
}
"""


def page_after_import(count: int = 50, size: int = 1024) -> dict:
    """Import ``count`` old jobs with the CLI (a subprocess), open the page in Chromium, and time its thumbnails.

    "after": the import made them (this studio). "before": the same page with the thumbnail cache emptied,
    so each is made when the browser asks (as before). Prints and answers both, in ms after the list.
    """
    import json
    import subprocess

    from playwright.sync_api import sync_playwright

    from bench.events import CHROMIUM
    from bench.events import CHROMIUM_ARGS
    from history import create_app

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    figures = {}
    with tempfile.TemporaryDirectory(prefix="bench-arrival-") as data_dir:
        app = create_app({"STUDIO_DATA_DIR": data_dir, "STUDIO_DEMO": "0", "START_RUNNER": False})
        settings = app.config["STUDIO"]
        rows = write_outputs(settings.output_dir, count, size)
        records = [{**row, **{key: row[key].isoformat() for key in ("queued_at", "started_at", "finished_at")}} for row in rows]
        source = Path(data_dir) / "old-jobs.json"
        source.write_text(json.dumps(records))
        started = time.perf_counter()
        env = {**os.environ, "STUDIO_DATA_DIR": data_dir, "STUDIO_DEMO": "0"}
        done = subprocess.run([sys.executable, "-m", "flask", "--app", "app:create_app()", "history", "import", str(source)],
                              cwd=Path(__file__).resolve().parent.parent, env=env, capture_output=True, text=True, timeout=600)
        import_seconds = time.perf_counter() - started
        assert done.returncode == 0, done.stderr
        app.extensions["studio"].stop()
        # The production server, as `make serve` runs it (keep-alive, a thread per connection).
        from bench.load import free_port

        port = free_port()
        server = subprocess.Popen(
            [str(Path(sys.executable).with_name("gunicorn")), "-w", "1", "-k", "gthread", "--threads", "16",
             "--no-control-socket", "-b", f"127.0.0.1:{port}", "--log-level", "warning", "app:create_app()"],
            cwd=Path(__file__).resolve().parent.parent, env=env)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    http.client.HTTPConnection("127.0.0.1", port, timeout=5).connect()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise SystemExit("gunicorn did not start")
                    time.sleep(0.2)
            # The studio has been running when a person opens the page after an import: its first request
            # (templates compiled, background work started) is not the thumbnails' cost, so it is made first.
            warm = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            warm.request("GET", "/admin/history")
            warm.getresponse().read()
            warm.close()
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                for label in ("after", "before"):
                    if label == "before":
                        shutil.rmtree(settings.thumbnail_dir, ignore_errors=True)
                    # A fresh context (no HTTP cache) tall enough that no thumbnail waits for a scroll (loading=lazy).
                    context = browser.new_context(viewport={"width": 1280, "height": 120 * count})
                    page = context.new_page()
                    page.goto(f"http://127.0.0.1:{port}/admin/history")
                    result = page.wait_for_function(THUMBS_LOADED, timeout=60_000).json_value()
                    figures[f"{label}_ms"] = result["last"] - result["list"]
                    figures[f"{label}_count"] = result["count"]
                    context.close()
                browser.close()
        finally:
            server.terminate()
            server.wait(timeout=15)
    print(f"  import of {count} old jobs ({size}x{size} outputs) by the CLI: {import_seconds:.1f} s ({done.stdout.strip().splitlines()[-1]})")
    print(f"  all {figures['after_count']} thumbnails loaded {figures['after_ms']:.0f} ms after the list (made at import)")
    print(f"  all {figures['before_count']} thumbnails loaded {figures['before_ms']:.0f} ms after the list (cache emptied: made on request)")
    return figures
