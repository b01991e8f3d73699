"""Hands jobs to the executor, records their lifecycle, publishes events, watches for stalls.

``Studio`` is what one app runs beside its requests: the event bus, the workflows, the executor and the
``Runner`` (the executor's Reporter). Background work starts lazily, on the app's first request (or when
``python app.py`` starts serving), never at import or in a CLI command: a ``flask history export`` must
not reconcile the jobs of a running server. Which jobs count as "left by a previous process" is decided
when the app is created, so jobs made after that are never mistaken for leftovers.

Every write runs in its own ``database.atomic()`` on a connection held only for that write
(``db.connection()``); updates are ``UPDATE ... WHERE status IN (queued, running)``, so a job that ended
or was deleted meanwhile is never brought back.
"""
from __future__ import annotations

import datetime
import logging
import secrets
import threading
import time
import uuid

from history import db
from history import files
from history import thumbnails
from history.events import EventBus
from history.executors import make_executor
from history.executors.base import Submission
from history.models import ACTIVE_STATUSES
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
from history.workflows import ValidationError
from history.workflows import load_workflows
from history.workflows import build_graph
from history.workflows import validate_params

log = logging.getLogger(__name__)


class UnknownWorkflow(LookupError):
    """No workflow has this id (the API answers 404)."""


def new_output_dir(now: datetime.datetime | None = None) -> str:
    """A fresh job folder name: ``YYYYMMDD_HHMMSS_<6 hex>`` (UTC)."""
    now = now or utcnow()
    return f"{now:%Y%m%d_%H%M%S}_{secrets.token_hex(3)}"


class Runner:
    """The Reporter every executor calls: writes the store, publishes events, keeps progress, finds stalls."""

    def __init__(self, bus: EventBus, stall_seconds: float, settings):
        self.bus = bus
        self.settings = settings  # where output files and thumbnails live
        self.stall_seconds = float(stall_seconds)
        self.executor = None
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
        """Record that a job runs, and say so."""
        job = self._update(prompt_id, lambda job: {"status": RUNNING, "started_at": job.started_at or at})
        if job is None:
            self.unfollow(prompt_id)
            return
        self.follow(prompt_id, running=True)
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
        outputs = list(outputs or [])
        # Made before the event goes out, so the page that shows the new card finds its thumbnail ready.
        self.warm_thumbnail(outputs)
        self._finish(prompt_id, at, COMPLETED, "job.completed", {
            "outputs": [clean_ref(ref) for ref in outputs],
            "output": best_output(outputs),
            "error": None,
        })

    def warm_thumbnail(self, outputs: list[dict]) -> None:
        """Make the thumbnail a job's card shows (its first image)."""
        images = card_images(outputs)
        if not images:
            return
        settings = self.settings
        located = files.locate_ref(images[0], settings.output_dir, settings.input_dir, settings.data_dir)
        if located is None:
            return  # a temp preview (its card shows a placeholder) or an unsafe reference
        source = located[2]
        if thumbnails.can_thumbnail(source.name):
            thumbnails.make_thumbnail(source, settings.thumbnail_dir)  # never raises; None when it cannot

    def failed(self, prompt_id: str, error: str, at: datetime.datetime, status: str = ERROR) -> None:
        """Record a failed (``error``) or lost (``stalled``) job, and say so."""
        status = STALLED if status == STALLED else ERROR
        self._finish(prompt_id, at, status, "job.stalled" if status == STALLED else "job.failed", {"error": str(error)})

    def _finish(self, prompt_id: str, at: datetime.datetime, status: str, event: str, values: dict) -> Job | None:
        def change(job: Job) -> dict:
            started_at = job.started_at
            # Duration is the run, never the queue wait; a job that never started has none.
            duration = max(0.0, (at - started_at).total_seconds()) if started_at else None
            return {"status": status, "finished_at": at, "duration": duration, **values}

        job = self._update(prompt_id, change)
        self.unfollow(prompt_id)
        if job is not None:
            self.bus.publish(event, job.to_dict())
        return job

    def _update(self, prompt_id: str, change) -> Job | None:
        """Apply ``change(job)`` to a queued or running job in one transaction; None when it is not active."""
        with db.connection() as database:
            with database.atomic():
                job = Job.get_or_none(Job.prompt_id == prompt_id)
                if job is None or job.status not in ACTIVE_STATUSES:
                    return None
                values = change(job)
                updated = (
                    Job.update(**values)
                    .where((Job.prompt_id == prompt_id) & (Job.status.in_(ACTIVE_STATUSES)))
                    .execute()
                )
                if not updated:
                    return None
                return Job.get_or_none(Job.prompt_id == prompt_id)

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


class Studio:
    """What one app runs beside its requests: the event bus, workflows, runner and executor."""

    def __init__(self, settings, bus: EventBus, start_runner: bool = True):
        self.settings = settings
        self.bus = bus
        self.start_runner = start_runner
        self.workflows, self.workflow_errors = load_workflows(settings.workflows_dir)
        self.runner = Runner(bus, settings.stall_seconds, settings)
        self.executor = make_executor(settings, self.runner)
        self.runner.executor = self.executor
        self.leftovers: list[tuple[str, str]] = []  # (prompt_id, status) found queued/running at creation
        self.demo_wanted = False
        self.demo_thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._started = False
        self._stopped = False

    @property
    def started(self) -> bool:
        """Whether background work runs."""
        return self._started

    def snapshot_leftovers(self) -> None:
        """Note the jobs a previous process left queued or running (they are reconciled at start)."""
        with db.connection():
            self.leftovers = list(
                Job.select(Job.prompt_id, Job.status)
                .where(Job.status.in_(ACTIVE_STATUSES))
                .order_by(Job.queued_at)
                .tuples()
            )
            # The demo runs on the built-in executor only: a real ComfyUI server gets no unasked-for work.
            if self.settings.demo and not self.settings.comfyui_url:
                self.demo_wanted = not Job.select().exists()

    def start(self) -> None:
        """Start the executor, reconcile leftovers, watch for stalls, and queue the demo (once)."""
        with self._lock:
            if self._started or self._stopped or not self.start_runner:
                return
            self._started = True
        for prompt_id, _status in self.leftovers:
            # Followed, but not watched for stalls until this process hears from them: another live process
            # may be running them (several workers on PostgreSQL), and the executor settles them itself:
            # the built-in one marks them stalled now, ComfyUI's asks the server what became of them.
            self.runner.follow(prompt_id)
        self.bus.start()
        self.executor.start([prompt_id for prompt_id, _status in self.leftovers])
        self.runner.start()
        if self.demo_wanted:
            from history import demo

            self.demo_thread = threading.Thread(target=demo.run, args=(self,), name="studio-demo", daemon=True)
            self.demo_thread.start()

    def stop(self) -> None:
        """Stop background work promptly (threads are daemons; this joins them)."""
        with self._lock:
            self._stopped = True
            started, self._started = self._started, False
        if self.demo_thread is not None:
            self.demo_thread.join(timeout=10)
        self.runner.stop()
        if started:
            self.executor.stop()
        self.bus.stop()

    # ---- running a workflow ------------------------------------------------------------------------

    def workflow(self, workflow_id: str):
        """The workflow with this id; raise UnknownWorkflow."""
        workflow = self.workflows.get(workflow_id)
        if workflow is None:
            raise UnknownWorkflow(f"no workflow {workflow_id!r}")
        return workflow

    def execute(self, workflow_id: str, params=None, input_image: str | None = None, retry_of: str | None = None) -> Job:
        """Validate, record as queued, and hand a job to the executor; return the job.

        Raises UnknownWorkflow, ValidationError (naming the field), or the executor's ExecutorUnavailable
        / ExecutorRejected, in which case no record is left behind. A retry (``retry_of``) reuses the
        original's resolved seeds, input image and (when none are given) parameters.
        """
        from history import jobs

        workflow = self.workflow(workflow_id)
        previous_seeds = None
        if retry_of is not None:
            original = jobs.get_job(retry_of) if isinstance(retry_of, str) else None
            if original is None:
                raise ValidationError("retry_of", f"no job with prompt_id {retry_of!r}")
            if original.workflow_id != workflow.id:
                raise ValidationError("retry_of", f"job {retry_of} ran {original.workflow_id}, not {workflow.id}")
            if params is None:
                params = original.params
            if input_image is None:
                input_image = original.input_image
            previous_seeds = original.seeds
        if input_image is not None:
            if not isinstance(input_image, str):
                raise ValidationError("input_image", "must be a file name in the input folder")
            try:
                path = files.input_file(self.settings.input_dir, input_image)
            except files.UnsafePath as error:
                raise ValidationError("input_image", str(error)) from None
            if "/" in input_image or not path.is_file():
                raise ValidationError("input_image", f"no file {input_image!r} in the input folder")
        clean, seeds = validate_params(workflow, params, input_image, previous_seeds)
        prompt_id = str(uuid.uuid4())
        now = utcnow()
        output_dir = new_output_dir(now)
        graph = build_graph(workflow, clean, seeds, output_dir, input_image)
        with db.connection() as database:
            with database.atomic():
                Job.insert(
                    prompt_id=prompt_id,
                    workflow_id=workflow.id,
                    workflow_name=workflow.name,
                    status=QUEUED,
                    queued_at=now,
                    params=clean,
                    seeds=seeds,
                    input_image=input_image,
                    outputs=[],
                    output_dir=output_dir,
                    retry_of=retry_of,
                ).execute()
            job = Job.get_by_id(prompt_id)
        record = job.to_dict()
        self.runner.follow(prompt_id)
        self.bus.publish("job.queued", record)
        try:
            self.executor.submit(Submission(prompt_id, workflow.id, graph, output_dir, input_image))
        except Exception:
            # The executor never took it: no record is left behind.
            self.runner.unfollow(prompt_id)
            with db.connection() as database:
                with database.atomic():
                    Job.delete().where((Job.prompt_id == prompt_id) & (Job.status == QUEUED)).execute()
            self.bus.publish("job.deleted", record)
            raise
        if retry_of is not None:
            self.bus.publish("job.retried", record)
        return job


def load_job_dict(prompt_id: str) -> dict | None:
    """A job's API dict read from the store (for events that reach this process by id), or None."""
    with db.connection():
        job = Job.get_or_none(Job.prompt_id == prompt_id)
        return job.to_dict() if job is not None else None


def make_bus(settings) -> EventBus:
    """The event bus: in-process for SQLite; with PostgreSQL, LISTEN/NOTIFY reaches every process."""
    if db.is_sqlite():
        return EventBus()
    from history.events_pg import PostgresEventBus

    return PostgresEventBus(settings.database_url, load_job=load_job_dict)


def init_app(app) -> None:
    """Attach the Studio to the app; its background work starts on the first request."""
    settings = app.config["STUDIO"]
    instance = Studio(settings, make_bus(settings), start_runner=bool(app.config.get("START_RUNNER", True)))
    for error in instance.workflow_errors:
        app.logger.warning("workflow skipped: %s", error)
    instance.snapshot_leftovers()
    app.extensions["studio"] = instance

    @app.before_request
    def _start_studio():
        if not instance.started:
            instance.start()


def studio(app=None) -> Studio:
    """The Studio of the current (or given) app."""
    from flask import current_app

    return (app or current_app).extensions["studio"]
