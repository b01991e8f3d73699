"""Retention: `flask history prune` (its dry run lists exactly what the real run removes) and STUDIO_RETENTION."""
from __future__ import annotations

import dataclasses
import datetime
import logging
import re

import pytest

from history import create_app
from history import retention
from history.config import ConfigError
from history.config import load_settings
from history.config import parse_retention
from history.db import connection
from history.db import release
from history.models import Job
from tests.conftest import wait_for

NOW = datetime.datetime.now(datetime.timezone.utc)
LISTED = re.compile(r"^(?:would remove|removed) (\S+) ", re.M)


def days_ago(days: float) -> datetime.datetime:
    return NOW - datetime.timedelta(days=days)


@pytest.fixture
def old_and_new(make_job):
    """Jobs of each status, old and new, with files; one old error job starred."""
    made = {
        "old_error": make_job("error", queued_at=days_ago(40)),
        "old_stalled": make_job("stalled", queued_at=days_ago(35)),
        "old_completed": make_job("completed", queued_at=days_ago(31)),
        "old_starred": make_job("error", queued_at=days_ago(50), starred=True),
        "new_error": make_job("error", queued_at=days_ago(2)),
        "new_completed": make_job("completed", queued_at=days_ago(1)),
        "old_other_workflow": make_job("error", queued_at=days_ago(60), workflow_id="scenes-example"),
    }
    return {name: job.prompt_id for name, job in made.items()}


def remaining() -> set[str]:
    return {prompt_id for (prompt_id,) in Job.select(Job.prompt_id).tuples()}


def test_the_dry_run_lists_exactly_what_the_real_run_removes_and_starred_jobs_survive_both(runner, old_and_new, settings):
    args = ["history", "prune", "--older-than", "30d", "--status", "error", "--status", "stalled"]
    dry = runner.invoke(args=args + ["--dry-run"])
    assert dry.exit_code == 0, dry.output
    would = set(LISTED.findall(dry.output))
    assert would == {old_and_new[name] for name in ("old_error", "old_stalled", "old_other_workflow")}
    assert "bytes" in dry.output and "dry run: nothing removed" in dry.output
    assert remaining() == set(old_and_new.values()), "a dry run removes nothing"

    real = runner.invoke(args=args)
    assert real.exit_code == 0, real.output
    assert set(LISTED.findall(real.output)) == would
    assert remaining() == set(old_and_new.values()) - would
    assert old_and_new["old_starred"] in remaining()
    folders = {path.name for path in (settings.output_dir / "comfyui-studio").iterdir()}
    assert len(folders) == len(remaining()), "each removed job's folder went with it"


def test_prune_narrows_to_a_workflow_and_takes_stars_only_when_told(runner, old_and_new):
    result = runner.invoke(args=["history", "prune", "--older-than", "30d", "--workflow", "txt2img-example", "--include-starred"])
    assert result.exit_code == 0, result.output
    assert set(LISTED.findall(result.output)) == {
        old_and_new[name] for name in ("old_error", "old_stalled", "old_completed", "old_starred")
    }
    assert old_and_new["old_other_workflow"] in remaining()


@pytest.mark.parametrize("args, message", [
    (["--older-than", "soon"], "is not an age"),
    (["--older-than", "7d", "--status", "running"], "use one of completed, error, stalled"),
    (["--older-than", "7d", "--workflow", "../x"], "is not a workflow id"),
])
def test_prune_refuses_what_it_cannot_read(runner, args, message):
    result = runner.invoke(args=["history", "prune", *args])
    assert result.exit_code == 2
    assert message in result.output


def test_studio_retention_removes_by_rule_keeps_stars_and_announces_each(app, old_and_new, caplog):
    settings = dataclasses.replace(app.config["STUDIO"], retention=parse_retention("error=30d,completed=7d"))
    bus = app.extensions["studio"].bus
    heard = bus.subscribe()
    with caplog.at_level(logging.INFO, logger="history.retention"):
        report = retention.apply_settings(settings, bus)
    expected = {old_and_new[name] for name in ("old_error", "old_other_workflow", "old_completed")}
    assert set(report.deleted) == expected
    assert old_and_new["old_starred"] in remaining() and old_and_new["old_stalled"] in remaining()
    events = [heard.get(timeout=2) for _ in expected]
    assert all('"job.deleted"' in event for event in events)
    assert "retention removed 3 jobs" in caplog.text


@pytest.mark.parametrize("raw", ["error", "running=7d", "error=7", "completed=-1d"])
def test_a_retention_rule_that_cannot_work_stops_the_start(tmp_path, raw):
    with pytest.raises(ConfigError, match="STUDIO_RETENTION"):
        load_settings(overrides={"STUDIO_DATA_DIR": str(tmp_path), "STUDIO_RETENTION": raw})


def test_the_server_applies_studio_retention_once_it_starts(app_config, tmp_path):
    server = create_app({**app_config, "STUDIO_RETENTION": "error=30d"})
    try:
        with connection():
            Job.insert(prompt_id="old-error", workflow_id="txt2img-example", status="error", queued_at=days_ago(40), bytes=0).execute()
            Job.insert(prompt_id="new-error", workflow_id="txt2img-example", status="error", queued_at=days_ago(1), bytes=0).execute()
        server.test_client().get("/admin/history")  # the first request starts the background work

        def pruned():
            with connection():
                return remaining() == {"new-error"}

        wait_for(pruned, what="the old error job removed by STUDIO_RETENTION")
    finally:
        server.extensions["studio"].stop()
        release()
