"""The JSON API: shapes, order, filters, paging, delete with real files, and errors."""
from __future__ import annotations

import datetime
import os
import shutil

import pytest

from history.models import Job
from tests.conftest import BASE_TIME
from tests.conftest import unremovable
from tests.conftest import write_image

RECORD_KEYS = [
    "prompt_id", "workflow_id", "workflow_name", "status", "queued_at", "started_at", "finished_at",
    "duration", "params", "seeds", "input_image", "output", "outputs", "starred", "bytes", "output_dir", "error", "retry_of",
    "source", "comfyui_server",
]


def ids(response):
    return [record["prompt_id"] for record in response.json]


def test_record_has_every_field_in_order(client, make_job):
    job = make_job(files=2)
    record = client.get("/api/admin/history").json[0]
    assert list(record) == RECORD_KEYS
    assert record["prompt_id"] == job.prompt_id
    assert record["queued_at"].endswith("+00:00")
    assert record["duration"] == 40.0
    assert record["output"] == record["outputs"][0]
    assert record["outputs"][1]["subfolder"] == f"comfyui-studio/{job.output_dir}"


def test_newest_first_with_ties_broken_by_id(client, make_job):
    same_time = BASE_TIME - datetime.timedelta(hours=1)
    tied = [make_job(prompt_id=f"tie-{letter}", queued_at=same_time, files=0) for letter in "bca"]
    newest = make_job(minutes_ago=0, files=0)
    assert ids(client.get("/api/admin/history")) == [newest.prompt_id, "tie-c", "tie-b", "tie-a"]
    assert len(tied) == 3


def test_history_hides_queued_and_running_by_default(client, make_job):
    done = make_job(status="completed", files=0)
    failed = make_job(status="error", files=0)
    stalled = make_job(status="stalled", files=0)
    make_job(status="queued", files=0)
    make_job(status="running", files=0)
    assert set(ids(client.get("/api/admin/history"))) == {done.prompt_id, failed.prompt_id, stalled.prompt_id}


@pytest.mark.parametrize(
    "query, expected",
    [
        ("status=error", {"err"}),
        ("status=error&status=stalled", {"err", "stall"}),
        ("status=error,stalled", {"err", "stall"}),
        ("status=failed", {"err"}),
        ("status=running", {"run"}),
        ("workflow_id=scenes-example", {"scene"}),
        ("q=LIGHTHOUSE", {"done", "err", "stall"}),
        ("q=lighthouse&status=running", {"run"}),
        ("q=foggy%20harbour", {"scene"}),
        ("q=Dynamic", {"scene"}),
        ("q=stal", {"stall"}),
        ("q=100%25", set()),
    ],
)
def test_filters(client, make_job, query, expected):
    make_job(prompt_id="done", files=0)
    make_job(prompt_id="err", status="error", files=0)
    make_job(prompt_id="stall", status="stalled", files=0)
    make_job(prompt_id="run", status="running", files=0)
    make_job(
        prompt_id="scene",
        files=0,
        workflow_id="scenes-example",
        workflow_name="Dynamic scenes (example)",
        params={"scenes": [{"prompt": "a foggy harbour", "duration": 2, "seed": 7}]},
    )
    response = client.get(f"/api/admin/history?{query}")
    assert response.status_code == 200
    assert set(ids(response)) == expected


def test_paging_with_link_header_visits_every_job_once(client, make_job):
    made = [make_job(files=0).prompt_id for _ in range(25)]
    seen = []
    url = "/api/admin/history?limit=10&status=completed"
    pages = 0
    while url:
        response = client.get(url)
        assert response.status_code == 200
        seen += ids(response)
        pages += 1
        link = response.headers.get("Link")
        url = link[1:link.index(">")] if link else None
        if url:
            assert 'rel="next"' in link and "status=completed" in url and "limit=10" in url
    assert pages == 3
    assert seen == made  # made newest first: each job one minute older than the last


def test_paging_survives_a_deleted_cursor_job(client, make_job):
    made = [make_job(files=0).prompt_id for _ in range(6)]
    first = client.get("/api/admin/history?limit=3")
    link = first.headers["Link"]
    Job.delete().where(Job.prompt_id == made[2]).execute()
    second = client.get(link[1:link.index(">")])
    assert ids(second) == made[3:]


@pytest.mark.parametrize(
    "query, message",
    [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=-5", "limit"),
        ("limit=abc", "limit"),
        ("status=done", "unknown status"),
        ("before=yesterday", "cursor"),
        ("before=20261128T120000.000000Z~../../etc", "cursor"),
        ("workflow_id=../x", "workflow_id"),
        ("q=" + "x" * 201, "q is longer"),
        ("q=a%00b", "NUL"),
    ],
)
def test_invalid_query_is_400_json(client, query, message):
    response = client.get(f"/api/admin/history?{query}")
    assert response.status_code == 400
    assert message in response.json["error"]


def test_one_record_and_unknown_id(client, make_job):
    job = make_job()
    assert client.get(f"/api/admin/history/{job.prompt_id}").json["prompt_id"] == job.prompt_id
    missing = client.get("/api/admin/history/no-such-job")
    assert missing.status_code == 404
    assert "no-such-job" in missing.json["error"]


def test_api_errors_are_json(client):
    assert client.get("/api/admin/nothing-here").json["error"]
    response = client.get("/api/admin/history/delete")
    assert response.status_code in (404, 405)
    assert "error" in response.json
    wrong_method = client.delete("/api/admin/history")
    assert wrong_method.status_code == 405
    assert "error" in wrong_method.json


def folder_of(settings, job):
    return settings.output_dir / "comfyui-studio" / job.output_dir


def test_delete_removes_folders_and_records(client, make_job, settings):
    jobs = [make_job(files=3) for _ in range(4)]
    keep = make_job(files=1)
    expected_bytes = sum(p.stat().st_size for job in jobs[:3] for p in folder_of(settings, job).iterdir())
    response = client.post("/api/admin/history/delete", json={"prompt_ids": [job.prompt_id for job in jobs[:3]]})
    assert response.status_code == 200
    body = response.json
    assert body["deleted"] == [job.prompt_id for job in jobs[:3]]
    assert body["files_removed"] == 9
    assert body["bytes_freed"] == expected_bytes
    assert body["not_found"] == [] and body["failed"] == []
    for job in jobs[:3]:
        assert not folder_of(settings, job).exists()
        assert client.get(f"/api/admin/history/{job.prompt_id}").status_code == 404
    assert folder_of(settings, jobs[3]).is_dir()
    assert folder_of(settings, keep).is_dir()
    assert not list((settings.output_dir / "comfyui-studio").glob(".deleting-*"))


def test_delete_batch_of_100(client, make_job, settings):
    jobs = [make_job(files=1) for _ in range(100)]
    others = [make_job(files=1) for _ in range(3)]
    response = client.post("/api/admin/history/delete", json={"prompt_ids": [job.prompt_id for job in jobs]})
    assert len(response.json["deleted"]) == 100
    assert response.json["files_removed"] == 100
    remaining = sorted(p.name for p in (settings.output_dir / "comfyui-studio").iterdir())
    assert remaining == sorted(job.output_dir for job in others)
    assert Job.select().count() == 3


def test_delete_reports_unknown_and_folds_duplicates(client, make_job):
    job = make_job(files=1)
    response = client.post("/api/admin/history/delete", json={"prompt_ids": [job.prompt_id, "ghost", job.prompt_id, "ghost"]})
    assert response.json["deleted"] == [job.prompt_id]
    assert response.json["not_found"] == ["ghost"]


def test_delete_with_files_already_gone(client, make_job, settings):
    job = make_job(files=2)
    shutil.rmtree(folder_of(settings, job))
    response = client.post("/api/admin/history/delete", json={"prompt_ids": [job.prompt_id]})
    assert response.json["deleted"] == [job.prompt_id]
    assert response.json["files_removed"] == 0


@pytest.mark.parametrize("status", ["queued", "running"])
def test_delete_refuses_active_jobs(client, make_job, settings, status):
    job = make_job(status=status, files=1)
    response = client.post("/api/admin/history/delete", json={"prompt_ids": [job.prompt_id]})
    assert response.json["deleted"] == []
    assert response.json["failed"][0]["prompt_id"] == job.prompt_id
    assert response.json["failed"][0]["status"] == 409
    assert folder_of(settings, job).is_dir()
    assert Job.get_or_none(Job.prompt_id == job.prompt_id) is not None


def test_delete_keeps_record_and_folder_when_the_folder_cannot_be_moved_aside(client, make_job, settings, monkeypatch):
    # Root ignores folder permissions here, so a read-only comfyui-studio/ is simulated at the one call that moves it.
    job = make_job(files=2)

    def refuse(source, target):
        raise PermissionError(13, "Permission denied", str(source))

    monkeypatch.setattr("history.files.os.replace", refuse)
    response = client.post("/api/admin/history/delete", json={"prompt_ids": [job.prompt_id]})
    failed = response.json["failed"]
    assert failed and failed[0]["prompt_id"] == job.prompt_id
    assert "Permission denied" in failed[0]["error"]
    assert Job.get_or_none(Job.prompt_id == job.prompt_id) is not None
    assert len(list(folder_of(settings, job).iterdir())) == 2


def test_a_read_only_subfolder_leaves_its_files_pending_and_the_job_deleted(client, make_job, settings):
    job = make_job(files=1)
    locked = folder_of(settings, job) / "locked"
    write_image(locked / "kept.png")
    with unremovable(locked, settings.output_dir):
        response = client.post("/api/admin/history/delete", json={"prompt_ids": [job.prompt_id]})
        assert response.status_code == 200
        assert response.json["deleted"] == [job.prompt_id]
        assert response.json["pending"] == [{"prompt_id": job.prompt_id, "files": ["locked/kept.png"], "count": 1}]
        assert Job.get_or_none(Job.prompt_id == job.prompt_id) is None
        assert not folder_of(settings, job).exists()  # not listed anywhere: only the hidden tombstone holds it
    from history import jobs

    assert jobs.finish_interrupted_deletes(settings.output_dir) == 1  # the start-up sweep, once it can
    assert sorted(p.name for p in (settings.output_dir / "comfyui-studio").iterdir()) == []


@pytest.mark.parametrize(
    "output_dir",
    ["../outside", "../../etc", "/etc", "a/../../outside", "..", ".", "a\\..\\b", "%2e%2e", "sub/dir"],
)
def test_delete_refuses_escaping_output_dir(client, make_job, settings, tmp_path, output_dir):
    victim = tmp_path / "data" / "output" / "outside" / "keep.png"
    write_image(victim)
    sentinel = tmp_path / "data" / "sentinel.txt"
    sentinel.write_text("precious")
    job = make_job(files=0, output_dir=output_dir)
    response = client.post("/api/admin/history/delete", json={"prompt_ids": [job.prompt_id]})
    assert response.status_code == 200
    assert response.json["deleted"] == []
    assert response.json["failed"][0]["prompt_id"] == job.prompt_id
    assert victim.exists() and sentinel.read_text() == "precious"


@pytest.mark.sqlite_only  # PostgreSQL cannot store a NUL byte, so only SQLite can hold such a record.
def test_delete_refuses_output_dir_with_nul(client, make_job, tmp_path):
    job = make_job(files=0, output_dir="outside\x00")
    response = client.post("/api/admin/history/delete", json={"prompt_ids": [job.prompt_id]})
    assert response.json["failed"][0]["prompt_id"] == job.prompt_id
    assert "NUL" in response.json["failed"][0]["error"]


def test_delete_refuses_symlinked_folder_leading_out(client, make_job, settings, tmp_path):
    outside = tmp_path / "elsewhere"
    write_image(outside / "keep.png")
    job = make_job(files=0, output_dir="20261128_120000_abcdef")
    studio = settings.output_dir / "comfyui-studio"
    studio.mkdir(parents=True, exist_ok=True)
    (studio / job.output_dir).symlink_to(outside, target_is_directory=True)
    response = client.post("/api/admin/history/delete", json={"prompt_ids": [job.prompt_id]})
    assert response.json["deleted"] == []
    assert (outside / "keep.png").exists()


def test_delete_leaves_a_folder_another_record_names(client, make_job, settings):
    first = make_job(files=1)
    second = make_job(files=0, output_dir=first.output_dir)
    response = client.post("/api/admin/history/delete", json={"prompt_ids": [second.prompt_id]})
    assert response.json["deleted"] == [second.prompt_id]
    assert folder_of(settings, first).is_dir()


@pytest.mark.parametrize(
    "body, status",
    [
        (b"not json", 400),
        (b"[]", 400),
        (b'{"ids": []}', 400),
        (b'{"prompt_ids": "abc"}', 400),
        (b'{"prompt_ids": [1, 2]}', 400),
        (b'{"prompt_ids": [null]}', 400),
        (b'{"prompt_ids": [["a"]]}', 400),
        (b'"prompt_ids"', 400),
    ],
)
def test_delete_rejects_malformed_bodies(client, body, status):
    response = client.post("/api/admin/history/delete", data=body, content_type="application/json")
    assert response.status_code == status
    assert response.json["error"]


def test_delete_rejects_more_than_10000_ids(client):
    response = client.post("/api/admin/history/delete", json={"prompt_ids": [f"id-{n}" for n in range(10_001)]})
    assert response.status_code == 413
    assert "10000" in response.json["error"]


def test_deleting_a_record_whose_folder_is_a_link_to_another_jobs_folder_keeps_that_jobs_files(client, make_job, settings):
    """An imported record's output_dir may be a symlink to another job's folder: removing it never follows the link."""
    real = make_job(files=2)
    studio = settings.output_dir / "comfyui-studio"
    (studio / "20261128_999999_alias").symlink_to(studio / real.output_dir, target_is_directory=True)
    alias = make_job(files=0, output_dir="20261128_999999_alias")
    response = client.post("/api/admin/history/delete", json={"prompt_ids": [alias.prompt_id]})
    assert response.json["deleted"] == [alias.prompt_id] and response.json["files_removed"] == 0
    assert len(list((studio / real.output_dir).iterdir())) == 2
    assert Job.get_or_none(Job.prompt_id == real.prompt_id) is not None


def test_deleting_a_link_no_record_shares_removes_the_link_alone(client, make_job, settings, tmp_path):
    studio = settings.output_dir / "comfyui-studio"
    target = studio / "20261128_000000_unrecorded"
    write_image(target / "keep.png")
    (studio / "20261128_999998_alias").symlink_to(target, target_is_directory=True)
    alias = make_job(files=0, output_dir="20261128_999998_alias")
    usage = client.post("/api/admin/history/usage", json={"prompt_ids": [alias.prompt_id]}).json
    assert usage == {"jobs": 1, "files": 0, "bytes": 0}
    response = client.post("/api/admin/history/delete", json={"prompt_ids": [alias.prompt_id]})
    assert response.json["deleted"] == [alias.prompt_id]
    assert not os.path.lexists(studio / "20261128_999998_alias")
    assert (target / "keep.png").is_file()


@pytest.mark.sqlite_only  # SQLite's write lock: another process in BEGIN IMMEDIATE past the busy timeout
@pytest.mark.parametrize("app_config", [{"STUDIO_BUSY_SECONDS": "0.1"}], indirect=True)
def test_a_store_locked_past_the_busy_timeout_is_503_with_retry_after_and_nothing_changes(client, make_job, settings, db):
    import sqlite3

    jobs = [make_job(files=1) for _ in range(3)]
    writer = sqlite3.connect(settings.data_dir / "studio.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        db.close()
        writes = [
            ("/api/admin/history/delete", {"prompt_ids": [job.prompt_id for job in jobs]}),
            ("/api/run/txt2img-example/execute", {"params": {}}),
        ]
        for url, body in writes:
            response = client.post(url, json=body)
            assert response.status_code == 503, (url, response.status_code)
            assert response.headers["Retry-After"] and "busy" in response.json["error"]
        assert response.json.get("deleted") is None
    finally:
        writer.rollback()
        writer.close()
    db.connect(reuse_if_open=True)
    assert Job.select().count() == 3
    for job in jobs:
        assert folder_of(settings, job).is_dir() and len(list(folder_of(settings, job).iterdir())) == 1
