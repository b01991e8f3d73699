"""Fixtures: an app on a temporary data folder, its client and CLI runner, and job factories with real files.

Tests that take ``app`` run on SQLite, and on PostgreSQL too when STUDIO_TEST_POSTGRES_URL names a
throw-away database (.ci/run sets one up). With the variable set, a server that does not answer fails
the tests rather than skipping them.
"""
from __future__ import annotations

import contextlib
import datetime
import itertools
import os
import shutil
import struct
import threading
import time
import uuid
import zlib
from pathlib import Path

import pytest
from bs4 import BeautifulSoup
from jinja2 import BytecodeCache
from PIL import Image
from werkzeug.serving import make_server

from history import StudioFlask
from history import create_app
from history.db import database
from history.db import release
from history.files import job_bytes
from history.models import Job
from tests.comfyui_double import ComfyUIDouble

POSTGRES_URL = os.environ.get("STUDIO_TEST_POSTGRES_URL")
DATABASES = ["sqlite"] + (["postgres"] if POSTGRES_URL else [])

# Modules that need PostgreSQL itself (not just the ``app`` fixture): not collected without a server.
collect_ignore = [] if POSTGRES_URL else ["test_events_pg.py", "test_processes.py", "test_retention_pg.py", "test_workers_pg.py"]
# A real ComfyUI is not in CI: its checks run where STUDIO_TEST_COMFYUI_URL names one (CI runs the double).
COMFYUI_URL = os.environ.get("STUDIO_TEST_COMFYUI_URL")
collect_ignore += [] if COMFYUI_URL else ["test_comfyui_live.py"]


def pytest_generate_tests(metafunc):
    """Run every test that uses ``app`` on each available database (unless it asks for one)."""
    if "database_kind" in metafunc.fixturenames:
        if metafunc.definition.get_closest_marker("sqlite_only"):
            kinds = ["sqlite"]
        elif metafunc.definition.get_closest_marker("postgres_only"):
            kinds = ["postgres"]  # its module is collected only when STUDIO_TEST_POSTGRES_URL is set
        else:
            kinds = DATABASES
        metafunc.parametrize("database_kind", kinds, scope="function")


class SharedTemplateCode(BytecodeCache):
    """Jinja's compiled templates kept in memory for every app of the session.

    Each test builds an app, and each app's Jinja environment compiled every template it rendered anew (0.1 to
    0.2 s on a first page). The code is kept by template file and source checksum (Jinja recompiles a template
    whose source changed) and by the environment's compile options, so what renders is exactly what a fresh
    compile gives.
    """

    def __init__(self):
        self.code: dict[tuple, bytes] = {}

    @staticmethod
    def options(environment) -> tuple:
        autoescape = getattr(environment.autoescape, "__func__", environment.autoescape)
        finalize = getattr(environment.finalize, "__qualname__", environment.finalize)
        return (
            environment.block_start_string, environment.block_end_string, environment.variable_start_string,
            environment.variable_end_string, environment.comment_start_string, environment.comment_end_string,
            environment.line_statement_prefix, environment.line_comment_prefix, environment.trim_blocks,
            environment.lstrip_blocks, environment.newline_sequence, environment.keep_trailing_newline,
            environment.optimized, tuple(sorted(environment.extensions)), autoescape, finalize,
        )

    def load_bytecode(self, bucket) -> None:
        code = self.code.get((bucket.key, self.options(bucket.environment)))
        if code is not None:
            bucket.bytecode_from_string(code)  # checks the source checksum; a stale entry is recompiled

    def dump_bytecode(self, bucket) -> None:
        self.code[(bucket.key, self.options(bucket.environment))] = bucket.bytecode_to_string()


def pytest_configure(config):
    # Every app the tests build (StudioFlask) shares the compiled templates (SharedTemplateCode).
    StudioFlask.jinja_options = {**StudioFlask.jinja_options, "bytecode_cache": SharedTemplateCode()}
    config.addinivalue_line("markers", "sqlite_only: runs on SQLite alone (for example, it checks SQLite files)")
    config.addinivalue_line("markers", "postgres_only: runs on PostgreSQL alone (several processes on one store)")


def reset_postgres(url: str) -> None:
    """Drop the app's tables in the throw-away PostgreSQL database."""
    from history.db import open_database

    db = open_database(url)
    db.connect()
    try:
        db.execute_sql("DROP TABLE IF EXISTS job, job_tally, job_waiting, worker, schema_version, schema_migration CASCADE")
    finally:
        release(db)


# What the schema of the throw-away database is made of (tables' columns, indexes, constraints, triggers and
# their functions), read back to tell the store the migrations made from one a test has changed.
POSTGRES_SCHEMA = """
SELECT 'column ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod) || ' '
       || a.attnotnull || ' ' || coalesce(pg_get_expr(d.adbin, d.adrelid), '')
  FROM pg_attribute a
  JOIN pg_class c ON c.oid = a.attrelid
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT 'index ' || indexdef FROM pg_indexes WHERE schemaname = current_schema()
UNION ALL
SELECT 'constraint ' || conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid)
  FROM pg_constraint WHERE connamespace = current_schema()::regnamespace
UNION ALL
SELECT 'trigger ' || pg_get_triggerdef(t.oid)
  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
 WHERE c.relnamespace = current_schema()::regnamespace AND NOT t.tgisinternal
UNION ALL
SELECT 'function ' || proname || ' ' || md5(prosrc) FROM pg_proc WHERE pronamespace = current_schema()::regnamespace
ORDER BY 1
"""
# Tables whose rows say which steps ran: kept when the others are emptied.
SCHEMA_TABLES = ("schema_migration", "schema_version")
# The schema (with its step rows) the app's start-up left on a store it migrated from nothing, per URL.
_migrated_postgres: dict[str, tuple] = {}


def postgres_schema(db) -> tuple:
    """The schema of the throw-away database as rows of text, with the steps recorded as applied."""
    rows = [row[0] for row in db.execute_sql(POSTGRES_SCHEMA).fetchall()]
    for table, column in zip(SCHEMA_TABLES, ("name", "version")):
        if db.execute_sql("SELECT to_regclass(%s)", (table,)).fetchone()[0] is not None:
            rows += [f"{table} {row[0]}" for row in db.execute_sql(f"SELECT {column} FROM {table} ORDER BY 1").fetchall()]
    return tuple(rows)


def empty_postgres(url: str) -> None:
    """Leave the throw-away database without a job, as the app's start-up would find a new one once migrated.

    When its schema is exactly what the migrations made of an empty database earlier in this session, its
    rows are deleted (the steps' rows kept; no table has a sequence to restart, and TRUNCATE's new files cost
    0.1 s, so it is kept for a store of thousands of jobs): the same store as a new one migrated, without running every step again. Anything else (a test
    changed a column, a step, a trigger) is dropped as reset_postgres does, and the app's start-up migrates
    it from nothing.
    """
    from history.db import open_database

    db = open_database(url)
    db.connect()
    try:
        if _migrated_postgres.get(url) == postgres_schema(db):
            tables = [row[0] for row in db.execute_sql(
                "SELECT quote_ident(relname) FROM pg_class WHERE relnamespace = current_schema()::regnamespace"
                " AND relkind = 'r' AND relname <> ALL(%s) ORDER BY relname = 'job' DESC", (list(SCHEMA_TABLES),)).fetchall()]
            if db.execute_sql("SELECT EXISTS (SELECT 1 FROM job OFFSET 5000)").fetchone()[0]:
                db.execute_sql(f"TRUNCATE {', '.join(tables)}")  # a large store: faster than row by row
                return
            with db.atomic():
                for table in tables:  # the job first: its triggers keep the tallies, emptied after it
                    db.execute_sql(f"DELETE FROM {table}")
            return
    finally:
        release(db)
    _migrated_postgres.pop(url, None)
    reset_postgres(url)


def remember_migrated_postgres(url: str) -> None:
    """Note the schema an app just migrated from nothing, so empty_postgres can tell it again."""
    from history.db import open_database

    db = open_database(url)
    db.connect()
    try:
        _migrated_postgres[url] = postgres_schema(db)
    finally:
        release(db)


@pytest.fixture
def database_kind() -> str:
    """The database a test runs on (parametrized by pytest_generate_tests)."""
    return "sqlite"


@pytest.fixture
def app_config(request, tmp_path, database_kind) -> dict:
    """The settings of the test app: a fresh data folder, no demo jobs, a fast poll (and, parametrized
    indirectly, the settings a test adds)."""
    config = {
        "TESTING": True,
        "STUDIO_DATA_DIR": str(tmp_path / "data"),
        "STUDIO_DEMO": "0",
        "STUDIO_POLL_SECONDS": "5",
    }
    config.update(getattr(request, "param", None) or {})
    if database_kind == "postgres":
        if "app" in request.fixturenames:
            empty_postgres(POSTGRES_URL)  # the app's start-up migrates the store before the test in any case
        else:
            reset_postgres(POSTGRES_URL)  # the test may build a store of its own: no tables at all
        config["STUDIO_DATABASE_URL"] = POSTGRES_URL
    return config


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory) -> Path:
    """A SQLite store the app's start-up migrated from nothing, made once: each ``app`` on SQLite starts from a
    copy (the same file its own start-up would make, without running every step for each test)."""
    data_dir = tmp_path_factory.mktemp("migrated-store")
    template = create_app({"TESTING": True, "STUDIO_DATA_DIR": str(data_dir), "STUDIO_DEMO": "0", "START_RUNNER": False})
    template.extensions["studio"].stop()
    release()
    store = data_dir / "studio.db"
    assert not store.with_name("studio.db-wal").exists(), "the template store was left with a write-ahead log"
    return store


@pytest.fixture
def comfyui(tmp_path):
    """A ComfyUI double whose output/ and input/ are the studio's folders (a module's app_config points at it)."""
    (tmp_path / "comfy" / "input").mkdir(parents=True)
    with ComfyUIDouble(tmp_path / "comfy" / "output", input_dir=tmp_path / "comfy" / "input") as double:
        yield double


@pytest.fixture
def app(app_config, migrated_sqlite):
    """The app, its tables created; its background work stops after the test."""
    data_dir = Path(app_config["STUDIO_DATA_DIR"])
    if "STUDIO_DATABASE_URL" not in app_config and not data_dir.exists():
        data_dir.mkdir(parents=True)
        shutil.copyfile(migrated_sqlite, data_dir / migrated_sqlite.name)
    app = create_app(app_config)
    if POSTGRES_URL and app_config.get("STUDIO_DATABASE_URL") == POSTGRES_URL and POSTGRES_URL not in _migrated_postgres:
        remember_migrated_postgres(POSTGRES_URL)
    yield app
    app.extensions["studio"].stop()
    release()


def same_origin_client(app):
    """A Flask test client that posts like the app's own page: its Origin is this site (history/web/guard.py)."""
    client = app.test_client()
    client.environ_base["HTTP_ORIGIN"] = "http://localhost"
    return client


@contextlib.contextmanager
def another_app(config: dict):
    """A second app on the same store (the next process, say); the test's own app is rebound after.

    create_app binds the shared database proxy to a new Database: close this thread's connection to the
    old one first, and the new one's after, so no connection is left for the garbage collector.
    """
    original = database.obj
    if not database.is_closed():
        database.close()
    app = create_app(config)
    try:
        yield app
    finally:
        app.extensions["studio"].stop()
        release()
        database.initialize(original)


@pytest.fixture
def client(app):
    """The app's same-origin test client (see same_origin_client)."""
    return same_origin_client(app)


@pytest.fixture
def runner(app):
    """A Flask CLI runner."""
    return app.test_cli_runner()


class LiveServer:
    """A threaded Werkzeug server on a free loopback port; ``url`` is its base, ``host`` its host:port."""

    def __init__(self, app):
        self.app = app
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.host = f"127.0.0.1:{self.server.server_port}"
        self.url = f"http://{self.host}"
        # A short poll interval lets shutdown() return at once after each test.
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), name="live-server", daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        studio = getattr(self.app, "extensions", {}).get("studio")
        if studio is not None:
            studio.stop()  # ends open websocket handlers before the server goes
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def live_server(app):
    """The app served on 127.0.0.1 for the length of one test."""
    server = LiveServer(app).start()
    yield server
    server.stop()


@pytest.fixture
def settings(app):
    """The app's resolved Settings."""
    return app.config["STUDIO"]


@pytest.fixture
def db(app):
    """An open database connection for direct queries in a test."""
    database.connect(reuse_if_open=True)
    yield database
    if not database.is_closed():
        database.close()


def wait_for(condition, timeout: float = 10.0, what: str = "condition"):
    """Poll ``condition`` until it returns something truthy and return that; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"not met in {timeout:g} s: {what}")


def soup(response) -> BeautifulSoup:
    """A response's HTML, parsed."""
    return BeautifulSoup(response.get_data(as_text=True), "html.parser")


def png_header(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` (a decompression bomb when large)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


@contextlib.contextmanager
def unremovable(folder: Path, restore_under: Path):
    """Make nothing inside ``folder`` removable for the length of the block, as a read-only folder does;
    afterwards everything under ``restore_under`` is removable again (a delete may have moved ``folder``).

    A non-root user gets the real thing (chmod 555); root ignores folder modes, so there the folder is
    made immutable (chattr +i), which refuses root too.
    """
    import subprocess

    root = os.geteuid() == 0
    if root:
        subprocess.run(["chattr", "+i", str(folder)], check=True)
    else:
        folder.chmod(0o555)
    try:
        yield folder
    finally:
        if root:
            subprocess.run(["chattr", "-R", "-i", str(restore_under)], check=True)
        else:
            subprocess.run(["chmod", "-R", "u+w", str(restore_under)], check=True)


_counter = itertools.count()
BASE_TIME = datetime.datetime(2026, 11, 28, 12, 0, 0, tzinfo=datetime.timezone.utc)


def write_image(path: Path, size=(256, 256), color=(255, 136, 0)) -> Path:
    """Write a real PNG (or any format Pillow infers from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


@pytest.fixture
def make_job(app, db):
    """Create a job record, with real output files under its output folder unless ``files=0``."""
    settings = app.config["STUDIO"]

    def make(status="completed", files=1, minutes_ago=None, **fields):
        number = next(_counter)
        prompt_id = fields.pop("prompt_id", None) or str(uuid.uuid4())
        queued_at = fields.pop("queued_at", None) or BASE_TIME - datetime.timedelta(
            minutes=minutes_ago if minutes_ago is not None else number
        )
        output_dir = fields.pop("output_dir", None) or f"{queued_at:%Y%m%d_%H%M%S}_{number:06x}"
        outputs = fields.pop("outputs", None)
        if outputs is None:
            outputs = []
            for index in range(files):
                ref = {
                    "filename": f"final_{index + 1:05d}_.png",
                    "subfolder": f"comfyui-studio/{output_dir}",
                    "type": "output",
                }
                write_image(settings.output_dir / ref["subfolder"] / ref["filename"], color=(40 * index % 256, 120, 200))
                outputs.append(ref)
        started_at = queued_at + datetime.timedelta(seconds=2) if status != "queued" else None
        finished_at = started_at + datetime.timedelta(seconds=40) if status in ("completed", "error", "stalled") else None
        values = {
            "prompt_id": prompt_id,
            "workflow_id": "txt2img-example",
            "workflow_name": "Text to image (example)",
            "status": status,
            "queued_at": queued_at,
            "started_at": started_at,
            "finished_at": finished_at,
            "duration": (finished_at - started_at).total_seconds() if finished_at else None,
            "params": {"positive_prompt": f"a lighthouse at dusk, number {number}", "negative_prompt": "blurry", "seed": 42},
            "seeds": {"seed": 42},
            "output": outputs[0] if outputs else None,
            "outputs": outputs,
            "output_dir": output_dir,
            "error": "node KSampler (#3): RuntimeError: out of memory" if status in ("error", "stalled") else None,
        }
        if status in ("completed", "error", "stalled"):
            # Measured as the runner does when a job ends.
            values["bytes"] = job_bytes(settings.output_dir, output_dir, outputs)
        values.update(fields)
        Job.insert(**values).execute()
        return Job.get_by_id(prompt_id)

    return make
