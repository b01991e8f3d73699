"""The store: SQLite settings, UTC times, and upgrades that keep data."""
from __future__ import annotations

import datetime
import shutil
import textwrap
import threading

import pytest
from peewee import TextField

from history import create_app
from history import db as history_db
from history.db import database
from history.migrations import DIRECTORY as MIGRATIONS_DIRECTORY
from history.models import Job


@pytest.mark.sqlite_only
def test_sqlite_runs_in_wal_with_a_busy_timeout(app, db):
    assert database.execute_sql("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert database.obj._lock_type == "IMMEDIATE"
    assert database.execute_sql("PRAGMA busy_timeout").fetchone()[0] >= 5000


def test_times_are_stored_in_utc_and_read_back_aware(make_job, db):
    local = datetime.timezone(datetime.timedelta(hours=5, minutes=30))
    queued = datetime.datetime(2026, 11, 28, 18, 0, tzinfo=local)
    job = make_job(queued_at=queued, files=0)
    stored = Job.get_by_id(job.prompt_id).queued_at
    assert stored == queued
    assert stored.utcoffset() == datetime.timedelta(0)
    assert stored.hour == 12 and stored.minute == 30


def copy_steps(tmp_path, monkeypatch, extra: dict[str, str] | None = None):
    """Point the migrations at a copy of history/migrations with ``extra`` steps (file name: source) added."""
    folder = tmp_path / "migrations"
    folder.mkdir()
    for step in MIGRATIONS_DIRECTORY.glob("[0-9]*.py"):
        shutil.copy(step, folder / step.name)
    for name, source in (extra or {}).items():
        (folder / name).write_text(textwrap.dedent(source))
    monkeypatch.setattr(history_db, "MIGRATIONS_DIRECTORY", folder)
    return folder


def test_a_new_schema_step_keeps_existing_jobs(app_config, make_job, monkeypatch, tmp_path, db):
    job = make_job(files=0)
    newest = len(history_db.migration_steps())
    assert history_db.schema_version() == newest
    copy_steps(tmp_path, monkeypatch, {f"{newest + 1:04d}_note.py": """
        from peewee import TextField

        def up(migrator, db):
            migrator.migrate(migrator.add_column("job", "note", TextField(null=True)))
    """})
    database.close()
    second = create_app(app_config)
    try:
        with history_db.connection():
            assert history_db.schema_version() == newest + 1
            columns = [column.name for column in database.get_columns("job")]
            assert "note" in columns
            assert Job.get_by_id(job.prompt_id).workflow_name == job.workflow_name
    finally:
        second.extensions["studio"].stop()


def test_a_field_added_to_the_model_later_does_not_break_a_fresh_store(monkeypatch, tmp_path, db):
    # The first schema is frozen in 0001: a field the model gains later comes from its own step, and a new
    # database built step by step must not meet that column twice.
    database.execute_sql("DROP TABLE job")
    database.execute_sql("DROP TABLE schema_version")
    database.execute_sql(f"DROP TABLE {history_db.MIGRATION_TABLE}")
    newest = len(history_db.migration_steps())
    copy_steps(tmp_path, monkeypatch, {f"{newest + 1:04d}_note.py": """
        from peewee import TextField

        def up(migrator, db):
            migrator.migrate(migrator.add_column("job", "note", TextField(null=True)))
    """})
    Job._meta.add_field("note", TextField(null=True))  # as if models.py had gained it with that step
    try:
        assert history_db.migrate(target="0001_job") == 1
        first = {column.name for column in database.get_columns("job")}
        assert "note" not in first and "starred" not in first
        assert history_db.migrate() == newest + 1
        assert {column.name for column in database.get_columns("job")} == set(Job._meta.columns)
    finally:
        Job._meta.remove_field("note")


def test_the_schema_steps_build_what_the_model_reads(db):
    columns = {column.name for column in database.get_columns("job")}
    assert columns == set(Job._meta.columns)
    indexed = {tuple(index.columns) for index in database.get_indexes("job")}
    for fields, _unique in Job._meta.indexes:
        assert tuple(fields) in indexed


def test_two_steps_under_one_number_are_refused(monkeypatch, tmp_path, db):
    newest = len(history_db.migration_steps())
    copy_steps(tmp_path, monkeypatch, {
        f"{newest + 1:04d}_stars.py": "def up(migrator, db):\n    pass\n",
        f"{newest + 1:04d}_scale.py": "def up(migrator, db):\n    pass\n",
    })
    with pytest.raises(RuntimeError, match="numbered 1 to"):
        history_db.migrate()


def test_a_store_numbered_before_the_step_files_is_adopted_and_upgraded(app_config, make_job, db):
    job = make_job(files=0)
    # A store as the first schema left it, from before playhouse.migrations recorded steps by name:
    # no starred, no bytes, no index on them, no tallies, and only schema_version saying where it is.
    for trigger in ("job_tally_insert", "job_tally_update", "job_tally_delete"):
        database.execute_sql(f"DROP TRIGGER IF EXISTS {trigger}" + ("" if history_db.is_sqlite() else " ON job"))
    database.execute_sql("DROP TABLE job_tally")
    for index in ("job_starred_queued_at_prompt_id", "job_status_workflow_id_bytes", "job_status_queued_at_bytes"):
        database.execute_sql(f"DROP INDEX {index}")
    for column in ("starred", "bytes"):
        database.execute_sql(f"ALTER TABLE job DROP COLUMN {column}")
    database.execute_sql(f"DROP TABLE {history_db.MIGRATION_TABLE}")
    database.execute_sql("DELETE FROM schema_version WHERE version > 2")
    database.close()
    second = create_app(app_config)
    try:
        with history_db.connection():
            assert history_db.schema_version() == len(history_db.migration_steps())
            applied = history_db.migration_runner().applied()
            assert sorted(applied) == [step.name for step in history_db.migration_steps()]
            record = Job.get_by_id(job.prompt_id).to_dict()
            assert record["starred"] is False and record["bytes"] is None
            assert record["workflow_name"] == job.workflow_name
    finally:
        second.extensions["studio"].stop()


def test_processes_starting_together_on_an_empty_store_create_its_schema_once(db):
    # Several gunicorn workers (or servers) booting at once on a new database all migrate it.
    database.execute_sql("DROP TABLE job")
    database.execute_sql("DROP TABLE schema_version")
    database.execute_sql(f"DROP TABLE {history_db.MIGRATION_TABLE}")
    database.close()
    starting = threading.Barrier(6)
    errors = []

    def boot():
        try:
            starting.wait(10)
            with history_db.connection():
                history_db.migrate()
        except Exception as error:  # noqa: BLE001 - every failure is the finding
            errors.append(error)

    workers = [threading.Thread(target=boot) for _ in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    assert errors == []
    with history_db.connection():
        versions = [row[0] for row in database.execute_sql("SELECT version FROM schema_version").fetchall()]
        assert versions == list(range(1, len(history_db.migration_steps()) + 1))
        assert Job.select().count() == 0
