"""Stars, and bulk actions over a filter: delete, retry and export re-count at confirm time (409 when it changed)."""
from __future__ import annotations

import datetime

import pytest

from history import jobs
from history.models import Job
from tests.conftest import BASE_TIME


def iso(moment: datetime.datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def test_a_star_is_kept_filters_the_list_and_unstars(client, make_job):
    starred, other = make_job(), make_job()
    answer = client.post("/api/admin/history/star", json={"prompt_ids": [starred.prompt_id, "nope"], "starred": True})
    assert answer.status_code == 200
    assert answer.json == {"updated": [starred.prompt_id], "not_found": ["nope"]}
    assert [job["prompt_id"] for job in client.get("/api/admin/history?starred=1").json] == [starred.prompt_id]
    assert [job["prompt_id"] for job in client.get("/api/admin/history?starred=0").json] == [other.prompt_id]
    assert client.get(f"/api/admin/history/{starred.prompt_id}").json["starred"] is True
    client.post("/api/admin/history/star", json={"prompt_ids": [starred.prompt_id], "starred": False})
    assert client.get("/api/admin/history?starred=1").json == []


@pytest.mark.parametrize("body, message", [
    ({"prompt_ids": ["a"]}, "starred"),
    ({"prompt_ids": ["a"], "starred": "yes"}, "starred"),
    ({"prompt_ids": "a", "starred": True}, "prompt_ids"),
])
def test_a_star_request_that_cannot_work_is_refused(client, body, message):
    answer = client.post("/api/admin/history/star", json=body)
    assert answer.status_code == 400
    assert message in answer.json["error"]


def test_delete_over_a_filter_takes_what_matched_before_the_selection_keeps_stars_and_files_of_others(client, make_job, settings):
    matching = [make_job("error", minutes_ago=10 + index) for index in range(5)]
    starred = make_job("error", minutes_ago=30, starred=True)
    completed = make_job("completed", minutes_ago=31)
    selection_made = BASE_TIME - datetime.timedelta(minutes=5)
    arrived_after = make_job("error", minutes_ago=1)
    body = {"filter": {"status": ["error"], "queued_before": iso(selection_made)}, "expect": 5}
    usage = client.post("/api/admin/history/usage", json={"filter": body["filter"]}).json
    assert usage["jobs"] == 5 and usage["starred"] == 1 and usage["bytes"] == sum(job.bytes for job in matching)

    answer = client.post("/api/admin/history/delete", json=body)
    assert answer.status_code == 200
    assert sorted(answer.json["deleted"]) == sorted(job.prompt_id for job in matching)
    assert answer.json["files_removed"] == 5 and answer.json["bytes_freed"] == usage["bytes"]
    left = {job.prompt_id for job in Job.select(Job.prompt_id)}
    assert left == {starred.prompt_id, completed.prompt_id, arrived_after.prompt_id}
    folders = {path.name for path in (settings.output_dir / "comfyui-studio").iterdir()}
    assert folders == {job.output_dir for job in (starred, completed, arrived_after)}


@pytest.mark.parametrize("expect, status", [(2.0, 200), (2.5, 400), (-1.0, 400), (True, 400)])
def test_expect_is_a_whole_number_whichever_way_json_writes_it(client, make_job, expect, status):
    for _ in range(2):
        make_job("error")
    answer = client.post("/api/admin/history/export", json={"filter": {"status": "error"}, "expect": expect})
    assert answer.status_code == status, answer.json if status == 400 else None
    if status == 400:
        assert "expect" in answer.json["error"]
    else:
        assert len(answer.json) == 2


def test_a_stale_expect_changes_nothing_and_answers_the_new_count(client, make_job):
    made = [make_job("error") for _ in range(3)]
    for path, body in (
        ("/api/admin/history/delete", {"filter": {"status": "error"}, "expect": 2}),
        ("/api/admin/history/retry", {"filter": {"status": "error"}, "expect": 4}),
        ("/api/admin/history/export", {"filter": {"status": "error"}, "expect": 1}),
    ):
        answer = client.post(path, json=body)
        assert answer.status_code == 409, path
        assert answer.json["count"] == 3 and answer.json["expect"] == body["expect"]
        assert "nothing was changed" in answer.json["error"]
    assert Job.select().count() == 3
    assert not Job.select().where(Job.retry_of.is_null(False)).exists()
    assert {job.prompt_id for job in Job.select()} == {job.prompt_id for job in made}


def test_include_starred_takes_stars_and_the_count_includes_them(client, make_job):
    make_job("completed", starred=True)
    make_job("completed")
    assert client.post("/api/admin/history/delete", json={"filter": {}, "expect": 2}).status_code == 409
    answer = client.post("/api/admin/history/delete", json={"filter": {}, "expect": 2, "include_starred": True})
    assert len(answer.json["deleted"]) == 2


@pytest.mark.parametrize("body, message", [
    ({"filter": {"status": ["error"]}}, "expect"),
    ({"filter": {"status": ["error"]}, "expect": -1}, "expect"),
    ({"filter": {"status": ["error"]}, "expect": True}, "expect"),
    ({"filter": {"status": ["error"]}, "expect": 182674288030691528540160}, "expect"),
    ({"filter": {"status": ["lost"]}, "expect": 1}, "unknown status"),
    ({"filter": {"queued_before": "yesterday"}, "expect": 1}, "queued_before"),
    ({"filter": {"cause": "../x"}, "expect": 1}, "cause"),
    ({"filter": {"colour": "red"}, "expect": 1}, "unknown field"),
    ({"filter": [], "expect": 1}, "filter"),
    ({"filter": {}, "expect": 1, "include_starred": "yes"}, "include_starred"),
    ({"filter": {}, "expect": 1, "everything": True}, "unknown field"),
])
def test_a_bulk_request_that_cannot_work_is_refused_and_loses_nothing(client, make_job, body, message):
    make_job("error")
    answer = client.post("/api/admin/history/delete", json=body)
    assert answer.status_code == 400
    assert message in answer.json["error"]
    assert Job.select().count() == 1


def test_retry_over_a_filter_makes_one_job_each_and_a_second_one_makes_none(client, make_job):
    failed = [make_job("error", minutes_ago=index) for index in range(2)]
    make_job("completed")
    body = {"filter": {"status": ["error", "stalled"]}, "expect": 2}
    answer = client.post("/api/admin/history/retry", json=body)
    assert answer.status_code == 200
    assert sorted(item["retry_of"] for item in answer.json["queued"]) == sorted(job.prompt_id for job in failed)
    assert answer.json["failed"] == []
    again = client.post("/api/admin/history/retry", json={"prompt_ids": [job.prompt_id for job in failed]})
    assert again.json["queued"] == []
    assert {item["status"] for item in again.json["failed"]} == {409}
    assert Job.select().where(Job.retry_of.in_([job.prompt_id for job in failed])).count() == 2


def test_retry_refuses_jobs_that_did_not_fail(client, make_job):
    done = make_job("completed")
    answer = client.post("/api/admin/history/retry", json={"prompt_ids": [done.prompt_id, "unknown"]})
    assert answer.json["queued"] == []
    assert {(item["prompt_id"], item["status"]) for item in answer.json["failed"]} == {(done.prompt_id, 409), ("unknown", 404)}


def test_export_over_a_filter_by_the_pages_form_carries_stars_and_bytes(client, make_job):
    starred = make_job("completed", starred=True, minutes_ago=3)
    make_job("error", minutes_ago=2)
    form = {"status": "completed", "queued_before": iso(BASE_TIME), "expect": "1"}
    answer = client.post("/api/admin/history/export", data=form)
    assert answer.status_code == 200
    records = answer.get_json(force=True)
    assert [record["prompt_id"] for record in records] == [starred.prompt_id]
    assert records[0]["starred"] is True and records[0]["bytes"] == starred.bytes > 0


def test_a_delete_of_several_thousand_jobs_goes_in_batches_and_misses_none(client, make_job, monkeypatch):
    monkeypatch.setattr(jobs, "DELETE_BATCH", 7)
    made = [make_job("completed", files=1 if index % 3 else 0) for index in range(40)]
    answer = client.post("/api/admin/history/delete", json={"filter": {}, "expect": 40})
    assert sorted(answer.json["deleted"]) == sorted(job.prompt_id for job in made)
    assert answer.json["files_removed"] == sum(1 for index in range(40) if index % 3)
    assert Job.select().count() == 0


def test_export_selected_with_select_all_matching_exports_the_filter(client, make_job):
    chosen = [make_job("error", minutes_ago=index + 1) for index in range(3)]
    make_job("completed")
    form = {"prompt_ids": [chosen[0].prompt_id], "all_status": "error", "all_queued_before": iso(BASE_TIME), "all_expect": "3"}
    answer = client.post("/api/admin/history/export", data=form)
    assert sorted(record["prompt_id"] for record in answer.get_json(force=True)) == sorted(job.prompt_id for job in chosen)
