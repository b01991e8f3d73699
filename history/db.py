"""The database: a proxy bound at start-up, a base model, connect per request, schema versions."""
from __future__ import annotations

import contextlib
import logging

import click
from peewee import DatabaseProxy
from peewee import Model
from peewee import OperationalError
from peewee import SqliteDatabase
from playhouse import migrations
from playhouse.db_url import connect as connect_url

from history import changes
from history.migrations import DIRECTORY as MIGRATIONS_DIRECTORY

log = logging.getLogger(__name__)
database = DatabaseProxy()

# How long a write waits for another process's SQLite write lock (STUDIO_BUSY_SECONDS) before it gives
# up with "database is locked", which the app answers as 503 with Retry-After (is_busy).
BUSY_SECONDS = 15.0
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


def open_database(url: str, busy_seconds: float = BUSY_SECONDS):
    """Make a peewee database for a db_url (SQLite gets WAL, a busy timeout and IMMEDIATE writes)."""
    if url.startswith("sqlite"):
        # Deferred transactions fail with "database is locked" when two writers upgrade at once;
        # IMMEDIATE takes the write lock at BEGIN and waits (up to busy_seconds) instead.
        return connect_url(url, pragmas=SQLITE_PRAGMAS, timeout=busy_seconds, lock_type="IMMEDIATE", check_same_thread=False)
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


def bind(url: str, busy_seconds: float = BUSY_SECONDS):
    """Point the proxy at the database named by ``url`` and return it (SQLite switched to WAL once)."""
    previous = database.obj
    db = open_database(url, busy_seconds)
    changes.count_writes(db)  # an idle poll of this process sees its own writes at once (history/changes.py)
    database.initialize(db)
    if previous is not None and hasattr(previous, "close_idle"):
        previous.close_idle()  # a test or a host app binding anew leaves no pooled connection open
    if isinstance(db, SqliteDatabase):
        with connection():
            database.execute_sql("PRAGMA journal_mode=wal")
    return db


def is_busy(error: Exception) -> bool:
    """Whether a database error means the store is held by another writer (try again soon), not broken.

    SQLite says "database is locked" (or "busy") once the busy timeout has passed; PostgreSQL reports a
    lock_timeout or a full connection pool. Nothing was written by the statement that failed.
    """
    if type(error).__name__ == "MaxConnectionsExceeded":
        return True
    if not isinstance(error, OperationalError):
        return False
    message = str(error).lower()
    return any(sign in message for sign in ("database is locked", "database is busy", "lock timeout"))


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


# The PostgreSQL advisory lock that lets one process at a time migrate ("STUDIO" in ASCII).
MIGRATION_LOCK = 0x53545544494F
# playhouse.migrations records each step it applied by name here; schema_version keeps the number.
MIGRATION_TABLE = "schema_migration"


def migration_runner() -> migrations.Runner:
    """The playhouse.migrations runner of the bound database over the steps in history/migrations."""
    return migrations.Runner(database.obj, str(MIGRATIONS_DIRECTORY), table_name=MIGRATION_TABLE)


def migration_steps() -> list[migrations.Migration]:
    """Every schema step, in order; raise RuntimeError unless they are numbered 1, 2, 3 ... once each.

    Two branches that each appended a step under the same number would otherwise both run, in an order
    nobody chose.
    """
    steps = migrations.Migration.load_directory(str(MIGRATIONS_DIRECTORY))
    numbers = [step.idx for step in steps]
    if numbers != list(range(1, len(steps) + 1)):
        raise RuntimeError(f"schema steps in {MIGRATIONS_DIRECTORY} must be numbered 1 to {len(steps)} once each: {[step.name for step in steps]}")
    return steps


def schema_version() -> int:
    """The schema version the bound database is at: the number of its newest step (0 when empty)."""
    database.execute_sql("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = database.execute_sql("SELECT MAX(version) FROM schema_version").fetchone()
    return row[0] or 0


def _adopt_numbered_store(runner: migrations.Runner, version: int) -> None:
    """Record as applied the steps a store ran before they were playhouse.migrations files (by schema_version)."""
    done = [step for step in runner.migrations() if step.idx <= version]
    if done and not runner.applied():
        runner.fake(done[-1].name)


def migrate(target: str | None = None) -> int:
    """Bring the schema to the newest step (or to ``target``, a step's name); return the version reached.

    Processes that start together (gunicorn workers, several servers) take turns: on PostgreSQL an
    advisory lock held to the end of the transaction (a concurrent CREATE TABLE IF NOT EXISTS can fail
    there), on SQLite the write lock its IMMEDIATE transactions take at the start.
    """
    with database.atomic():
        if not is_sqlite():
            database.execute_sql("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        runner = migration_runner()
        _adopt_numbered_store(runner, schema_version())
        numbers = {step.name: step.idx for step in migration_steps()}
        for name in runner.up(target):
            log.info("migrated schema to version %d: %s", numbers[name], name)
            database.execute_sql("INSERT INTO schema_version (version) VALUES (%d)" % numbers[name])
        return schema_version()


def close_after_request(exc) -> None:
    """Close this request's connection: teardown runs after exceptions too (after_request does not)."""
    if not database.is_closed():
        database.close()


def init_app(app):
    """Bind the database, migrate it, and close the request's connection (opened by its first query) in teardown."""
    bind(app.config["DATABASE_URL"], app.config["STUDIO"].busy_seconds)
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
