"""Failures grouped by cause, and storage at a glance (counts and bytes from the store)."""
from __future__ import annotations

import datetime

import pytest

from history import jobs

OOM = "node KSampler (#3): RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
OOM_AGAIN = "node KSampler (#12): RuntimeError: CUDA out of memory. Tried to allocate 1.50 GiB"


@pytest.mark.parametrize("first, second", [
    (OOM, OOM_AGAIN),
    ("node LoadImage (#7): FileNotFoundError: /data/input/a1.png", "node LoadImage (#9): FileNotFoundError: C:\\in\\b.png"),
    ("prompt 0b3c9e2a-1f4d-4c1e-9a77-3d2f1e0c9b8a lost", "prompt 5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a8b lost"),
])
def test_messages_that_differ_in_numbers_paths_or_ids_are_one_cause(first, second):
    assert jobs.failure_cause(first) == jobs.failure_cause(second)


def test_different_exceptions_are_different_causes():
    assert jobs.failure_cause(OOM) != jobs.failure_cause("node KSampler (#3): ValueError: bad sampler name")


def test_failures_are_grouped_by_cause_with_counts_times_and_workflows(client, make_job):
    newest = make_job("error", minutes_ago=1, error=OOM)
    oldest = make_job("stalled", minutes_ago=9, error=OOM_AGAIN, workflow_id="scenes-example")
    other = make_job("error", minutes_ago=5, error="node VAEDecode (#8): ValueError: bad shape")
    make_job("completed")
    groups = client.get("/api/admin/history/failures").json
    assert [group["count"] for group in groups] == [2, 1]
    oom = groups[0]
    assert (oom["node"], oom["exception"]) == ("KSampler", "RuntimeError")
    assert oom["example"] == OOM and oom["newest"] == newest.to_dict()["queued_at"] and oom["oldest"] == oldest.to_dict()["queued_at"]
    assert oom["workflows"] == {"txt2img-example": 1, "scenes-example": 1}
    listed = client.get(f"/api/admin/history?status=error,stalled&cause={oom['cause']}").json
    assert {job["prompt_id"] for job in listed} == {newest.prompt_id, oldest.prompt_id}
    assert other.prompt_id not in {job["prompt_id"] for job in listed}


def test_stats_count_and_sum_bytes_by_status_workflow_and_day(client, make_job):
    today = datetime.datetime.now(datetime.timezone.utc).replace(hour=12, minute=0, second=0, microsecond=0)
    done = make_job("completed", queued_at=today)
    make_job("error", queued_at=today - datetime.timedelta(days=1), workflow_id="scenes-example")
    ancient = make_job("completed", queued_at=today - datetime.timedelta(days=90), files=2)
    stats = client.get("/api/admin/history/stats").json
    assert stats["total"]["jobs"] == 3 and stats["total"]["unmeasured"] == 0
    completed = next(entry for entry in stats["by_status"] if entry["status"] == "completed")
    assert completed == {"status": "completed", "jobs": 2, "bytes": done.bytes + ancient.bytes}
    assert {entry["workflow_id"]: entry["jobs"] for entry in stats["by_workflow"]} == {"txt2img-example": 2, "scenes-example": 1}
    assert len(stats["by_day"]) == 30 and stats["by_day"][-1]["day"] == today.date().isoformat()
    assert stats["by_day"][-1]["jobs"] == {"completed": 1} and stats["by_day"][-1]["bytes"] == done.bytes
    assert stats["by_day"][-2]["jobs"] == {"error": 1}
    assert stats["oldest"]["prompt_id"] == ancient.prompt_id
