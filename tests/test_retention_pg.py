"""STUDIO_RETENTION on PostgreSQL: one process at a time applies the rules (an advisory lock)."""
from __future__ import annotations

import dataclasses
import datetime

import pytest

from history import create_app
from history import retention
from history.db import connection
from history.db import open_database
from history.db import release
from history.models import Job
from tests.conftest import POSTGRES_URL
from tests.conftest import reset_postgres


@pytest.fixture
def pg_app(tmp_path):
    """An app on the throw-away PostgreSQL database."""
    reset_postgres(POSTGRES_URL)
    app = create_app({
        "TESTING": True, "STUDIO_DATA_DIR": str(tmp_path / "data"), "STUDIO_DEMO": "0", "STUDIO_DATABASE_URL": POSTGRES_URL,
    })
    yield app
    app.extensions["studio"].stop()
    release()


def test_a_pass_that_finds_the_lock_taken_removes_nothing_and_the_next_one_does(pg_app):
    old = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=40)
    with connection():
        Job.insert(prompt_id="old-error", workflow_id="txt2img-example", status="error", queued_at=old, bytes=0).execute()
    settings = dataclasses.replace(pg_app.config["STUDIO"], retention=(("error", 30 * 86400.0),))
    bus = pg_app.extensions["studio"].bus
    other = open_database(POSTGRES_URL)  # another server's connection, holding the lock
    other.connect()
    try:
        other.execute_sql("SELECT pg_advisory_lock(%s)", (retention.RETENTION_LOCK,))
        assert retention.apply_settings(settings, bus) is None
        with connection():
            assert Job.select().count() == 1, "the pass that did not get the lock removed nothing"
        other.execute_sql("SELECT pg_advisory_unlock(%s)", (retention.RETENTION_LOCK,))
        assert retention.apply_settings(settings, bus).deleted == ["old-error"]
    finally:
        release(other)
