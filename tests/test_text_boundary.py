"""Text that is not valid Unicode: refused where a request or an import brings it, repaired where ComfyUI or
the disk brings it, and never able to break a page once stored (history/text.py)."""
from __future__ import annotations

import json
import os

import pytest

from history import text
from history.models import Job
from tests.conftest import soup

HTMX = {"HX-Request": "true"}
LONE = "\ud800"


def test_execute_refuses_a_lone_surrogate_naming_the_field_and_stores_nothing(client, db):
    body = '{"params": {"positive_prompt": "a \\ud800 fox"}}'  # JSON's escape: valid JSON, not valid Unicode
    response = client.post("/api/run/txt2img-example/execute", data=body, content_type="application/json")
    assert response.status_code == 400
    assert response.json["field"] == "params.positive_prompt"
    assert "Unicode" in response.json["error"]
    assert Job.select().count() == 0


def test_a_multipart_execute_refuses_it_too(client, db):
    response = client.post("/api/run/txt2img-example/execute", content_type="multipart/form-data",
                           data={"params": '{"negative_prompt": "\\udfff"}'})
    assert response.status_code == 400 and response.json["field"] == "negative_prompt"
    assert Job.select().count() == 0


def test_execute_refuses_it_in_input_image(client, db):
    body = '{"params": {}, "input_image": "in\\ud800.png"}'
    response = client.post("/api/run/img2vid-example/execute", data=body, content_type="application/json")
    assert response.status_code == 400
    assert response.json["field"] == "input_image"
    assert Job.select().count() == 0


def test_an_import_refuses_the_record_naming_the_field(runner, tmp_path, db):
    record = {"prompt_id": "bad-text-1", "workflow_id": "txt2img-example", "status": "completed",
              "queued_at": "2026-11-28T12:00:00+00:00", "params": {"scenes": [{"prompt": LONE}]}}
    source = tmp_path / "import.json"
    source.write_text(json.dumps([record]))  # json.dumps writes the escape "\ud800"
    result = runner.invoke(args=["history", "import", str(source)])
    assert "refused 1" in result.output
    assert "params.scenes[0].prompt" in result.output
    assert Job.get_or_none(Job.prompt_id == "bad-text-1") is None


@pytest.mark.sqlite_only  # PostgreSQL's JSONB refuses a lone surrogate, so only an SQLite store can hold one
def test_a_stored_lone_surrogate_breaks_no_page(client, make_job):
    """A store written before the boundary existed: every page that shows the job still renders."""
    job = make_job(status="error", params={"positive_prompt": f"fox {LONE} in snow", LONE: [LONE]},
                   error=None, outputs=[{"filename": f"x{LONE}.png", "subfolder": "", "type": "output"}])
    urls = ["/admin/history", "/admin/history/list", "/admin/history?q=fox", f"/admin/history/jobs/{job.prompt_id}",
            f"/admin/history/jobs/{job.prompt_id}/card"]
    for url in urls:
        response = client.get(url)
        assert response.status_code == 200, url
        assert f"fox {text.REPLACEMENT} in snow" in response.get_data(as_text=True), url
    overlay = soup(client.get(f"/admin/history/jobs/{job.prompt_id}", headers=HTMX))
    assert overlay.select_one("#job-overlay .params-table") is not None
    assert client.get(f"/api/admin/history/{job.prompt_id}").json["params"]["positive_prompt"] == f"fox {LONE} in snow"


def test_comfyui_answers_are_repaired():
    from history.executors.comfyui import _parse

    answer = _parse(b'{"node_errors": {"\\udc80": "bad \\ud800 value"}, "ok": ["\\ud83d\\ude00"]}')
    assert answer == {"node_errors": {"\ufffd": "bad \ufffd value"}, "ok": ["\U0001F600"]}


def test_file_names_on_disk_that_are_not_utf8_are_listed_and_packaged_repaired(client, make_job, settings):
    job = make_job(files=1)
    folder = settings.output_dir / "comfyui-studio" / job.output_dir
    with open(os.path.join(os.fsencode(folder), b"bad\xff.png"), "wb") as handle:
        handle.write(b"not an image")
    page = client.get(f"/admin/assets?dir={job.output_dir}")
    assert page.status_code == 200
    assert "bad\ufffd.png" in page.get_data(as_text=True)
    import io
    import zipfile

    response = client.get(f"/api/admin/history/{job.prompt_id}/package")
    archive = zipfile.ZipFile(io.BytesIO(response.get_data()))
    assert archive.read("output/bad\ufffd.png") == b"not an image"


def test_the_checks_walk_without_recursion():
    deep = current = []
    for _ in range(100_000):
        current.append([])
        current = current[0]
    assert "nests deeper" in str(text.find_invalid(deep))
    assert text.repair({"a": [LONE, {LONE: "x"}]}) == {"a": ["\ufffd", {"\ufffd": "x"}]}
    with pytest.raises(text.InvalidText) as raised:
        text.loads("[" * 5000 + "]" * 5000)
    assert raised.value.field == "body"
