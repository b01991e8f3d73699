"""A newcomer's first minute: on an empty store, run the example workflows once so the pages have real jobs.

Runs in a background thread when the studio starts (STUDIO_DEMO=1, the default, and no job in the
store); STUDIO_DEMO=0 turns it off. The jobs go through the same path as POST /api/run/.../execute,
so they are ordinary records with real files: a few complete, one fails on purpose.
"""
from __future__ import annotations

import io
import logging

from PIL import Image
from PIL import ImageDraw

from history import db
from history import files
from history.executors.base import ExecutorError
from history.workflows import ValidationError

log = logging.getLogger(__name__)

# (workflow_id, params); the img2vid job also gets the generated input image.
DEMO_JOBS = [
    ("txt2img-example", {"positive_prompt": "a lighthouse at dusk, oil painting", "negative_prompt": "blurry", "seed": 7}),
    ("txt2img-example", {"positive_prompt": "a field of poppies under a storm sky", "seed": 1234, "batch_size": 2}),
    ("img2vid-example", {"positive_prompt": "slow push-in on the harbour, soft light"}),
    ("scenes-example", {"scenes": [
        {"prompt": "dawn over the harbour", "duration": 0.75, "seed": 11},
        {"prompt": "boats leave at noon", "duration": 0.75, "seed": 22},
        {"prompt": "lanterns at night", "duration": 0.75, "seed": 33},
    ]}),
    ("upscale-fails-example", {"positive_prompt": "upscale the lighthouse 4x (fails on purpose: no upscale model)"}),
]


def example_image() -> bytes:
    """A small PNG to feed the image-to-video example: a sunset gradient with a sun."""
    image = Image.new("RGB", (480, 320))
    draw = ImageDraw.Draw(image)
    for y in range(image.height):
        t = y / (image.height - 1)
        draw.line([(0, y), (image.width, y)], fill=(int(250 - 170 * t), int(140 - 90 * t), int(60 + 90 * t)))
    draw.ellipse((190, 150, 290, 250), fill=(255, 220, 120))
    draw.rectangle((0, 250, image.width, image.height), fill=(30, 40, 80))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def run(studio) -> list[str]:
    """Queue the demo jobs on ``studio``; return their prompt ids. Never raises: a demo must not stop the app."""
    queued = []
    try:
        with db.connection():
            input_image = None
            for workflow_id, params in DEMO_JOBS:
                if workflow_id not in studio.workflows:
                    continue
                image = None
                if studio.workflows[workflow_id].image_input is not None:
                    if input_image is None:
                        input_image = files.store_input_image(studio.settings.input_dir, "demo-sunset", "png", example_image())
                    image = input_image
                try:
                    job = studio.execute(workflow_id, dict(params), image)
                except (ValidationError, ExecutorError) as error:
                    log.warning("demo job %s not queued: %s", workflow_id, error)
                    continue
                queued.append(job.prompt_id)
    except Exception:  # the demo is a courtesy; the app runs without it
        log.exception("demo jobs could not be queued")
    if queued:
        log.info("queued %d demo jobs (STUDIO_DEMO=0 turns this off)", len(queued))
    return queued
