"""Counts and bytes of jobs by UTC day, status and workflow, kept in step with the job table by the store. No Flask import.

The storage figures (jobs.storage_stats) and /metrics read these few rows (days x statuses x workflows:
thousands at a million jobs) instead of grouping the whole job table, so they cost the same at any size.
Every writer keeps them, another process's CLI import included: SQLite triggers per row, PostgreSQL
statement triggers over the statement's transition tables (one grouped upsert per statement, in key
order, so a bulk write takes each tally row once and concurrent writers lock them in the same order).
A tally row whose jobs fall to 0 stays (readers skip it); a row is a (day, status, workflow_id) key.
"""
from __future__ import annotations

from history.migrations import is_sqlite

TABLE = "job_tally"

# ---- SQLite: row triggers ------------------------------------------------------------------------

def _sqlite_add(row: str, sign: str) -> str:
    """The statement that adds (sign "+") or takes away ("-") one job row's counts."""
    return (
        f"INSERT INTO {TABLE} (day, status, workflow_id, jobs, bytes, measured) "
        f"VALUES (date({row}.queued_at), {row}.status, {row}.workflow_id, {sign}1, "
        f"{sign}coalesce({row}.bytes, 0), {sign}({row}.bytes IS NOT NULL)) "
        "ON CONFLICT (day, status, workflow_id) DO UPDATE SET jobs = jobs + excluded.jobs, "
        "bytes = bytes + excluded.bytes, measured = measured + excluded.measured;"
    )


SQLITE_TABLE = (
    f"CREATE TABLE {TABLE} (day TEXT NOT NULL, status VARCHAR(16) NOT NULL, workflow_id VARCHAR(128) NOT NULL, "
    "jobs INTEGER NOT NULL, bytes INTEGER NOT NULL, measured INTEGER NOT NULL, "
    "PRIMARY KEY (day, status, workflow_id))"
)
SQLITE_TRIGGERS = [
    f"CREATE TRIGGER IF NOT EXISTS job_tally_insert AFTER INSERT ON job BEGIN {_sqlite_add('new', '+')} END",
    f"CREATE TRIGGER IF NOT EXISTS job_tally_delete AFTER DELETE ON job BEGIN {_sqlite_add('old', '-')} END",
    # Progress and most lifecycle writes change none of these: they leave the tallies alone.
    "CREATE TRIGGER IF NOT EXISTS job_tally_update AFTER UPDATE ON job "
    "WHEN old.status IS NOT new.status OR old.workflow_id IS NOT new.workflow_id "
    "OR old.queued_at IS NOT new.queued_at OR old.bytes IS NOT new.bytes BEGIN "
    f"{_sqlite_add('old', '-')} {_sqlite_add('new', '+')} END",
]
# Both stores group the rows already stored this way when the tallies are built.
FILL = (
    f"INSERT INTO {TABLE} (day, status, workflow_id, jobs, bytes, measured) "
    "SELECT {day}, status, workflow_id, COUNT(*), coalesce(SUM(bytes), 0), COUNT(bytes) FROM job "
    "GROUP BY {day}, status, workflow_id"
)

# ---- PostgreSQL: statement triggers over transition tables -------------------------------------------

POSTGRES_TABLE = (
    f"CREATE TABLE {TABLE} (day DATE NOT NULL, status VARCHAR(16) NOT NULL, workflow_id VARCHAR(128) NOT NULL, "
    "jobs BIGINT NOT NULL, bytes BIGINT NOT NULL, measured BIGINT NOT NULL, "
    "PRIMARY KEY (day, status, workflow_id))"
)
_POSTGRES_ROWS = ("SELECT queued_at::date AS day, status, workflow_id, {sign}1 AS jobs, {sign}coalesce(bytes, 0) AS bytes, "
                  "{sign}(bytes IS NOT NULL)::int AS measured FROM {rows}")
_POSTGRES_UPSERT = f"""
    INSERT INTO {TABLE} AS tally (day, status, workflow_id, jobs, bytes, measured)
    SELECT day, status, workflow_id, SUM(jobs), SUM(bytes), SUM(measured)
    FROM ({{change}}) AS change
    GROUP BY day, status, workflow_id
    HAVING SUM(jobs) <> 0 OR SUM(bytes) <> 0 OR SUM(measured) <> 0
    ORDER BY day, status, workflow_id
    ON CONFLICT (day, status, workflow_id) DO UPDATE SET jobs = tally.jobs + excluded.jobs,
        bytes = tally.bytes + excluded.bytes, measured = tally.measured + excluded.measured;"""
_ADDED = _POSTGRES_ROWS.format(sign="", rows="new_rows")
_TAKEN = _POSTGRES_ROWS.format(sign="-", rows="old_rows")
# Each branch names only the transition tables its event has (plpgsql plans a statement when it runs).
# An update that moved no job between keys and changed no size (a progress write) nets to nothing.
POSTGRES_FUNCTION = f"""
CREATE OR REPLACE FUNCTION job_tally_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN{_POSTGRES_UPSERT.format(change=_ADDED)}
    ELSIF TG_OP = 'DELETE' THEN{_POSTGRES_UPSERT.format(change=_TAKEN)}
    ELSIF TG_OP = 'UPDATE' THEN{_POSTGRES_UPSERT.format(change=_ADDED + " UNION ALL " + _TAKEN)}
    ELSE
        DELETE FROM {TABLE};  -- TRUNCATE
    END IF;
    RETURN NULL;
END
$$
"""
POSTGRES_TRIGGERS = [
    "DROP TRIGGER IF EXISTS job_tally_insert ON job",
    "DROP TRIGGER IF EXISTS job_tally_update ON job",
    "DROP TRIGGER IF EXISTS job_tally_delete ON job",
    "DROP TRIGGER IF EXISTS job_tally_truncate ON job",
    # One trigger per event: a trigger with transition tables may name one event only.
    "CREATE TRIGGER job_tally_insert AFTER INSERT ON job REFERENCING NEW TABLE AS new_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION job_tally_change()",
    "CREATE TRIGGER job_tally_update AFTER UPDATE ON job REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION job_tally_change()",
    "CREATE TRIGGER job_tally_delete AFTER DELETE ON job REFERENCING OLD TABLE AS old_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION job_tally_change()",
    "CREATE TRIGGER job_tally_truncate AFTER TRUNCATE ON job FOR EACH STATEMENT EXECUTE FUNCTION job_tally_change()",
]


def _fill(database) -> str:
    """The statement that counts every stored job into the tallies (each store names a timestamp's day its way)."""
    return FILL.format(day="date(queued_at)" if is_sqlite(database) else "queued_at::date")


def install(database) -> None:
    """Create the tallies and the triggers that keep them, and fill them from the rows already stored."""
    if is_sqlite(database):
        statements = [f"DROP TABLE IF EXISTS {TABLE}", SQLITE_TABLE, *SQLITE_TRIGGERS]
    else:
        statements = [f"DROP TABLE IF EXISTS {TABLE}", POSTGRES_TABLE, POSTGRES_FUNCTION, *POSTGRES_TRIGGERS]
    for statement in [*statements, _fill(database)]:
        database.execute_sql(statement)


def refill(database) -> None:
    """Count every stored job afresh (bench/fill.py's bulk load, which runs without the triggers)."""
    database.execute_sql(f"DELETE FROM {TABLE}")
    database.execute_sql(_fill(database))
