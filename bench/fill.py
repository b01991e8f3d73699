"""Fill a store with jobs fast: a million rows in under two minutes, shaped like real ones.

``fill_jobs(count)`` writes into the bound database (history.db.database) with one INSERT ... SELECT per
100,000 rows that the database generates itself (a recursive CTE on SQLite, generate_series on
PostgreSQL), storing each value exactly as the Job model would (JSON as text or jsonb, timestamps as
naive UTC), so the rows read back like the app's own. On SQLite it is a bulk load: the job table's
indexes and triggers go while the rows are written and come back after, the search index and the
tallies built once from every row (what the triggers would have kept). PostgreSQL keeps its indexes
and triggers (the tallies' statement triggers take each INSERT as one). Other benches import it:

    from bench.fill import fill_jobs
    seconds = fill_jobs(1_000_000)                       # job i is queued 30 s before job i - 1
    fill_jobs(50, output_root=settings.output_dir, files_for=50)   # with real 64x64 PNG outputs

Run alone: ``python -m bench.fill [--jobs 1000000] [--database-url URL]`` prints the time it took.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

STATUSES = ("completed", "completed", "completed", "error", "stalled")
WORKFLOWS = (
    ("txt2img-example", "Text to image (example)"),
    ("img2vid-example", "Image to video (example)"),
    ("scenes-example", "Scenes (example)"),
)
SUBJECTS = ("a lighthouse on a cliff", "a fox in the snow", "a city street at night", "an old library",
            "a mountain lake", "a robot gardener", "a desert caravan", "a koi pond")
STYLES = ("at dusk, volumetric light", "watercolor", "film grain, 35mm", "studio lighting",
          "isometric, low poly", "oil painting")
BASE_TIME = datetime.datetime(2026, 11, 28, 12, 0, tzinfo=datetime.timezone.utc)
STEP_SECONDS = 30
FILL_CACHE_KIB = 1024 * 1024  # 1 GB at most, for the fill's own connection
FTS_FILL_HASH_BYTES = 64 * 1024 * 1024  # the search index's pending terms while it is built (FTS5's 'hashsize')
FTS_DEFAULT_HASH_BYTES = 1024 * 1024
ERROR_TEXT = "node KSampler (#3): RuntimeError: out of memory"
COLUMNS = (
    "prompt_id", "workflow_id", "workflow_name", "status", "queued_at", "started_at", "finished_at",
    "duration", "params", "seeds", "input_image", "output", "outputs", "output_dir", "error", "retry_of", "bytes",
)


def prompt_id_of(index: int) -> str:
    """The prompt id fill_jobs gives job ``index`` (a UUID, in index order)."""
    return str(uuid.UUID(int=index + 1))


def queued_at_of(index: int) -> datetime.datetime:
    """When job ``index`` was queued: index 0 is the newest."""
    return BASE_TIME - datetime.timedelta(seconds=STEP_SECONDS * index)


def positive_prompt_of(index: int) -> str:
    """Job ``index``'s prompt: a subject, a style and its number (so a search can find one job or many)."""
    return f"{SUBJECTS[index % len(SUBJECTS)]}, {STYLES[index // 8 % len(STYLES)]}, number {index}"


def make_rows(count: int, start: int = 0, with_files: Path | None = None) -> list[dict]:
    """Job rows as the model takes them (prompts, seeds, one output image each), newest first by index."""
    rows = []
    for index in range(start, start + count):
        workflow_id, workflow_name = WORKFLOWS[index % len(WORKFLOWS)]
        status = STATUSES[index % len(STATUSES)]
        queued_at = queued_at_of(index)
        output_dir = f"{queued_at:%Y%m%d_%H%M%S}_{index:06x}"
        ref = {"filename": "final_00001_.png", "subfolder": f"comfyui-studio/{output_dir}", "type": "output"}
        if with_files is not None:
            write_output(with_files, ref, index)
        params = {"positive_prompt": positive_prompt_of(index), "negative_prompt": "blurry, low quality",
                  "seed": -1, "steps": 20}
        if workflow_id == "scenes-example":
            params = {"scenes": [{"prompt": positive_prompt_of(index), "duration": 2, "seed": -1},
                                 {"prompt": f"scene two of {index}", "duration": 3, "seed": 7}]}
        rows.append({
            "prompt_id": prompt_id_of(index),
            "workflow_id": workflow_id,
            "workflow_name": workflow_name,
            "status": status,
            "queued_at": queued_at,
            "started_at": queued_at + datetime.timedelta(seconds=2),
            "finished_at": queued_at + datetime.timedelta(seconds=44),
            "duration": 42.0,
            "params": params,
            "seeds": {"seed": 1000 + index},
            "input_image": None,
            "output": ref,
            "outputs": [ref],
            "output_dir": output_dir,
            "error": ERROR_TEXT if status != "completed" else None,
            "retry_of": None,
            "bytes": None,
        })
    return rows


def write_output(output_root: Path, ref: dict, index: int) -> None:
    """A small real PNG where an output reference points."""
    from PIL import Image

    path = Path(output_root) / ref["subfolder"] / ref["filename"]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 64), (index * 7 % 256, 120, 200)).save(path)


# The same rows as make_rows, generated by the database itself (no Python per row): {first} and {last}
# bound the indexes. printf's UUID equals str(uuid.UUID(int=i + 1)) below 2**48 jobs.
SQLITE_FILL = """
WITH RECURSIVE n(i) AS (SELECT ? UNION ALL SELECT i + 1 FROM n WHERE i < ?),
r AS (
    SELECT i, datetime(?, printf('-%d seconds', {step} * i)) AS queued_at,
           {subject} || ', ' || {style} || ', number ' || i AS prompt
    FROM n
),
s AS (SELECT r.*, strftime('%Y%m%d_%H%M%S', queued_at) || printf('_%06x', i) AS output_dir FROM r)
INSERT INTO job ({columns})
SELECT printf('00000000-0000-0000-0000-%012x', i + 1),
       {workflow_id}, {workflow_name},
       CASE i % 5 WHEN 3 THEN 'error' WHEN 4 THEN 'stalled' ELSE 'completed' END,
       queued_at, datetime(queued_at, '+2 seconds'), datetime(queued_at, '+44 seconds'), 42.0,
       CASE i % 3 WHEN 2 THEN json_object('scenes', json_array(
                json_object('prompt', prompt, 'duration', 2, 'seed', -1),
                json_object('prompt', 'scene two of ' || i, 'duration', 3, 'seed', 7)))
            ELSE json_object('positive_prompt', prompt, 'negative_prompt', 'blurry, low quality', 'seed', -1, 'steps', 20)
       END,
       json_object('seed', 1000 + i), NULL,
       json_object('filename', 'final_00001_.png', 'subfolder', 'comfyui-studio/' || output_dir, 'type', 'output'),
       json_array(json_object('filename', 'final_00001_.png', 'subfolder', 'comfyui-studio/' || output_dir, 'type', 'output')),
       output_dir, CASE WHEN i % 5 >= 3 THEN ? END, NULL, ?
FROM s
"""

# psycopg takes %s as a parameter: the modulo operator is written %%.
POSTGRES_FILL = """
WITH r AS (
    SELECT i, (%s::timestamp - make_interval(secs => {step} * i)) AS queued_at,
           (%s::jsonb ->> (i %% {subjects})::int) || ', ' || (%s::jsonb ->> (i / 8 %% {styles})::int) || ', number ' || i AS prompt
    FROM generate_series(%s::bigint, %s::bigint) AS i
),
s AS (SELECT r.*, to_char(queued_at, 'YYYYMMDD_HH24MISS') || '_' || lpad(to_hex(i), 6, '0') AS output_dir FROM r)
INSERT INTO job ({columns})
SELECT '00000000-0000-0000-0000-' || lpad(to_hex(i + 1), 12, '0'),
       %s::jsonb -> (i %% 3)::int ->> 0, %s::jsonb -> (i %% 3)::int ->> 1,
       CASE i %% 5 WHEN 3 THEN 'error' WHEN 4 THEN 'stalled' ELSE 'completed' END,
       queued_at, queued_at + interval '2 seconds', queued_at + interval '44 seconds', 42.0,
       CASE i %% 3 WHEN 2 THEN jsonb_build_object('scenes', jsonb_build_array(
                jsonb_build_object('prompt', prompt, 'duration', 2, 'seed', -1),
                jsonb_build_object('prompt', 'scene two of ' || i, 'duration', 3, 'seed', 7)))
            ELSE jsonb_build_object('positive_prompt', prompt, 'negative_prompt', 'blurry, low quality', 'seed', -1, 'steps', 20)
       END,
       jsonb_build_object('seed', 1000 + i), NULL,
       jsonb_build_object('filename', 'final_00001_.png', 'subfolder', 'comfyui-studio/' || output_dir, 'type', 'output'),
       jsonb_build_array(jsonb_build_object('filename', 'final_00001_.png', 'subfolder', 'comfyui-studio/' || output_dir, 'type', 'output')),
       output_dir, CASE WHEN i %% 5 >= 3 THEN %s END, NULL, %s::bigint
FROM s
"""


def _pick(index: str, values) -> str:
    """A CASE expression taking ``values[index % len(values)]`` (cheaper per row than reading a JSON array)."""
    quoted = ("'" + value.replace("'", "''") + "'" for value in values)
    return f"CASE ({index}) % {len(values)} " + " ".join(f"WHEN {number} THEN {value}" for number, value in enumerate(quoted)) + " END"


def _fill_sql(first: int, last: int, sqlite: bool, job_bytes: int | None = None) -> tuple[str, list]:
    """The statement that inserts jobs ``first`` to ``last`` (inclusive) and its parameters."""
    shape = {"step": STEP_SECONDS, "subjects": len(SUBJECTS), "styles": len(STYLES), "columns": ", ".join(COLUMNS)}
    base = str(BASE_TIME.replace(tzinfo=None))
    subjects, styles, workflows = json.dumps(SUBJECTS), json.dumps(STYLES), json.dumps(WORKFLOWS)
    if sqlite:
        shape.update(subject=_pick("i", SUBJECTS), style=_pick("i / 8", STYLES),
                     workflow_id=_pick("i", [workflow for workflow, _name in WORKFLOWS]),
                     workflow_name=_pick("i", [name for _workflow, name in WORKFLOWS]))
        return SQLITE_FILL.format(**shape), [first, last, base, ERROR_TEXT, job_bytes]
    return POSTGRES_FILL.format(**shape), [base, subjects, styles, first, last, workflows, workflows, ERROR_TEXT, job_bytes]


def fill_jobs(count: int, start: int = 0, output_root: Path | None = None, files_for: int = 0,
              batch: int = 100_000, job_bytes: int | None = None) -> float:
    """Insert jobs ``start`` to ``start + count - 1`` into the bound database; answer the seconds it took.

    The rows are make_rows' (same ids, times, prompts, statuses), generated in SQL by the database; the
    first ``files_for`` of them also get real output files under ``output_root``. Each job's ``bytes``
    is ``job_bytes`` (None: not measured).
    """
    from history.db import database
    from history.db import is_sqlite

    started = time.perf_counter()
    if output_root is not None:
        for row in make_rows(min(files_for, count), start):
            write_output(output_root, row["output"], int(row["output_dir"].rsplit("_", 1)[1], 16))
    with database.connection_context():
        if is_sqlite():
            _fill_sqlite(database, start, count, batch, job_bytes)
        else:
            for first in range(start, start + count, batch):
                sql, params = _fill_sql(first, min(first + batch, start + count) - 1, False, job_bytes)
                with database.atomic():
                    database.execute_sql(sql, params)
    return time.perf_counter() - started


def _fill_sqlite(database, start: int, count: int, batch: int, job_bytes: int | None) -> None:
    """Fill SQLite as a bulk load: rows first, then each index and what the triggers keep, built once.

    Row by row, the job table's seven indexes, the search index and the tallies each take a million
    scattered writes; sorted once at the end they are a fraction of that. The fill's connection writes
    without a journal or fsync (a crash mid-fill leaves a throw-away store broken, nothing else), and
    puts the store back in WAL mode, as the app keeps it, when it is done.
    """
    from history import search
    from history import tallies

    schema = database.execute_sql(
        "SELECT type, name, sql FROM sqlite_master WHERE tbl_name = 'job' AND type IN ('index', 'trigger') AND sql IS NOT NULL"
    ).fetchall()
    # A journal mode other than WAL needs the store to itself: another connection keeps WAL (still correct).
    database.execute_sql("PRAGMA journal_mode = OFF")
    database.execute_sql("PRAGMA synchronous = OFF")
    database.execute_sql(f"PRAGMA cache_size = -{FILL_CACHE_KIB}")
    database.execute_sql("PRAGMA temp_store = MEMORY")
    try:
        with database.atomic():
            for kind, name, _sql in schema:
                database.execute_sql(f'DROP {kind.upper()} "{name}"')
        for first in range(start, start + count, batch):
            sql, params = _fill_sql(first, min(first + batch, start + count) - 1, True, job_bytes)
            with database.atomic():
                database.execute_sql(sql, params)
    finally:
        with database.atomic():
            for _kind, _name, sql in schema:
                database.execute_sql(sql)
            # Every row, the ones stored before the fill too, indexed and counted afresh. FTS5 writes its
            # pending terms out as a new segment each 1 MB (and merges those again and again): 64 MB at a
            # time takes 40% less CPU. The setting is kept in the index, so it goes back to the default.
            database.execute_sql("INSERT INTO job_search (job_search) VALUES ('delete-all')")
            database.execute_sql(f"INSERT INTO job_search (job_search, rank) VALUES ('hashsize', {FTS_FILL_HASH_BYTES})")
            database.execute_sql(search.SQLITE_FILL)
            database.execute_sql(f"INSERT INTO job_search (job_search, rank) VALUES ('hashsize', {FTS_DEFAULT_HASH_BYTES})")
            tallies.refill(database)
        database.execute_sql("PRAGMA journal_mode = WAL")


def main(argv: list[str] | None = None) -> int:
    """Fill a fresh store and print how long it took."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--database-url", help="a throw-away database (default: SQLite in a temporary folder)")
    args = parser.parse_args(argv)

    from history import db

    data_dir = Path(tempfile.mkdtemp(prefix="bench-fill-"))
    db.bind(args.database_url or f"sqlite:///{data_dir}/studio.db")
    with db.connection():
        db.migrate()
    seconds = fill_jobs(args.jobs)
    print(f"filled {args.jobs:,} jobs in {seconds:.1f} s ({args.jobs / seconds:,.0f} rows/s) at {data_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
