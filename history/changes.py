"""Whether the job store may have changed since a moment: a token per process, so an idle poll needs no query. No Flask import.

The token moves on every write any process makes:
- this process's own writes: every statement but a SELECT and every commit through its database
  (count_writes), every event it publishes, every state-changing request it answers (``bump``);
- SQLite: ``PRAGMA data_version`` on one long-lived connection of this process changes whenever any
  other connection commits, in this process or another (the CLI import, a second server);
- PostgreSQL: a statement trigger on the job table NOTIFYs CHANGES_CHANNEL at each commit that wrote it,
  and the event bus's listener counts them (PostgresEventBus.change_count). While that listener is not
  connected the token is None: nothing is known, so the caller queries.
A token also expires after MAX_AGE seconds, so a missed signal costs one query, never a stale list.
"""
from __future__ import annotations

import logging
import sqlite3
import threading
import time

from history.migrations import is_sqlite

log = logging.getLogger(__name__)

CHANGES_CHANNEL = "studio_history_changes"
MAX_AGE = 30.0

POSTGRES_TRIGGER = [
    f"""
CREATE OR REPLACE FUNCTION job_changed_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{CHANGES_CHANNEL}', '');  -- one per transaction: equal payloads fold at commit
    RETURN NULL;
END
$$
""",
    "DROP TRIGGER IF EXISTS job_changed ON job",
    "CREATE TRIGGER job_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON job "
    "FOR EACH STATEMENT EXECUTE FUNCTION job_changed_notify()",
]


def install(database) -> None:
    """Make every write to the job table signal CHANGES_CHANNEL (PostgreSQL; SQLite needs nothing)."""
    if is_sqlite(database):
        return
    for statement in POSTGRES_TRIGGER:
        database.execute_sql(statement)


class WriteCount:
    """How many statements that may write, and commits, went through one database in this process."""

    def __init__(self):
        self.value = 0
        self._lock = threading.Lock()  # a lost increment could hide a write

    def bump(self) -> None:
        with self._lock:
            self.value += 1


def count_writes(db) -> WriteCount:
    """Count the writes made through the peewee database ``db`` (its execute_sql and commit), once per database.

    Counted after the statement (autocommit) and after the commit (a transaction), so a poll that reads
    the token before a write is visible always sees it move once the write is.
    """
    count = getattr(db, "studio_writes", None)
    if count is not None:
        return count
    count = WriteCount()
    execute, commit = db.execute_sql, db.commit

    def execute_sql(sql, *args, **kwargs):
        try:
            return execute(sql, *args, **kwargs)
        finally:
            if not sql.lstrip()[:6].upper().startswith("SELECT"):
                count.bump()

    def commit_and_count():
        try:
            return commit()
        finally:
            count.bump()

    db.execute_sql = execute_sql
    db.commit = commit_and_count
    db.studio_writes = count
    return count


class StoreChanges:
    """A token that differs whenever the job table may have changed (None when that cannot be known)."""

    def __init__(self, sqlite_path: str | None = None, bus=None, writes: WriteCount | None = None,
                 max_age: float = MAX_AGE):
        self.bus = bus
        self.writes = writes or WriteCount()
        self.max_age = max_age
        self._count = 0
        self._lock = threading.Lock()
        self._sqlite_path = sqlite_path
        self._sqlite: sqlite3.Connection | None = None

    def bump(self) -> None:
        """Note a write of this process."""
        with self._lock:
            self._count += 1

    def token(self):
        """The store's change token now, or None when a change could go unseen (the caller must query)."""
        local = (self._count, self.writes.value, getattr(self.bus, "delivered", 0))
        if self._sqlite_path is not None:
            version = self._data_version()
            return None if version is None else (local, version)
        counted = getattr(self.bus, "change_count", None)
        value = counted() if counted is not None else None
        return None if value is None else (local, value)

    def fresh(self, token, made_at: float) -> bool:
        """Whether something computed at ``made_at`` under ``token`` still holds."""
        return token is not None and token == self.token() and time.monotonic() - made_at < self.max_age

    def _data_version(self) -> int | None:
        with self._lock:
            try:
                if self._sqlite is None:
                    # Never written through: it only watches. check_same_thread=False, guarded by the lock.
                    self._sqlite = sqlite3.connect(self._sqlite_path, isolation_level=None, check_same_thread=False,
                                                   timeout=1)
                return self._sqlite.execute("PRAGMA data_version").fetchone()[0]
            except sqlite3.Error as error:
                log.warning("cannot watch %s for changes: %s", self._sqlite_path, error)
                self._close()
                return None

    def _close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
            self._sqlite = None

    def close(self) -> None:
        """Close the watching connection."""
        with self._lock:
            self._close()


class Remembered:
    """Values computed from the store, each kept with the change token it was computed under (bounded, LRU)."""

    def __init__(self, changes: StoreChanges, size: int = 256):
        self.changes = changes
        self.size = size
        self._values: dict = {}
        self._lock = threading.Lock()

    def made_at(self, key) -> float:
        """Answer when (time.monotonic()) the value kept for ``key`` was computed (now when none is kept)."""
        entry = self._values.get(key)
        return entry[1] if entry is not None else time.monotonic()

    def get(self, key, compute):
        """The value for ``key``: remembered while the store has not changed, else ``compute()`` (and kept)."""
        with self._lock:
            entry = self._values.get(key)
        if entry is not None and self.changes.fresh(entry[0], entry[1]):
            return entry[2]
        token = self.changes.token()  # taken before the query: a write during it moves the token past this one
        made_at = time.monotonic()
        value = compute()
        with self._lock:
            self._values.pop(key, None)
            self._values[key] = (token, made_at, value)
            while len(self._values) > self.size:
                self._values.pop(next(iter(self._values)))
        return value
