"""Bulk work at scale: a delete over a filter of many jobs with their files, and the storage figures of a large store.

Run: ``python -m bench.bulk [--delete-jobs D] [--stats-jobs N] [--database-url URL]`` (D is 10,000 and N 100,000,
or 100,000 and 1,000,000 with ``STUDIO_BENCH_MILLION=1`` as `make bench MILLION=1` sets it). The delete
is one ``POST /api/admin/history/delete {"filter", "expect"}`` through the app (count again, files then
records in batches, job.deleted for each, the JSON answer naming every id); the stats are
``GET /api/admin/history/stats``, ``GET /api/admin/history/failures`` and the count behind
"Select all N matching" (``POST /api/admin/history/usage`` with a filter), each the median of a few
warm calls. Stores are filled by bench.fill (rows made in SQL); every job gets a size in ``bytes``.
A benchmark that prints figures, not a test.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

# A small real PNG (1x1), written as it is into each job folder: 100,000 Pillow encodes would time Pillow.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de"
    "0000000c4944415408d763f8cfc000000301010018dd8db00000000049454e44ae426082"
)


def make_app(data_dir: Path, database_url: str | None):
    """A studio on a fresh store (no runner, no demo) and a same-origin client."""
    from history import create_app

    config = {"TESTING": True, "START_RUNNER": False, "STUDIO_DATA_DIR": str(data_dir), "STUDIO_DEMO": "0"}
    if database_url:
        from tests.conftest import reset_postgres

        reset_postgres(database_url)
        config["STUDIO_DATABASE_URL"] = database_url
    app = create_app(config)
    client = app.test_client()
    client.environ_base["HTTP_ORIGIN"] = "http://localhost"
    return app, client


def fill(count: int, output_root: Path | None = None) -> float:
    """Fill ``count`` jobs (bench.fill), give each its size, and (with ``output_root``) its folder and file."""
    from bench.fill import fill_jobs
    from history.db import database

    started = time.perf_counter()
    fill_jobs(count, job_bytes=len(PNG))
    with database.connection_context():
        if output_root is not None:
            for (output_dir,) in database.execute_sql("SELECT output_dir FROM job").fetchall():
                folder = output_root / "comfyui-studio" / output_dir
                folder.mkdir(parents=True)
                (folder / "final_00001_.png").write_bytes(PNG)
    return time.perf_counter() - started


def median_ms(call, repeat: int = 5) -> float:
    """The median wall time of ``call()`` in milliseconds, after one warm-up call."""
    call()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def bench_delete(count: int, database_url: str | None) -> None:
    """Delete ``count`` jobs with their files in one request over a filter, and say what it took."""
    from history.db import database
    from history.db import release

    data_dir = Path(tempfile.mkdtemp(prefix="bench-bulk-delete-"))
    app, client = make_app(data_dir, database_url)
    output_root = app.config["STUDIO"].output_dir
    seconds = fill(count, output_root)
    print(f"filled {count:,} jobs with a file each in {seconds:.1f} s")
    body = {"filter": {"status": ["completed", "error", "stalled"], "queued_before": "2030-01-01T00:00:00Z"}, "expect": count}
    started = time.perf_counter()
    usage = client.post("/api/admin/history/usage", json={"filter": body["filter"]}).get_json()
    counted = time.perf_counter() - started
    started = time.perf_counter()
    answer = client.post("/api/admin/history/delete", json=body)
    deleted = time.perf_counter() - started
    report = answer.get_json()
    with database.connection_context():
        left = database.execute_sql("SELECT COUNT(*) FROM job").fetchone()[0]
    folders = sum(1 for _ in (output_root / "comfyui-studio").iterdir())
    print(f"confirm count (usage over the filter): {counted * 1000:.0f} ms for {usage['jobs']:,} jobs, {usage['bytes']:,} bytes")
    print(f"delete over the filter: HTTP {answer.status_code} in {deleted:.1f} s "
          f"({count / deleted:,.0f} jobs/s): {len(report['deleted']):,} deleted, {report['files_removed']:,} files, "
          f"{report['bytes_freed']:,} bytes, {len(report['failed'])} failed; {left} records and {folders} folders left")
    app.extensions["studio"].stop()
    release()
    shutil.rmtree(data_dir, ignore_errors=True)  # a million-job store is gigabytes


def bench_stats(count: int, database_url: str | None) -> None:
    """Fill ``count`` jobs and time the storage figures, the failures view's groups and a filter's count."""
    from history.db import release

    data_dir = Path(tempfile.mkdtemp(prefix="bench-bulk-stats-"))
    app, client = make_app(data_dir, database_url)
    seconds = fill(count)
    print(f"filled {count:,} jobs in {seconds:.1f} s")
    calls = [
        ("GET /api/admin/history/stats", lambda: client.get("/api/admin/history/stats")),
        ("GET /api/admin/history/failures", lambda: client.get("/api/admin/history/failures")),
        ("usage of a filter (status=error, the Select-all count)",
         lambda: client.post("/api/admin/history/usage", json={"filter": {"status": "error"}})),
        ("usage of the default filter (every ended job)", lambda: client.post("/api/admin/history/usage", json={"filter": {}})),
    ]
    for label, call in calls:
        assert call().status_code == 200, label
        print(f"{label}: {median_ms(call):.0f} ms (median of 5)")
    stats = client.get("/api/admin/history/stats").get_json()
    print(f"  total {stats['total']['jobs']:,} jobs, {stats['total']['bytes']:,} bytes; "
          f"{len(stats['by_workflow'])} workflows; oldest {stats['oldest']['queued_at']}")
    app.extensions["studio"].stop()
    release()
    shutil.rmtree(data_dir, ignore_errors=True)  # a million-job store is gigabytes


def main(argv: list[str] | None = None) -> int:
    """Run both benchmarks and print their figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # The large runs are `make bench MILLION=1`'s: a delete of 100,000 folders takes about 25 minutes on a
    # disk mounted with discard, so a plain `make bench` deletes 10,000 (its jobs/s is the figure that matters).
    million = os.environ.get("STUDIO_BENCH_MILLION") == "1"
    parser.add_argument("--delete-jobs", type=int, default=100_000 if million else 10_000, help="0 skips the delete")
    parser.add_argument("--stats-jobs", type=int, default=1_000_000 if million else 100_000, help="0 skips the figures")
    parser.add_argument("--database-url", help="a throw-away PostgreSQL database (default: SQLite in a temporary folder)")
    args = parser.parse_args(argv)
    store = "PostgreSQL" if args.database_url else "SQLite"
    if args.delete_jobs:
        print(f"--- delete over a filter, {args.delete_jobs:,} jobs with files ({store})")
        bench_delete(args.delete_jobs, args.database_url)
    if args.stats_jobs:
        print(f"--- storage figures at {args.stats_jobs:,} jobs ({store})")
        bench_stats(args.stats_jobs, args.database_url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
