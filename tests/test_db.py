"""The store: SQLite settings, UTC times, and upgrades that keep data."""
from __future__ import annotations

import datetime
import threading

import pytest
from peewee import TextField
from playhouse.migrate import migrate as run_migration

from history import create_app
from history import db as history_db
from history.db import database
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


def test_a_new_schema_version_keeps_existing_jobs(app_config, make_job, monkeypatch, db):
    job = make_job(files=0)
    newest = len(history_db.MIGRATIONS)
    assert history_db.schema_version() == newest

    def add_note_column(migrator):
        """Add a note to each job."""
        run_migration(migrator.add_column("job", "note", TextField(null=True)))

    monkeypatch.setattr(history_db, "MIGRATIONS", history_db.MIGRATIONS + [add_note_column])
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


def test_a_store_from_before_stars_gets_starred_and_bytes_and_keeps_its_jobs(app_config, make_job, db):
    job = make_job(files=0)
    # The store as the first schema left it: no starred, no bytes, no index on them.
    database.execute_sql("DROP INDEX job_starred_queued_at_prompt_id")
    for column in ("starred", "bytes"):
        database.execute_sql(f"ALTER TABLE job DROP COLUMN {column}")
    before_stars = history_db.MIGRATIONS.index(history_db._v3)
    database.execute_sql("DELETE FROM schema_version WHERE version > %d" % before_stars)
    database.close()
    second = create_app(app_config)
    try:
        with history_db.connection():
            assert history_db.schema_version() == len(history_db.MIGRATIONS)
            record = Job.get_by_id(job.prompt_id).to_dict()
            assert record["starred"] is False and record["bytes"] is None
            assert record["workflow_name"] == job.workflow_name
    finally:
        second.extensions["studio"].stop()


def test_processes_starting_together_on_an_empty_store_create_its_schema_once(db):
    # Several gunicorn workers (or servers) booting at once on a new database all migrate it.
    database.execute_sql("DROP TABLE job")
    database.execute_sql("DROP TABLE schema_version")
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
        assert versions == list(range(1, len(history_db.MIGRATIONS) + 1))
        assert Job.select().count() == 0
