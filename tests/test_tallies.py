"""The tallies behind the storage figures stay equal to a count of the job table through every kind of write."""
from __future__ import annotations

import datetime

from peewee import SQL
from peewee import fn

from history import create_app
from history import db as history_db
from history import jobs
from history import retention
from history import tallies
from history.db import database
from history.models import Job
from history.models import JobTally

NOW = datetime.datetime.now(datetime.timezone.utc)


def counted() -> dict:
    """(day, status, workflow) -> (jobs, bytes, measured), grouped over the job table itself (the truth)."""
    rows = (
        Job.select(fn.date(Job.queued_at), Job.status, Job.workflow_id, fn.COUNT(SQL("*")), fn.SUM(Job.bytes), fn.COUNT(Job.bytes))
        .group_by(fn.date(Job.queued_at), Job.status, Job.workflow_id)
        .tuples()
    )
    return {(str(day)[:10], status, workflow): (count, int(size or 0), measured) for day, status, workflow, count, size, measured in rows}


def tallied() -> dict:
    """The same, as the tallies hold it (keys whose jobs all went are left out, as a count leaves them)."""
    rows = JobTally.select().where(JobTally.jobs != 0).tuples()
    return {(str(day)[:10], status, workflow): (count, size, measured) for day, status, workflow, count, size, measured in rows}


def test_every_kind_of_write_keeps_the_tallies_equal_to_a_count(client, make_job, settings, db):
    old = [make_job("error", queued_at=NOW - datetime.timedelta(days=40 + day)) for day in range(3)]
    kept = make_job("completed", queued_at=NOW - datetime.timedelta(days=45), starred=True)
    recent = [make_job(status, workflow_id=workflow) for status, workflow in
              [("completed", "txt2img-example"), ("stalled", "scenes-example"), ("error", "scenes-example")]]
    unmeasured = make_job("completed", bytes=None)
    assert tallied() == counted()

    # Lifecycle writes: queued, running, then ended with its size; a progress write moves nothing.
    queued = jobs.record_queued(prompt_id="lifecycle-1", workflow_id="txt2img-example", params={})
    jobs.update_active(queued.prompt_id, lambda job: {"status": "running", "started_at": NOW})
    jobs.update_active(queued.prompt_id, lambda job: {"params": {"progress": 3}})
    assert tallied() == counted()
    jobs.update_active(queued.prompt_id, lambda job: {"status": "completed", "finished_at": NOW, "bytes": 1234})
    jobs.discard_queued(jobs.record_queued(prompt_id="lifecycle-2", workflow_id="txt2img-example").prompt_id)
    jobs.star_jobs([recent[0].prompt_id], True)
    Job.update(bytes=99).where(Job.prompt_id == unmeasured.prompt_id).execute()
    assert tallied() == counted()

    # An import: one record updated in place (moved to another day and status), one new.
    moved = recent[1].to_dict() | {"status": "error", "queued_at": (NOW - datetime.timedelta(days=3)).isoformat(), "bytes": 7}
    fresh = recent[2].to_dict() | {"prompt_id": "imported-1", "workflow_id": "imported-flow", "output_dir": None, "outputs": []}
    report = jobs.import_records([moved, fresh])
    assert (report.created, report.updated) == (1, 1)
    assert tallied() == counted()

    # Deletes: by id, over a filter, and by a retention rule (starred jobs stay).
    jobs.delete_jobs([recent[0].prompt_id], settings.output_dir)
    assert client.post("/api/admin/history/delete", json={"filter": {"workflow_id": "imported-flow"}, "expect": 1}).status_code == 200
    planned = retention.plan([retention.Rule(older_than=30 * 86400.0)], settings.output_dir)
    assert {job.prompt_id for job, _size in planned} == {job.prompt_id for job in old}
    retention.prune(planned, settings.output_dir)
    assert tallied() == counted()
    assert Job.get_or_none(Job.prompt_id == kept.prompt_id) is not None

    stats = jobs.storage_stats()
    assert stats["total"]["jobs"] == Job.select().count() and stats["total"]["unmeasured"] == 0
    assert jobs.count_by_status() == {"completed": 3, "error": 2}


def test_a_store_from_before_the_tallies_gets_them_filled_from_its_jobs(app_config, make_job, db):
    for day in range(5):
        make_job(("completed", "error", "stalled")[day % 3], queued_at=NOW - datetime.timedelta(days=day), workflow_id=f"flow-{day % 2}")
    before = jobs.storage_stats(NOW)
    # The store as it was one step before: no tallies, no triggers, and schema_version saying so.
    for trigger in ("job_tally_insert", "job_tally_update", "job_tally_delete"):
        database.execute_sql(f"DROP TRIGGER IF EXISTS {trigger}" + ("" if history_db.is_sqlite() else " ON job"))
    database.execute_sql(f"DROP TABLE {tallies.TABLE}")
    step = next(step for step in history_db.migration_steps() if step.name.endswith("_tallies"))
    database.execute_sql(f"DELETE FROM {history_db.MIGRATION_TABLE} WHERE name = %s" % database.param, (step.name,))
    database.execute_sql("DELETE FROM schema_version WHERE version >= %d" % step.idx)
    database.close()
    second = create_app(app_config)
    try:
        with history_db.connection():
            assert tallied() == counted() and len(counted()) == 5
            assert jobs.storage_stats(NOW) == before
    finally:
        second.extensions["studio"].stop()


def test_a_bulk_load_leaves_the_search_index_and_tallies_as_the_triggers_keep_them(make_job, db):
    from bench.fill import fill_jobs

    made = [make_job("completed"), make_job("error", workflow_id="scenes-example")]
    schema = database.get_indexes("job")
    fill_jobs(300, start=10)
    assert tallied() == counted() and sum(count for count, _size, _measured in counted().values()) == 302
    assert sorted(index.name for index in database.get_indexes("job")) == sorted(index.name for index in schema)
    for needle in ("number 7", "lighthouse", made[1].prompt_id[:13]):
        found = {prompt_id for (prompt_id,) in Job.select(Job.prompt_id).where(jobs.text_matches(needle)).tuples()}  # the index
        expected = {job.prompt_id for job in Job.select() if needle.lower() in " ".join(
            [job.workflow_name, job.prompt_id, *(job.params.get(key, "") for key in ("positive_prompt", "negative_prompt")),
             *(scene["prompt"] for scene in job.params.get("scenes", []))]).lower()}
        assert found == expected and found
