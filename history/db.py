"""The database: a proxy bound at start-up, a base model, connect per request, schema versions."""
from __future__ import annotations

import contextlib
import logging

import click
from flask import current_app
from peewee import DatabaseProxy
from peewee import Model
from peewee import SQL
from peewee import SqliteDatabase
from playhouse.db_url import connect as connect_url
from playhouse.migrate import PostgresqlMigrator
from playhouse.migrate import SqliteMigrator

log = logging.getLogger(__name__)
database = DatabaseProxy()

POSTGRES_POOL = {"max_connections": 32, "stale_timeout": 300, "timeout": 30}

# Set on every new connection: cheap, and they do not persist in the file. WAL does persist, so bind()
# sets it once instead of paying for it on every request's connect.
SQLITE_PRAGMAS = {
    "synchronous": "normal",
}


class BaseModel(Model):
    """Every model lives in the proxied database."""

    class Meta:
        database = database


def open_database(url: str):
    """Make a peewee database for a db_url (SQLite gets WAL, a busy timeout and IMMEDIATE writes)."""
    if url.startswith("sqlite"):
        # Deferred transactions fail with "database is locked" when two writers upgrade at once;
        # IMMEDIATE takes the write lock at BEGIN and waits (timeout) instead.
        return connect_url(url, pragmas=SQLITE_PRAGMAS, timeout=15, lock_type="IMMEDIATE", check_same_thread=False)
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        # A pool bounds what one process holds (the server's default limit is 100 connections for every
        # worker and host together) and keeps them warm; a request waits for a free one rather than failing.
        # peewee picks psycopg 3 when psycopg2 is absent; say so explicitly so both installs agree.
        pooled = "postgresql+pool://" + url.split("://", 1)[1]
        return connect_url(pooled, prefer_psycopg3=True, **POSTGRES_POOL)
    return connect_url(url)


def release(db=None) -> None:
    """Close every connection of a database (the bound one by default) that is kept in a pool."""
    db = db if db is not None else database.obj
    if db is None:
        return
    if not db.is_closed():
        db.close()
    if hasattr(db, "close_all"):
        db.close_all()


def bind(url: str):
    """Point the proxy at the database named by ``url`` and return it (SQLite switched to WAL once)."""
    previous = database.obj
    db = open_database(url)
    database.initialize(db)
    if previous is not None and hasattr(previous, "close_idle"):
        previous.close_idle()  # a test or a host app binding anew leaves no pooled connection open
    if isinstance(db, SqliteDatabase):
        with connection():
            database.execute_sql("PRAGMA journal_mode=wal")
    return db


def is_sqlite() -> bool:
    """Whether the bound database is SQLite."""
    return isinstance(database.obj, SqliteDatabase)


@contextlib.contextmanager
def connection():
    """Hold a connection for a background task, closing it after (reusing one already open)."""
    opened = database.connect(reuse_if_open=True)
    try:
        yield database
    finally:
        if opened and not database.is_closed():
            database.close()


# Schema versions: each entry upgrades from the version before it. Add a function, never edit one.
def _v1(migrator):
    """Create the job table and its indexes."""
    from history.models import Job

    database.create_tables([Job])


def _v2(migrator):
    """Index workflow names, prompt ids, prompts and scene prompts for the list's search."""
    from history import search

    search.install(database)


def _v3(migrator):
    """Add job.starred and job.bytes (the size of a job's files), and the index the starred filter pages by."""
    from peewee import BigIntegerField
    from peewee import BooleanField
    from playhouse.migrate import migrate as run

    # A store created by _v1 from today's model has these already; one from before them gets them here.
    columns = {column.name for column in database.get_columns("job")}
    steps = []
    if "starred" not in columns:
        # One ALTER TABLE with a default in the column itself: add_column's add_not_null would rebuild the
        # table on SQLite (dropping the search triggers), and bulk writers that name no starred get false.
        steps.append(migrator.alter_add_column("job", "starred", BooleanField(default=False, constraints=[SQL("DEFAULT FALSE")])))
    if "bytes" not in columns:
        steps.append(migrator.add_column("job", "bytes", BigIntegerField(null=True)))
    indexes = {index.name for index in database.get_indexes("job")}
    if "job_starred_queued_at_prompt_id" not in indexes:
        steps.append(migrator.add_index("job", ("starred", "queued_at", "prompt_id"), False))
    run(*steps)


MIGRATIONS = [_v1, _v2, _v3]


def _migrator():
    if is_sqlite():
        return SqliteMigrator(database.obj)
    return PostgresqlMigrator(database.obj)


def schema_version() -> int:
    """The schema version the bound database is at (0 when empty)."""
    database.execute_sql("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = database.execute_sql("SELECT MAX(version) FROM schema_version").fetchone()
    return row[0] or 0


# The PostgreSQL advisory lock that lets one process at a time migrate ("STUDIO" in ASCII).
MIGRATION_LOCK = 0x53545544494F


def migrate() -> int:
    """Bring the schema to the newest version; return the version reached.

    Processes that start together (gunicorn workers, several servers) take turns: on PostgreSQL an
    advisory lock held to the end of the transaction (a concurrent CREATE TABLE IF NOT EXISTS can fail
    there), on SQLite the write lock its IMMEDIATE transactions take at the start.
    """
    with database.atomic():
        if not is_sqlite():
            database.execute_sql("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        current = schema_version()
        for number, step in enumerate(MIGRATIONS, start=1):
            if number > current:
                log.info("migrating schema to version %d: %s", number, step.__doc__)
                step(_migrator())
                database.execute_sql("INSERT INTO schema_version (version) VALUES (%d)" % number)
                current = number
    return current


def connect_for_request() -> None:
    """Open this request's connection (history.web.guard calls it); teardown closes it."""
    if current_app.config.get("DATABASE_URL") is not None:  # a host app's own routes have no studio store
        database.connect(reuse_if_open=True)


def close_after_request(exc) -> None:
    """Close this request's connection: teardown runs after exceptions too (after_request does not)."""
    if not database.is_closed():
        database.close()


def init_app(app):
    """Bind the database, migrate it, and close the request's connection in teardown."""
    bind(app.config["DATABASE_URL"])
    with connection():
        migrate()
    app.teardown_request(close_after_request)

    app.cli.add_command(init_db_command)


@click.command("init-db")
def init_db_command():
    """Create or upgrade the tables."""
    with connection():
        version = migrate()
    click.echo(f"Database ready at schema version {version}")
