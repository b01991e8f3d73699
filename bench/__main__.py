"""Run every benchmark in one go: `make bench` (or `python -m bench`). Each prints its own tables."""
from __future__ import annotations

import sys
import time

from bench import bulk
from bench import events
from bench import load
from bench import poll
from bench import thumbnails

BENCHMARKS = [
    ("Live refresh: idle poll, changed poll, the JSON API; first page at 1,000 and 100,000 jobs", poll.main, []),
    ("Thumbnails: bytes a 50-card page downloads, made vs cached", thumbnails.main, []),
    ("Completion to screen in Chromium: websocket vs polling alone", events.main, []),
    ("Load: 200 websockets and 100 pollers for 60 s with jobs running", load.main, []),
    ("Bulk: a delete over a filter of 100,000 jobs with files; storage figures at 1,000,000 jobs", bulk.main, []),
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
