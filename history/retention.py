"""Retention: old jobs removed by rule, by `flask history prune` or hourly by STUDIO_RETENTION.

A rule names statuses, an age (jobs queued longer ago go), optionally a workflow, and whether starred
jobs go too (never, unless the rule says so). A plan lists exactly what a rule takes at one moment; the
prune deletes exactly that plan through jobs.delete_jobs, so a dry run and the real run agree. In the
server, one process at a time applies the rules (a PostgreSQL advisory lock), logs what it removed and
publishes job.deleted for each job. No Flask import.
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from history import db
from history import files
from history import jobs
from history.models import HISTORY_STATUSES
from history.models import Job
from history.models import utcnow

log = logging.getLogger(__name__)

INTERVAL_SECONDS = 3600.0
# The PostgreSQL advisory lock that lets one process at a time apply STUDIO_RETENTION ("STUDRET").
RETENTION_LOCK = 0x53545544524554


@dataclass(frozen=True)
class Rule:
    """Jobs of these statuses queued more than ``older_than`` seconds ago (of one workflow, if named)."""

    statuses: tuple[str, ...] = HISTORY_STATUSES
    older_than: float = 30 * 86400.0
    workflow_id: str | None = None
    include_starred: bool = False

    def history_filter(self, now: datetime.datetime) -> jobs.HistoryFilter:
        """The filter this rule takes at ``now``."""
        cutoff = now - datetime.timedelta(seconds=self.older_than)
        return jobs.HistoryFilter(statuses=self.statuses, workflow_id=self.workflow_id, queued_before=cutoff)


def plan(rules: list[Rule], output_root, now: datetime.datetime | None = None) -> list[tuple[Job, int]]:
    """(job, bytes it would free) for every job the rules take at ``now``, oldest first, each once."""
    now = now or utcnow()
    chosen: dict[str, tuple[Job, int]] = {}
    for rule in rules:
        query = (
            jobs.removable(rule.history_filter(now), rule.include_starred)
            .select(Job.prompt_id, Job.status, Job.workflow_id, Job.queued_at, Job.bytes, Job.output_dir, Job.outputs,
                    Job.comfyui_server)
        )
        for job in query.iterator():
            # A record from before sizes were kept is measured now (on disk), once.
            size = job.bytes if job.bytes is not None else files.job_bytes(
                files.root_of(output_root, job.comfyui_server), job.output_dir, job.outputs
            )
            chosen.setdefault(job.prompt_id, (job, size))
    return sorted(chosen.values(), key=lambda entry: (entry[0].queued_at, entry[0].prompt_id))


def prune(planned: list[tuple[Job, int]], output_root, include_starred: bool = False) -> jobs.DeleteReport:
    """Delete exactly the planned jobs (a job starred since the plan was made is kept unless starred ones go)."""
    ids = [job.prompt_id for job, _size in planned]
    return jobs.delete_jobs(ids, output_root, keep_starred=not include_starred)


@contextlib.contextmanager
def one_process_at_a_time():
    """Yield whether this process may apply the rules now (on PostgreSQL, another one may hold the lock).

    Held on this thread's connection for the whole pass (db.connection() keeps it), released after.
    SQLite serves one host, where its write lock already orders the deletes.
    """
    if db.is_sqlite():
        yield True
        return
    acquired = db.database.execute_sql("SELECT pg_try_advisory_lock(%s)", (RETENTION_LOCK,)).fetchone()[0]
    try:
        yield bool(acquired)
    finally:
        if acquired:
            db.database.execute_sql("SELECT pg_advisory_unlock(%s)", (RETENTION_LOCK,))


def apply_settings(settings, bus, now: datetime.datetime | None = None) -> jobs.DeleteReport | None:
    """Apply STUDIO_RETENTION once: delete what its rules take, log it, publish job.deleted for each.

    None when another process is applying them at this moment (it will have done the same work).
    """
    rules = [Rule(statuses=(status,), older_than=seconds) for status, seconds in settings.retention]
    if not rules:
        return None
    with db.connection():
        with one_process_at_a_time() as mine:
            if not mine:
                log.info("retention: another process is applying STUDIO_RETENTION; skipped")
                return None
            planned = plan(rules, settings.output_roots, now)
            report = prune(planned, settings.output_roots)
    for record in report.deleted_jobs:
        bus.publish("job.deleted", record)
    if report.deleted or report.failed:
        log.info(
            "retention removed %d jobs (%d files, %d bytes)%s", len(report.deleted), report.files_removed,
            report.bytes_freed, f"; {len(report.failed)} could not be removed" if report.failed else "",
        )
    for failure in report.failed:
        log.warning("retention kept %s: %s", failure["prompt_id"], failure["error"])
    return report


class RetentionTimer:
    """Apply STUDIO_RETENTION at start and then every hour, in a daemon thread."""

    def __init__(self, settings, bus, interval: float = INTERVAL_SECONDS):
        self.settings = settings
        self.bus = bus
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the timer (nothing to do without rules)."""
        if self.settings.retention and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="retention", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                apply_settings(self.settings, self.bus)
            except Exception:  # the timer must outlive a database hiccup; the next hour tries again
                log.exception("retention pass failed")
            self._stop.wait(self.interval)

    def stop(self) -> None:
        """Stop the timer."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
