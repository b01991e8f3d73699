"""The README's screenshots, taken in Chromium from a seeded store, so they stay current.

Run: ``make screenshots`` or ``python -m bench.screenshots [--out docs/screenshots] [--serve]``. It builds
a fresh data folder holding the kinds of jobs a studio really has (a batch of images, an image-to-video
job with its input image, a dynamic job whose scenes have long prompts, failures, an imported job of a
workflow that is not installed, a sub-second job, accented prompts), serves it on a free loopback port and
saves ``history.png`` (the list, 1,400 px), ``overlay.png`` (an imported stalled job with its Retry note,
1,024 px), ``scenes.png`` (1,400 px) and ``phone.png`` (390 px) as small palette PNGs. With ``--serve``
it prints the address and keeps serving instead. Prints each file's size; not a test.
"""
from __future__ import annotations

import argparse
import base64
import datetime
import io
import logging
import sys
import tempfile
import threading
import uuid
from pathlib import Path

from PIL import Image
from PIL import ImageDraw
from werkzeug.serving import make_server

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"]
NOW = datetime.datetime(2026, 11, 28, 15, 30, 12, tzinfo=datetime.timezone.utc)
LONG_SCENE = (
    "a slow aerial shot over the harbour at first light, fishing boats leaving one by one, gulls wheeling "
    "above the breakwater, mist lifting off the water, cinematic, 35mm film grain"
)
MAX_PNG_BYTES = 200_000


def _frames(size, colors):
    return [Image.new("RGB", size, color) for color in colors]


def _still(path: Path, size, color, label: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, color)
    draw = ImageDraw.Draw(image)
    for step in range(0, max(size), max(size) // 8):
        draw.ellipse((step - size[0] // 4, step // 2, step + size[0] // 4, step // 2 + size[1] // 3),
                     outline=tuple(min(255, part + 70) for part in color), width=max(2, size[0] // 80))
    if label:
        draw.text((size[0] // 20, size[1] // 20), label, fill=(255, 255, 255))
    image.save(path)


def _animated(path: Path, size, colors) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = _frames(size, colors)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=250, loop=0, lossless=True)


def seed(data_dir: Path, video: bytes | None = None) -> list[str]:
    """Create the app's store under ``data_dir`` and fill it; answer the prompt ids, newest first."""
    from history import create_app
    from history.db import database
    from history.db import release
    from history.models import Job

    app = create_app({"STUDIO_DATA_DIR": str(data_dir), "STUDIO_DEMO": "0"})
    settings = app.config["STUDIO"]
    out = settings.output_dir
    settings.input_dir.mkdir(parents=True, exist_ok=True)
    _still(settings.input_dir / "harbour_boats.png", (640, 384), (40, 90, 140))
    rows = []

    def job(minutes_ago, workflow_id, name, status, params, files=(), duration=38.4, **fields):
        queued = NOW - datetime.timedelta(minutes=minutes_ago)
        output_dir = f"{queued:%Y%m%d_%H%M%S}_{uuid.uuid4().hex[:6]}"
        refs = []
        for filename, write, animated in files:
            ref = {"filename": filename, "subfolder": f"comfyui-studio/{output_dir}", "type": "output"}
            if animated:
                ref["animated"] = True
            write(out / ref["subfolder"] / filename)
            refs.append(ref)
        started = queued + datetime.timedelta(seconds=3)
        row = {
            "prompt_id": str(uuid.uuid4()), "workflow_id": workflow_id, "workflow_name": name, "status": status,
            "queued_at": queued, "started_at": started, "finished_at": started + datetime.timedelta(seconds=duration),
            "duration": duration, "params": params, "seeds": fields.pop("seeds", {}), "outputs": refs,
            "output": refs[0] if refs else None, "output_dir": output_dir,
            "error": fields.pop("error", None), "input_image": fields.pop("input_image", None),
        }
        row.update(fields)
        rows.append(row)

    palette = [(200, 90, 40), (60, 140, 90), (90, 80, 170), (170, 150, 60)]
    job(1, "txt2img-example", "Text to image (example)", "completed",
        {"positive_prompt": "a lighthouse at dusk on a basalt cliff, oil painting, warm rim light, dramatic clouds over a dark sea",
         "negative_prompt": "blurry, low quality", "seed": 1234567890, "width": 1024, "height": 1024, "batch_size": 4},
        files=[(f"final_{index + 1:05d}_.png", lambda path, c=color: _still(path, (1024, 1024), c), False)
               for index, color in enumerate(palette)], seeds={"seed": 1234567890})
    scenes = [
        {"prompt": LONG_SCENE, "duration": 2.5, "seed": 1234567890},
        {"prompt": "boats return at noon under a hard white sun, heat haze over the quay", "duration": 1.25, "seed": -1},
        {"prompt": "night market on the pier,\n  lanterns swaying, reflections in puddles", "duration": 3.0, "seed": 987654321},
    ]
    job(3, "scenes-example", "Scenes to video (example)", "completed", {"width": 320, "height": 192, "scenes": scenes},
        files=[("scenes_00001_.webp", lambda path: _animated(path, (320, 192), [(200, 120, 40), (40, 90, 160), (30, 30, 60)]), True)],
        seeds={"scenes": [1234567890, 4022911, 987654321]}, duration=12.2)
    job(6, "img2vid-example", "Image to video (example)", "completed",
        {"positive_prompt": "slow push-in, soft light", "width": 320, "height": 192, "frames_per_phase": 4, "fps": 8.0, "blur_radius": 6},
        files=[("clip_00001_.webp", lambda path: _animated(path, (320, 192), [(40, 90, 140), (70, 110, 150), (120, 80, 60)]), True)]
        + ([("clip_00001_.mp4", lambda path: path.write_bytes(video), False)] if video else []),
        input_image="harbour_boats.png", duration=0.35)
    job(9, "txt2img-example", "Text to image (example)", "error",
        {"positive_prompt": "Ein Leuchtturm in der Dämmerung — huile sur toile, «crépuscule», ÆØÅ", "negative_prompt": "", "seed": 42,
         "width": 512, "height": 512, "batch_size": 1},
        error="node KSampler (#3): RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB")
    job(12, "img2vid-example", "Image to video (imported)", "stalled",
        {"input_image": "harbour_boats.png", "positive_prompt": "gentle waves, camera drifts left",
         "lora_stack": [{"name": "film_grain_v2", "weight": 0.6}], "width": 320, "height": 192},
        error="no progress for 600 s (ComfyUI stopped answering)", duration=600.0)
    job(15, "sdxl-portrait", "SDXL portrait", "error",
        {"positive_prompt": "portrait of an old fisherman, dramatic side light, 85mm", "seed": 31337},
        error="node CheckpointLoaderSimple (#4): FileNotFoundError: sdxl_base_1.0.safetensors")
    for index in range(24):
        color = palette[index % len(palette)]
        job(20 + index * 7, "txt2img-example", "Text to image (example)", "completed",
            {"positive_prompt": f"study {index + 1}: harbour rooftops in the rain, gouache, muted palette", "seed": 1000 + index},
            files=[("final_00001_.png", lambda path, c=color: _still(path, (768, 512), c), False)], seeds={"seed": 1000 + index},
            duration=20 + index)
    with database.connection_context():
        Job.insert_many(rows).execute()
    app.extensions["studio"].stop()
    release()
    return [row["prompt_id"] for row in rows]


def record_clip(page, mime: str = "video/mp4", seconds: float = 1.2) -> bytes:
    """A real short video, recorded by Chromium's MediaRecorder from a canvas (no ffmpeg needed)."""
    page.set_content("<canvas width=320 height=192></canvas>")
    data = page.evaluate(
        """async ([mime, ms]) => {
          const canvas = document.querySelector("canvas"), paint = canvas.getContext("2d");
          const recorder = new MediaRecorder(canvas.captureStream(10), {mimeType: mime});
          const chunks = []; recorder.ondataavailable = (event) => chunks.push(event.data);
          let frame = 0;
          const tick = setInterval(() => { paint.fillStyle = `hsl(${frame++ * 30}, 70%, 45%)`; paint.fillRect(0, 0, 320, 192); }, 100);
          recorder.start(); await new Promise((done) => setTimeout(done, ms));
          const stopped = new Promise((done) => recorder.onstop = done); recorder.stop(); await stopped; clearInterval(tick);
          const bytes = new Uint8Array(await new Blob(chunks).arrayBuffer());
          let text = ""; for (const byte of bytes) text += String.fromCharCode(byte); return btoa(text);
        }""",
        [mime, int(seconds * 1000)],
    )
    return base64.b64decode(data)


class Server:
    """The seeded app on a free loopback port."""

    def __init__(self, data_dir: Path):
        from history import create_app

        self.app = create_app({"STUDIO_DATA_DIR": str(data_dir), "STUDIO_DEMO": "0", "STUDIO_POLL_SECONDS": "5"})
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.app.extensions["studio"].stop()
        self.server.shutdown()


def save_small(png: bytes, path: Path) -> int:
    """Save a screenshot as a 256-colour palette PNG (the page is flat colours); answer its size."""
    with Image.open(io.BytesIO(png)) as image:
        image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    return path.stat().st_size


def shoot(base: str, ids: list[str], out: Path) -> dict[str, int]:
    """Take the four screenshots; answer their sizes."""
    from playwright.sync_api import sync_playwright

    scenes_id = ids[1]
    sizes = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 900}, timezone_id="UTC")
        page = context.new_page()
        page.goto(base + "/admin/history")
        page.wait_for_function("() => [...document.querySelectorAll('img.job-thumb')].slice(0, 8).every((img) => img.complete)")
        sizes["history.png"] = save_small(page.screenshot(), out / "history.png")

        # The imported, stalled image-to-video job: its error, and a Retry that says what it fits.
        page.set_viewport_size({"width": 1024, "height": 900})
        page.locator(f'.job-card[data-prompt-id="{ids[4]}"] .job-workflow').click()
        page.wait_for_selector("#job-overlay .retry-fitted")
        sizes["overlay.png"] = save_small(page.screenshot(), out / "overlay.png")

        page.set_viewport_size({"width": 1400, "height": 900})
        page.goto(base + f"/admin/history/jobs/{scenes_id}")
        page.locator("#job-overlay .overlay-section").first.evaluate("(section) => section.scrollIntoView()")
        sizes["scenes.png"] = save_small(page.screenshot(), out / "scenes.png")

        phone = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2,
                                    is_mobile=True, has_touch=True, timezone_id="UTC")
        page = phone.new_page()
        page.goto(base + f"/admin/history/jobs/{scenes_id}")
        page.wait_for_selector("#job-overlay")
        sizes["phone.png"] = save_small(page.screenshot(), out / "phone.png")
        browser.close()
    return sizes


def main(argv=None) -> int:
    """Seed a store, serve it and take the screenshots (or keep serving with --serve)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--serve", action="store_true", help="keep serving the seeded store instead")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="studio-screens-") as temp:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            video = record_clip(browser.new_page())
            browser.close()
        ids = seed(Path(temp) / "data", video)
        server = Server(Path(temp) / "data")
        try:
            if args.serve:
                print(f"serving {server.url}/admin/history (Ctrl+C stops)", flush=True)
                threading.Event().wait()
            args.out.mkdir(parents=True, exist_ok=True)
            sizes = shoot(server.url, ids, args.out)
        finally:
            server.stop()
    status = 0
    for name, size in sizes.items():
        flag = "" if size <= MAX_PNG_BYTES else f"  (over {MAX_PNG_BYTES:,} bytes)"
        status = status or (1 if flag else 0)
        print(f"{args.out / name}: {size:,} bytes{flag}")
    return status


if __name__ == "__main__":
    sys.exit(main())
