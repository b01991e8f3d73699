"""Files that are not files: a FIFO (or socket, device) in a job folder or the input folder is never opened.

Opening a FIFO for reading blocks until a writer comes, for ever: one such request would hold a server
thread, 70 froze gunicorn. Each route that reads a job's files answers at once and leaves it out.
"""
from __future__ import annotations

import io
import os
import threading
import zipfile

import pytest

from history import files
from history import thumbnails
from tests.conftest import BASE_TIME
from tests.conftest import write_image

ANSWER_SECONDS = 10


@pytest.fixture
def fifo_job(make_job, settings):
    """A job whose folder holds a real image and a FIFO named like one (unblocked after the test)."""
    job = make_job(files=1)
    fifo = settings.output_dir / "comfyui-studio" / job.output_dir / "stuck.png"
    os.mkfifo(fifo)
    yield job, fifo
    # A reader still blocked on it (a failing run) is let go: open the writer side without blocking.
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


def answer_in_time(client, url):
    """GET ``url`` in a thread; fail when it does not answer within ANSWER_SECONDS (a thread stuck on open)."""
    result = {}

    def get():
        with client.get(url, buffered=True) as response:
            result["response"] = response

    thread = threading.Thread(target=get, daemon=True)
    thread.start()
    thread.join(ANSWER_SECONDS)
    assert not thread.is_alive(), f"{url} did not answer: a thread is stuck opening a FIFO"
    return result["response"]


def test_a_fifo_gets_the_placeholder_thumbnail_at_once(client, fifo_job):
    job, fifo = fifo_job
    response = answer_in_time(client, f"/media/thumb/output/comfyui-studio/{job.output_dir}/{fifo.name}")
    assert response.status_code == 200 and response.headers["X-Thumbnail"] == "placeholder"


def test_a_fifo_is_not_served_as_a_file(client, fifo_job):
    job, fifo = fifo_job
    assert answer_in_time(client, f"/media/output/comfyui-studio/{job.output_dir}/{fifo.name}").status_code == 404


def test_the_assets_page_and_the_package_leave_a_fifo_out(client, fifo_job):
    job, fifo = fifo_job
    page = answer_in_time(client, f"/admin/assets?dir={job.output_dir}")
    assert page.status_code == 200 and fifo.name not in page.get_data(as_text=True)
    package = answer_in_time(client, f"/api/admin/history/{job.prompt_id}/package")
    names = zipfile.ZipFile(io.BytesIO(package.get_data())).namelist()
    assert names == ["job.json", f"output/{job.outputs[0]['filename']}"]


def test_the_history_page_and_card_show_a_fifo_output_as_a_placeholder(client, make_job, settings):
    output_dir = f"{BASE_TIME:%Y%m%d_%H%M%S}_fifo"
    folder = settings.output_dir / "comfyui-studio" / output_dir
    folder.mkdir(parents=True)
    os.mkfifo(folder / "final_00001_.png")
    ref = {"filename": "final_00001_.png", "subfolder": f"comfyui-studio/{output_dir}", "type": "output"}
    job = make_job(output_dir=output_dir, outputs=[ref], output=ref)
    assert answer_in_time(client, "/admin/history").status_code == 200
    card = answer_in_time(client, f"/admin/history/jobs/{job.prompt_id}/card")
    assert card.status_code == 200 and "img class=\"job-thumb\"" not in card.get_data(as_text=True)


def test_an_input_fifo_is_refused_as_an_input_image(client, settings):
    os.mkfifo(settings.input_dir / "pipe.png")
    result = {}
    thread = threading.Thread(target=lambda: result.update(response=client.post(
        "/api/run/img2vid-example/execute", json={"params": {}, "input_image": "pipe.png"})), daemon=True)
    thread.start()
    thread.join(ANSWER_SECONDS)
    assert not thread.is_alive()
    assert result["response"].status_code == 400 and result["response"].json["field"] == "input_image"


def test_reading_helpers_never_block_on_a_fifo(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    write_image(tmp_path / "real.png")
    assert files.regular_file(fifo) is None
    with pytest.raises(files.NotRegularFile):
        files.open_regular(fifo)  # returns at once: the open does not wait for a writer
    assert thumbnails.make_thumbnail(fifo, tmp_path / "cache") is None
    assert thumbnails.image_size(fifo) is None
    assert thumbnails.image_size(tmp_path / "real.png") == (256, 256)
