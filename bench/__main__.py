"""Run every benchmark in one go: `make bench` (or `python -m bench`). Each prints its own tables."""
from __future__ import annotations

import sys
import time

from bench import bulk
from bench import events
from bench import poll
from bench import scale
from bench import thumbnails
from bench import workers

BENCHMARKS = [
    ("Live refresh: idle poll, changed poll, the JSON API on 200 jobs", poll.main, ["--jobs"]),
    ("Thumbnails: bytes a 50-card page downloads, made vs cached", thumbnails.main, []),
    ("Completion to screen in Chromium: websocket vs polling alone", events.main, []),
    ("Bulk: a delete over a filter of 10,000 jobs with files, storage figures at 100,000 jobs (100,000 and 1,000,000 with MILLION=1)", bulk.main, []),
    ("Web and worker processes on PostgreSQL: jobs/s through 1 and 2 workers, fan-out over 3 web processes",
     workers.main, []),
    # Last, so its table of every target beside its goal ends the output (STUDIO_BENCH_MILLION=1 adds 1M jobs).
    ("Scale targets: req/s, 1k to 100k (1M) jobs, 1,000 viewers, thumbnails on arrival", scale.main, []),
]


def main() -> int:
    """Run the benchmarks in turn; exit non-zero if one reports a failure."""
    status = 0
    for title, run, argv in BENCHMARKS:
        print(f"\n=== {title}", flush=True)
        started = time.perf_counter()
        status = run(argv) or status
        print(f"--- {time.perf_counter() - started:.0f} s", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
