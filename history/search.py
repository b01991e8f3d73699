"""The search index of the history list: workflow name, prompt id, prompts and scene prompts. No Flask import.

A search is a case-insensitive substring match, as the LIKE it replaces. SQLite answers it from an FTS5
table with the trigram tokenizer (a quoted phrase of trigrams is exactly a substring), filled by triggers
on the job table, so every writer keeps it in step, another process's CLI import included. PostgreSQL
answers it from a pg_trgm GIN index over one immutable function of the same fields, which the server
maintains itself; ILIKE then reads that index.

Where it differs from the LIKE over the raw columns it replaced:
- A needle shorter than three characters has no trigram: a LIKE over the same text answers it, row by
  row (the list's own index still stops it after one page of matches, but a rare one reads every job).
- Scene prompts are matched as text, not as the scenes' JSON: "duration" or a seed's digits no longer
  find every scenes job, and a prompt with quotes or non-ASCII letters matches as typed (JSON escaped them).
- SQLite's FTS5 folds the case of non-ASCII letters too ("ÉCOLE" finds "école"), as PostgreSQL's ILIKE
  always did; SQLite's LIKE folded ASCII only.
"""
from __future__ import annotations

import logging

from history.migrations import is_sqlite

log = logging.getLogger(__name__)

MIN_NEEDLE = 3
# Joins the prompts of one job in the index, so no match spans two of them; a needle holding it goes to LIKE.
SEPARATOR = "\x1f"

# ---- SQLite: FTS5, trigram tokenizer, kept by triggers ----------------------------------------

# The prompts of a job's params as one text: positive, negative, then every scene's prompt.
_SQLITE_PROMPTS = """
    coalesce(json_extract({params}, '$.positive_prompt'), '') || char(31) ||
    coalesce(json_extract({params}, '$.negative_prompt'), '') || char(31) ||
    coalesce((SELECT group_concat(json_extract(scene.value, '$.prompt'), char(31))
              FROM json_each(CASE json_type({params}, '$.scenes') WHEN 'array' THEN {params} ELSE '{{"s":[]}}' END,
                             CASE json_type({params}, '$.scenes') WHEN 'array' THEN '$.scenes' ELSE '$.s' END) AS scene
              WHERE scene.type = 'object'), '')
"""
# The prompts of the row a query reads, for a LIKE that agrees with the index (see sqlite_like_agrees).
SQLITE_PROMPTS = _SQLITE_PROMPTS.format(params="params")


def _sqlite_values(row: str) -> str:
    return f"{row}.rowid, {row}.workflow_name, {row}.prompt_id, {_SQLITE_PROMPTS.format(params=row + '.params')}"


SQLITE_SCHEMA = [
    # Built afresh: an index left by a job table dropped before would answer for rowids reused since.
    "DROP TABLE IF EXISTS job_search",
    # Contentless: the text lives in the job table only; a delete names the old values (the triggers do).
    "CREATE VIRTUAL TABLE job_search USING fts5("
    "workflow_name, prompt_id, prompts, content='', tokenize='trigram')",
    "CREATE TRIGGER IF NOT EXISTS job_search_insert AFTER INSERT ON job BEGIN "
    f"INSERT INTO job_search (rowid, workflow_name, prompt_id, prompts) VALUES ({_sqlite_values('new')}); END",
    "CREATE TRIGGER IF NOT EXISTS job_search_delete AFTER DELETE ON job BEGIN "
    "INSERT INTO job_search (job_search, rowid, workflow_name, prompt_id, prompts) "
    f"VALUES ('delete', {_sqlite_values('old')}); END",
    # A status change (the common write) leaves the index alone.
    "CREATE TRIGGER IF NOT EXISTS job_search_update AFTER UPDATE ON job "
    "WHEN old.workflow_name IS NOT new.workflow_name OR old.prompt_id IS NOT new.prompt_id "
    "OR old.params IS NOT new.params OR old.rowid IS NOT new.rowid BEGIN "
    "INSERT INTO job_search (job_search, rowid, workflow_name, prompt_id, prompts) "
    f"VALUES ('delete', {_sqlite_values('old')}); "
    f"INSERT INTO job_search (rowid, workflow_name, prompt_id, prompts) VALUES ({_sqlite_values('new')}); END",
]
# Rows written before the index existed (or by a bulk load that ran without the triggers).
SQLITE_FILL = f"INSERT INTO job_search (rowid, workflow_name, prompt_id, prompts) SELECT {_sqlite_values('job')} FROM job"
SQLITE_SCHEMA.append(SQLITE_FILL)

# ---- PostgreSQL: pg_trgm GIN over one immutable function -----------------------------------------

POSTGRES_FUNCTION = """
CREATE OR REPLACE FUNCTION job_search_text(workflow_name text, prompt_id text, params jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT concat_ws(chr(31), workflow_name, prompt_id,
                     coalesce(params ->> 'positive_prompt', ''), coalesce(params ->> 'negative_prompt', ''),
                     (SELECT string_agg(scene ->> 'prompt', chr(31))
                      FROM jsonb_array_elements(CASE jsonb_typeof(params -> 'scenes') WHEN 'array'
                                                THEN params -> 'scenes' ELSE '[]'::jsonb END) AS scene
                      WHERE jsonb_typeof(scene) = 'object'))
$$
"""
POSTGRES_INDEX = (
    "CREATE INDEX IF NOT EXISTS job_search_trgm ON job "
    "USING gin (job_search_text(workflow_name, prompt_id, params) gin_trgm_ops)"
)


def install(database) -> None:
    """Create the search index of the bound database and fill it from the rows already stored."""
    if is_sqlite(database):
        for statement in SQLITE_SCHEMA:
            database.execute_sql(statement)
        return
    database.execute_sql(POSTGRES_FUNCTION)
    try:
        with database.atomic():  # a savepoint: without the extension the function still answers, unindexed
            database.execute_sql("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    except Exception as error:  # noqa: BLE001 - psycopg's InsufficientPrivilege, UndefinedFile ...
        log.warning("search runs without an index: CREATE EXTENSION pg_trgm failed (%s)", error)
        return
    database.execute_sql(POSTGRES_INDEX)


def sqlite_like_agrees(needle: str) -> bool:
    """Whether SQLite's LIKE over the indexed text finds what the index finds (it folds ASCII case only)."""
    return needle.isascii()


def uses_index(needle: str) -> bool:
    """Whether the index can answer this needle (three characters or more, no separator)."""
    return len(needle) >= MIN_NEEDLE and SEPARATOR not in needle


def fts_phrase(needle: str) -> str:
    """The FTS5 query matching ``needle`` as a substring: one quoted phrase (its trigrams, in order)."""
    return '"' + needle.replace('"', '""') + '"'


def fts_query(needle: str) -> tuple[str, bool]:
    """The FTS5 query for ``needle``, and whether what it finds must still be checked by a LIKE (sqlite_like_agrees).

    A phrase reads one list of rows per trigram, a repeated trigram's as often as it repeats: an id like
    00000000-0000-0000-0000-0000000f4240 has 34 trigrams, 25 of them the four that every such id holds, so its
    phrase reads a million-row list 25 times. A needle that is mostly repeats asks for each distinct trigram
    once instead (every row holding them all, found by skipping through the lists) and a LIKE keeps the rows
    that hold the needle itself.
    """
    trigrams = [needle[start:start + MIN_NEEDLE] for start in range(len(needle) - MIN_NEEDLE + 1)]
    distinct = list(dict.fromkeys(trigrams))
    if 2 * len(distinct) > len(trigrams) or not sqlite_like_agrees(needle):
        return fts_phrase(needle), False
    return " AND ".join(fts_phrase(trigram) for trigram in distinct), True
