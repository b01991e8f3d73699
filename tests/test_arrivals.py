"""Card thumbnails are made as jobs arrive (an import, a job that ends), before any page asks for them."""
from __future__ import annotations

import json
import os

from history import thumbnails
from history.arrivals import card_source
from tests.conftest import wait_for
from tests.conftest import write_image


def record(prompt_id: str, output_dir: str, status: str = "completed", filename: str = "final_00001_.png") -> dict:
    ref = {"filename": filename, "subfolder": f"comfyui-studio/{output_dir}", "type": "output"}
    return {"prompt_id": prompt_id, "workflow_id": "comfyui", "workflow_name": "ComfyUI", "status": status,
            "queued_at": "2026-11-28T12:00:00+00:00", "outputs": [ref], "output_dir": output_dir}


def cached(settings, source) -> bool:
    """Whether the card thumbnail of ``source`` is in the cache."""
    resolved = source.resolve()
    return thumbnails.cache_path(settings.thumbnail_dir, resolved, os.stat(resolved)).is_file()


def test_an_import_makes_the_card_thumbnails(runner, settings, tmp_path):
    records = [record(f"old-{number}", f"20240101_0000{number:02d}_old{number}") for number in range(4)]
    records.append(record("video-1", "20240101_000099_video", filename="clip.mp4"))
    for entry in records[:4]:
        write_image(settings.output_dir / entry["outputs"][0]["subfolder"] / entry["outputs"][0]["filename"], size=(800, 600))
    path = tmp_path / "old-jobs.json"
    path.write_text(json.dumps(records))
    result = runner.invoke(args=["history", "import", str(path)])
    assert result.exit_code == 0, result.output
    assert "made 4 thumbnails" in result.output
    sources = [card_source(entry, settings) for entry in records[:4]]
    assert all(cached(settings, source) for source in sources)
    assert card_source(records[4], settings) is None  # a video's card shows the placeholder


def test_a_job_that_ends_gets_its_thumbnail_in_the_background(app, settings):
    studio = app.extensions["studio"]
    studio.start()
    entry = record("failed-after-save", "20261128_120000_failed", status="error")
    source = write_image(settings.output_dir / entry["outputs"][0]["subfolder"] / entry["outputs"][0]["filename"])
    studio.bus.publish("job.failed", entry)
    wait_for(lambda: cached(settings, source), what="the thumbnail of a job that just failed")
