"""Hands jobs to the executor, records their lifecycle, publishes events, watches for stalls.

The ``Runner`` is the Reporter every executor calls (history/studio.py builds one per app).
Its writes go through history.jobs (update_active): each in its own transaction on a connection held only
for that write, and only while the job is queued or running, so a job that ended or was deleted meanwhile
is never brought back. One exception: a job marked stalled (its worker went silent, another took it over)
whose executor reports its real end after all records that end, completed or error, with the stall kept in
its ``error`` ("stalled at 14:03:05 UTC (...), then completed at 14:05:10 UTC").
"""
from __future__ import annotations

import datetime
import logging
import secrets
import threading
import time

from history import files
from history import jobs
from history import thumbnails
from history.db import is_busy
from history.events import EventBus
from history.metrics import Metrics
from history.models import COMPLETED
from history.models import ERROR
from history.models import QUEUED
from history.models import RUNNING
from history.models import STALLED
from history.models import Job
from history.models import best_output
from history.models import card_images
from history.models import clean_ref
from history.models import utcnow

log = logging.getLogger(__name__)


def saved_outputs(outputs) -> list[dict]:
    """The files that last (``type: "output"``): ComfyUI empties temp/ at every start, so previews are never a job's."""
    return [ref for ref in outputs or [] if isinstance(ref, dict) and ref.get("type", "output") == "output"]


def new_output_dir(now: datetime.datetime | None = None) -> str:
    """A fresh job folder name: ``YYYYMMDD_HHMMSS_<6 hex>`` (UTC)."""
    now = now or utcnow()
    return f"{now:%Y%m%d_%H%M%S}_{secrets.token_hex(3)}"


# How long a job's own write waits for a busy store (a full connection pool, another writer's lock) before
# it gives up: a write lost there would leave the job queued or running for good.
BUSY_WRITE_WAIT_SECONDS = 120.0


def after_stall(job: Job, status: str, at: datetime.datetime, error: str | None) -> str:
    """Write the ``error`` of a stalled job that then truly ended: the stall, when and why, then the real end."""
    stalled = f"stalled at {job.finished_at:%H:%M:%S} UTC ({job.error})" if job.finished_at else f"stalled ({job.error})"
    if status == COMPLETED:
        return f"{stalled}, then completed at {at.astimezone(datetime.timezone.utc):%H:%M:%S} UTC"
    return f"{stalled}, then failed: {error}"


class Runner:
    """The Reporter every executor calls: writes the store, publishes events, keeps progress, finds stalls."""

    def __init__(self, bus: EventBus, stall_seconds: float, settings, metrics: Metrics | None = None):
        self.bus = bus
        self.metrics = metrics if metrics is not None else Metrics()  # executions started and finished
        self.settings = settings  # where output files and thumbnails live
        self.stall_seconds = float(stall_seconds)
        self.executor = None
        self.owner: str | None = None  # this process's worker id: the owner of the jobs it records (history/workers.py)
        self.on_end = None  # called after each job of this process ends (a worker then claims the next)
        self._lock = threading.Lock()
        self._progress: dict[str, dict] = {}
        self._followed: set[str] = set()  # jobs of this process (or left to it at start-up)
        self._running: set[str] = set()
        self._last_event: dict[str, float] = {}  # time.monotonic() of the last event
        self._last_event_at: dict[str, datetime.datetime] = {}
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    # ---- what the queue page and tests read ------------------------------------------------------

    def progress_snapshot(self) -> dict[str, dict]:
        """Progress of every job this process follows, by prompt_id."""
        with self._lock:
            return {prompt_id: dict(progress) for prompt_id, progress in self._progress.items()}

    # ---- following jobs --------------------------------------------------------------------------

    def follow(self, prompt_id: str, running: bool = False) -> None:
        """Start watching a job for stalls (queued jobs wait; running ones must keep reporting)."""
        with self._lock:
            self._followed.add(prompt_id)
            if running:
                self._running.add(prompt_id)
            self._touch(prompt_id)

    def followed_ids(self) -> set[str]:
        """List the jobs this process follows now (queued in its executor or running)."""
        with self._lock:
            return set(self._followed)

    def unfollow(self, prompt_id: str) -> None:
        """Forget a job (it ended, or it was deleted)."""
        with self._lock:
            self._followed.discard(prompt_id)
            self._running.discard(prompt_id)
            self._progress.pop(prompt_id, None)
            self._last_event.pop(prompt_id, None)
            self._last_event_at.pop(prompt_id, None)

    def _touch(self, prompt_id: str) -> None:
        self._last_event[prompt_id] = time.monotonic()
        self._last_event_at[prompt_id] = utcnow()

    # ---- the Reporter interface ------------------------------------------------------------------

    def started(self, prompt_id: str, at: datetime.datetime) -> None:
        """Record that a job runs, and say so once (a process that took over a running job says nothing)."""
        was = {}

        def change(job: Job) -> dict:
            was["status"] = job.status
            # The earliest start anyone reported: another client's job seen running in /queue gets its
            # real start from ComfyUI's history later.
            return {"status": RUNNING, "started_at": min(job.started_at, at) if job.started_at else at}

        job = self._update(prompt_id, change)
        if job is None:
            self.unfollow(prompt_id)
            return
        self.follow(prompt_id, running=True)
        if was.get("status") != RUNNING:
            self.metrics.executions_started.inc()
            self.bus.publish("job.started", job.to_dict())

    def progress(self, prompt_id: str, node: str | None, value: int, maximum: int) -> None:
        """Keep a job's progress in memory (it is per process and short-lived) and say so."""
        progress = {"prompt_id": prompt_id, "node": node, "value": value, "max": maximum}
        with self._lock:
            if prompt_id not in self._followed:
                return
            self._progress[prompt_id] = progress
            self._touch(prompt_id)
        self.bus.publish("job.progress", progress)

    def completed(self, prompt_id: str, outputs: list[dict], at: datetime.datetime) -> None:
        """Record a finished job with its files, and say so."""
        outputs = saved_outputs(outputs)
        # Made before the event goes out, so the page that shows the new card finds its thumbnail ready.
        self.warm_thumbnail(outputs, self.servers_of([prompt_id]).get(prompt_id) if outputs else None)
        self._finish(prompt_id, at, COMPLETED, "job.completed", {
            "outputs": [clean_ref(ref) for ref in outputs],
            "output": best_output(outputs),
            "error": None,
        })

    def warm_thumbnail(self, outputs: list[dict], server: str | None = None) -> None:
        """Make the thumbnail a job's card shows (its first image, in the output folder of its ComfyUI ``server``)."""
        images = card_images(outputs)
        if not images:
            return
        settings = self.settings
        output_root = settings.output_roots.of(server)
        located = files.locate_ref(images[0], output_root, settings.input_dir, settings.data_dir)
        if located is None:
            return  # a temp preview (its card shows a placeholder) or an unsafe reference
        source = located[2]
        if thumbnails.can_thumbnail(source.name):
            thumbnails.make_thumbnail(source, settings.thumbnail_dir)  # never raises; None when it cannot

    def failed(
        self, prompt_id: str, error: str, at: datetime.datetime, status: str = ERROR, outputs: list[dict] | None = None
    ) -> None:
        """Record a failed (``error``) or lost (``stalled``) job with what it saved before, and say so."""
        status = STALLED if status == STALLED else ERROR
        values = {"error": str(error)}
        saved = saved_outputs(outputs)
        if saved:
            values.update(outputs=[clean_ref(ref) for ref in saved], output=best_output(saved))
        self._finish(prompt_id, at, status, "job.stalled" if status == STALLED else "job.failed", values)

    # ---- several ComfyUI servers ------------------------------------------------------------------

    def placed(self, prompt_id: str, server: str) -> None:
        """Record the ComfyUI server a job is handed to (its files are found in that server's output folder)."""
        self._update(prompt_id, lambda job: {"comfyui_server": server})

    def moved(self, prompt_id: str, server: str, note: str) -> None:
        """Record the server a queued job now waits on, and why, in its ``error`` (a note the job keeps when it
        completes); a job that started or ended meanwhile is left as it is."""
        self._update(prompt_id, lambda job: {"comfyui_server": server, "error": note} if job.status == QUEUED
                           else {"comfyui_server": job.comfyui_server})

    def servers_of(self, prompt_ids: list[str]) -> dict[str, str | None]:
        """Look up the ComfyUI server each job was handed to (None when none is recorded)."""
        return jobs.servers_of(prompt_ids)

    # ---- prompts other clients queued on ComfyUI --------------------------------------------------

    def observed(self, record: dict, status: str) -> bool:
        """Record a prompt another client queued as queued or running, and say so; False if the store has it."""
        job = jobs.insert_observed(record, status, owner=self.owner)
        if job is None:
            return False
        self.follow(job.prompt_id, running=job.status == RUNNING)
        self.bus.publish("job.queued", job.to_dict())
        if job.status == RUNNING:
            self.bus.publish("job.started", job.to_dict())
        return True

    def unknown(self, prompt_ids: list[str]) -> list[str]:
        """The ids the store has no record of."""
        return jobs.unknown_ids(prompt_ids)

    def recorded(self, records: list[dict], announce: bool = True) -> tuple[int, list[dict]]:
        """Store finished prompts of other clients that the store lacks; publish each end when ``announce``."""
        for record in records:
            record["outputs"] = saved_outputs(record.get("outputs"))
            if announce:
                self.warm_thumbnail(record["outputs"], record.get("comfyui_server"))
        taken, refused = jobs.insert_finished(records, self.settings.output_roots)
        if announce:
            for job in taken:
                self.bus.publish("job.completed" if job.status == COMPLETED else "job.failed", job.to_dict())
        return len(taken), refused

    def _finish(self, prompt_id: str, at: datetime.datetime, status: str, event: str, values: dict) -> Job | None:
        def change(job: Job) -> dict:
            started_at = job.started_at
            # Duration is the run, never the queue wait; a job that never started has none.
            duration = max(0.0, (at - started_at).total_seconds()) if started_at else None
            # Measured once, as the job ends, so storage totals are sums over the store.
            output_root = self.settings.output_roots.of(job.comfyui_server)
            size = files.job_bytes(output_root, job.output_dir, values.get("outputs", job.outputs))
            ended = {"status": status, "finished_at": at, "duration": duration, "bytes": size, **values}
            if job.status == STALLED:
                ended["error"] = after_stall(job, status, at, values.get("error"))
            elif job.error:
                # A note the job carried while active (it was moved to another server) stays with its end.
                ended["error"] = job.error if status == COMPLETED else f"{values.get('error')} ({job.error})"
            return ended

        # Only a real end may follow a stall: a second stall report changes nothing.
        job = self._update(prompt_id, change, after_stall=status != STALLED)
        self.unfollow(prompt_id)
        if self.on_end is not None:
            self.on_end()
        if job is not None:
            self.metrics.executions_finished.labels(status).inc()
            self.bus.publish(event, job.to_dict())
        return job

    def _update(self, prompt_id: str, change, after_stall: bool = False) -> Job | None:
        """Write a job's change (jobs.update_active), waiting out a busy store rather than losing the write."""
        deadline = time.monotonic() + BUSY_WRITE_WAIT_SECONDS
        delay = 0.05
        while True:
            try:
                return jobs.update_active(prompt_id, change, after_stall=after_stall)
            except Exception as error:
                # A busy store wrote nothing; give up only when stopping or after BUSY_WRITE_WAIT_SECONDS.
                if not is_busy(error) or time.monotonic() + delay > deadline or self._stop.is_set():
                    raise
                log.warning("store busy while recording job %s (%s); trying again", prompt_id, error)
            self._stop.wait(delay)
            delay = min(delay * 2, 1.0)

    # ---- stalls ----------------------------------------------------------------------------------

    def check_stalls(self) -> list[str]:
        """Mark running jobs with no event for stall_seconds as stalled; return their ids."""
        cutoff = time.monotonic() - self.stall_seconds
        with self._lock:
            quiet = [(prompt_id, self._last_event_at[prompt_id]) for prompt_id in self._running
                     if self._last_event.get(prompt_id, cutoff + 1) <= cutoff]
        stalled = []
        for prompt_id, since in quiet:
            self.executor.forget(prompt_id)
            message = (
                f"no progress since {since.isoformat(timespec='seconds')} "
                f"(STUDIO_STALL_SECONDS={self.stall_seconds:g}); the executor stopped reporting"
            )
            if self._finish(prompt_id, utcnow(), STALLED, "job.stalled", {"error": message}) is not None:
                stalled.append(prompt_id)
        return stalled

    def _watch(self) -> None:
        interval = max(0.02, min(1.0, self.stall_seconds / 5))
        while not self._stop.wait(interval):
            try:
                self.check_stalls()
            except Exception:  # the watcher must outlive a database hiccup
                log.exception("stall check failed")

    def start(self) -> None:
        """Start the stall watcher."""
        if self._watcher is None:
            self._stop.clear()
            self._watcher = threading.Thread(target=self._watch, name="stall-watcher", daemon=True)
            self._watcher.start()

    def stop(self) -> None:
        """Stop the stall watcher."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
            self._watcher = None
