"""Export: a job's package, the selected jobs as JSON that imports back, and the retry guard."""
from __future__ import annotations

import io
import json
import os
import zipfile

import pytest
from bs4 import BeautifulSoup

from history import jobs
from history.models import Job
from tests.conftest import write_image


def package(client, job):
    response = client.get(f"/api/admin/history/{job.prompt_id}/package")
    assert response.status_code == 200
    return response, zipfile.ZipFile(io.BytesIO(response.get_data()))


def test_package_holds_job_json_the_input_image_and_every_file_of_the_folder(client, make_job, settings):
    write_image(settings.input_dir / "harbour.png", color=(10, 20, 30))
    job = make_job(status="error", files=2, input_image="harbour.png")
    folder = settings.output_dir / "comfyui-studio" / job.output_dir
    (folder / "notes.txt").write_text("a file no output reference names\n")
    response, archive = package(client, job)
    assert "Content-Length" not in response.headers  # streamed: no zip is built in memory first
    assert response.mimetype == "application/zip"
    assert response.headers["Content-Disposition"] == f'attachment; filename="{job.output_dir}.zip"'
    assert response.headers["Cache-Control"] == "no-store"
    assert sorted(archive.namelist()) == [
        "input/harbour.png", "job.json", "output/final_00001_.png", "output/final_00002_.png", "output/notes.txt",
    ]
    assert json.loads(archive.read("job.json")) == client.get(f"/api/admin/history/{job.prompt_id}").json
    assert archive.read("input/harbour.png") == (settings.input_dir / "harbour.png").read_bytes()
    for name in ("final_00001_.png", "final_00002_.png", "notes.txt"):
        assert archive.read(f"output/{name}") == (folder / name).read_bytes()
    assert archive.testzip() is None


def test_package_of_a_job_without_files_is_its_record_named_after_its_id(client, make_job):
    job = make_job(files=0, output_dir=None, input_image="gone.png")
    Job.update(output_dir=None).where(Job.prompt_id == job.prompt_id).execute()
    response, archive = package(client, job)
    assert response.headers["Content-Disposition"] == f'attachment; filename="{job.prompt_id}.zip"'
    assert archive.namelist() == ["job.json"]


def test_package_leaves_out_links_that_lead_outside_the_folder(client, make_job, settings, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not the job's")
    job = make_job(files=1)
    folder = settings.output_dir / "comfyui-studio" / job.output_dir
    os.symlink(secret, folder / "leak.txt")
    _response, archive = package(client, job)
    assert sorted(archive.namelist()) == ["job.json", "output/final_00001_.png"]


def test_package_of_an_unknown_job_is_a_json_404(client):
    response = client.get("/api/admin/history/no-such-job/package")
    assert response.status_code == 404
    assert "no-such-job" in response.json["error"]


def test_export_selected_is_the_cli_export_of_those_jobs_and_imports_back_as_the_same_jobs(client, runner, make_job, tmp_path):
    made = [make_job(status=status, minutes_ago=index) for index, status in enumerate(("completed", "error", "stalled", "completed"))]
    chosen = [made[2], made[0], made[1]]
    response = client.post("/api/admin/history/export", json={"prompt_ids": [job.prompt_id for job in chosen] + ["missing"]})
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.headers["Content-Disposition"].startswith('attachment; filename="studio-history-')
    assert response.headers["X-Not-Found"] == "1"
    records = response.get_json()
    assert [record["prompt_id"] for record in records] == [job.prompt_id for job in made[:3]]  # newest first
    cli = runner.invoke(args=["history", "export"])
    assert [record for record in json.loads(cli.output) if record["prompt_id"] in {r["prompt_id"] for r in records}] == records
    before = [job.to_dict() for job in made[:3]]
    exported = tmp_path / "export.json"
    exported.write_bytes(response.get_data())
    Job.delete().where(Job.prompt_id.in_([job.prompt_id for job in made[:3]])).execute()
    result = runner.invoke(args=["history", "import", str(exported)])
    assert result.exit_code == 0, result.output
    assert "imported 3 (3 new, 0 updated), refused 0" in result.output
    assert [jobs.get_job(job.prompt_id).to_dict() for job in made[:3]] == before
    assert Job.select().count() == 4


def test_export_selected_takes_a_plain_form_from_this_site_only(app, make_job):
    job = make_job()
    client = app.test_client()
    same_origin = {"Sec-Fetch-Site": "same-origin", "Origin": "http://localhost"}
    response = client.post("/api/admin/history/export", data={"prompt_ids": [job.prompt_id]}, headers=same_origin)
    assert response.status_code == 200
    assert [record["prompt_id"] for record in response.get_json()] == [job.prompt_id]
    cross_site = {"Sec-Fetch-Site": "cross-site", "Origin": "http://evil.test"}
    refused = client.post("/api/admin/history/export", data={"prompt_ids": [job.prompt_id]}, headers=cross_site)
    assert refused.status_code == 403


@pytest.mark.parametrize("body", [{}, {"prompt_ids": "one"}, {"prompt_ids": [1, 2]}, []])
def test_export_selected_refuses_a_bad_body(client, body):
    response = client.post("/api/admin/history/export", json=body)
    assert response.status_code == 400
    assert "prompt_ids" in response.json["error"] or "body" in response.json["error"]


def test_the_page_offers_export_package_and_the_confirm_dialog_once_outside_the_list(client, make_job):
    job = make_job(status="error")
    html = client.get(f"/admin/history/jobs/{job.prompt_id}").get_data(as_text=True)
    soup = BeautifulSoup(html, "html.parser")
    assert len(soup.select("dialog#confirm-dialog")) == 1
    assert soup.select_one("#job-list dialog#confirm-dialog") is None
    assert not soup.select_one("dialog#confirm-dialog").has_attr("open")  # the server fills it when asked
    # Export selected submits the selection form (the cards' prompt_ids) to the export download.
    export = soup.select_one("#export-selected")
    assert export["form"] == "job-selection" and export["formaction"] == "/api/admin/history/export"
    assert soup.select_one("form#job-selection")
    assert soup.select_one(f"#job-list input.job-select[form=job-selection][name=prompt_ids][value='{job.prompt_id}']")
    overlay = soup.select_one("#job-overlay")
    assert overlay.select_one("a.download-package")["href"] == f"/api/admin/history/{job.prompt_id}/package"
    assert overlay.select_one("a.export-json")["href"] == f"/api/admin/history/{job.prompt_id}"
    assert "hx-on" not in html and "onclick" not in html


def test_a_second_retry_of_the_same_job_within_seconds_is_refused(client, make_job):
    original = make_job(status="error", files=0, params={"positive_prompt": "again", "seed": -1, "width": 64, "height": 64}, seeds={"seed": 7})
    first = client.post("/api/run/txt2img-example/execute", json={"retry_of": original.prompt_id})
    assert first.status_code == 202
    second = client.post("/api/run/txt2img-example/execute", json={"retry_of": original.prompt_id})
    assert second.status_code == 409
    assert second.json["prompt_id"] == first.json["prompt_id"]
    assert "retried" in second.json["error"]
    assert Job.select().where(Job.retry_of == original.prompt_id).count() == 1


def test_a_refused_retry_does_not_block_the_next_one(client, make_job):
    original = make_job(status="error", files=0, params={"positive_prompt": "again", "seed": 3}, seeds={"seed": 3})
    bad = client.post("/api/run/txt2img-example/execute", json={"params": {"nope": 1}, "retry_of": original.prompt_id})
    assert bad.status_code == 400
    good = client.post("/api/run/txt2img-example/execute", json={"retry_of": original.prompt_id})
    assert good.status_code == 202


def test_a_multipart_retry_like_the_pages_button_is_guarded_too(client, make_job):
    original = make_job(status="error", files=0, params={"positive_prompt": "again", "seed": 3}, seeds={"seed": 3})
    headers = {"Sec-Fetch-Site": "same-origin", "HX-Request": "true"}
    url = "/api/run/txt2img-example/execute"
    first = client.post(url, data={"retry_of": original.prompt_id}, content_type="multipart/form-data", headers=headers)
    assert first.status_code == 202
    second = client.post(url, data={"retry_of": original.prompt_id}, content_type="multipart/form-data", headers=headers)
    assert second.status_code == 409
    assert second.json["prompt_id"] == first.json["prompt_id"]


@pytest.mark.parametrize("output_dir", ["出力_20261128", "café-run", 'quote"semi;colon'])
def test_package_of_a_folder_named_outside_latin1_is_named_by_rfc6266_filename_star(client, make_job, output_dir):
    """Content-Disposition is Latin-1 on the wire: a record's odd output_dir (an older store, an import) must not break it."""
    from urllib.parse import unquote

    job = make_job(files=0, output_dir=output_dir)
    response, archive = package(client, job)
    disposition = response.headers["Content-Disposition"]
    disposition.encode("latin-1")
    ascii_part, _, exact = disposition.partition("; filename*=UTF-8''")
    assert ascii_part.startswith('attachment; filename="') and ascii_part.count('"') == 2
    assert unquote(exact) == f"{output_dir}.zip"
    assert archive.namelist() == ["job.json"]
