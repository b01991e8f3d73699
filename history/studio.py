"""The Studio: what one app runs beside its requests (event bus, workflows, executor, runner), and its accessor.

Background work starts lazily, on the app's first request (or when ``studio-history serve`` starts),
never at import or in a CLI command: a ``flask history export`` must not reconcile the jobs of a running
server. What starts follows STUDIO_ROLE:
- ``web``: only the event bus's listener (PostgreSQL), so its websockets and idle polls hear every process;
  a job posted to it is recorded queued and left in job_waiting for a worker (history/workers.py).
- ``worker`` and ``all``: the executor, the stall watcher, retention, and the WorkerLoop (heartbeat, claims
  of waiting jobs, take-over of silent workers' jobs); ``all`` also serves everything and runs the demo. A
  job posted to them is theirs at once. On SQLite one process runs jobs (workers.RunnerLock).
The ``START_RUNNER=False`` app setting (a hook for tests and host apps, not a STUDIO_* setting) starts none
of it: the app serves like a ``web`` process that hears no other, and a job posted to it waits for a worker.
Active jobs that no worker holds (an older studio's, imported ones) are settled by the first process that
starts after they were noted, when the app was created, so jobs made after that are never mistaken for
leftovers.
"""
from __future__ import annotations

import logging
import threading
import uuid

from flask import current_app

from history import db
from history import demo
from history import files
from history import jobs
from history import workers
from history.arrivals import ThumbnailMaker
from history.events import EventBus
from history.executors import make_executor
from history.executors.base import Submission
from history.executors.builtin import BuiltinExecutor
from history.executors.comfyui_graph import COMFYUI_WORKFLOW_ID
from history.metrics import Metrics
from history.models import Job
from history.models import utcnow
from history.retention import RetentionTimer
from history.retry_guard import RetryGuard
from history.runner import Runner
from history.runner import new_output_dir
from history.workflows import RetryPlan
from history.workflows import ValidationError
from history.workflows import build_graph
from history.workflows import load_workflows
from history.workflows import plan_retry
from history.workflows import validate_params


log = logging.getLogger(__name__)


class UnknownWorkflow(LookupError):
    """No workflow has this id (the API answers 404)."""


class Studio:
    """What one app runs beside its requests: the event bus, workflows, runner and executor."""

    def __init__(self, settings, bus: EventBus, start_runner: bool = True):
        self.settings = settings
        self.bus = bus
        self.start_runner = start_runner
        self.role = settings.role
        # Whether this process runs the jobs posted to it (else they wait in the store for a worker).
        self.runs_jobs = start_runner and self.role != "web"
        self.worker_id = workers.new_worker_id()
        self.worker_loop: workers.WorkerLoop | None = None
        self.runner_lock: workers.RunnerLock | None = None
        self.refusal: str | None = None  # why this process may not run jobs (another runs them on SQLite)
        self.workflows, self.workflow_errors = load_workflows(settings.workflows_dir)
        self.metrics = Metrics(count_by_status=jobs.count_by_status)  # this app's own registry (/metrics)
        self.runner = Runner(bus, settings.stall_seconds, settings, self.metrics)
        self.executor = make_executor(settings, self.runner)
        self.runner.executor = self.executor
        self.runner.owner = self.worker_id if self.runs_jobs else None
        self.thumbnails = ThumbnailMaker(settings)  # card thumbnails made as jobs end, not when a page asks
        self.retention = RetentionTimer(settings, bus)  # STUDIO_RETENTION, hourly
        self.leftovers: list[str] = []  # active jobs no worker held when the app was created
        self.retry_guard = RetryGuard()
        self.demo_wanted = False
        self.demo_thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._started = False
        self._stopped = False

    @property
    def started(self) -> bool:
        """Whether background work runs."""
        return self._started

    def live_worker_count(self) -> int | None:
        """How many workers could run what this process records; None when it runs jobs itself (not a web process)."""
        if self.role != "web":  # only a web process runs no jobs
            return None
        return len(workers.live_workers(workers.EXPIRY_BEATS * self.settings.heartbeat_seconds))

    def server_states(self) -> list[dict]:
        """Each ComfyUI server (url, up, queue_remaining) as this process sees it, or, when it follows none (it runs
        no jobs), as the live workers last wrote it; up None when no live worker reports it. [] without ComfyUI."""
        states = getattr(self.executor, "server_states", None)
        if states is None:
            return []
        if self.started and self.runs_jobs:
            return states()
        try:
            shared = workers.shared_server_states(workers.EXPIRY_BEATS * self.settings.heartbeat_seconds)
        except Exception as error:  # a health check must answer while the store is away; nothing is known then
            log.warning("could not read the workers' view of the ComfyUI servers: %s", error)
            shared = {}
        return [shared.get(state["url"], {"url": state["url"], "up": None, "queue_remaining": None}) for state in states()]

    def snapshot_leftovers(self) -> None:
        """Note the active jobs no worker holds (the first process to start after this settles them)."""
        if not self.runs_jobs:
            return
        self.leftovers = workers.ownerless_active()
        # The demo runs on the built-in executor only: a real ComfyUI server gets no unasked-for work.
        if self.settings.demo and not self.settings.comfyui_urls and self.role == "all":
            self.demo_wanted = jobs.store_is_empty()

    def start(self) -> None:
        """Start what this process's role runs (see the module's docstring), once.

        Raises workers.RunnerRefused when another process already runs jobs on this SQLite store.
        """
        with self._lock:
            if self._started or self._stopped or not self.start_runner or self.refusal:
                return
            if self.runs_jobs and db.is_sqlite():
                self.runner_lock = workers.RunnerLock(db.database.obj.database)
                try:
                    self.runner_lock.acquire()
                except workers.RunnerRefused as refused:
                    self.refusal = str(refused)
                    raise
            self._started = True
        self.bus.start()
        self.thumbnails.start(self.bus)
        if not self.runs_jobs:
            return
        self.executor.start([])
        self.worker_loop = workers.WorkerLoop(
            self.worker_id, self.role, self.settings.heartbeat_seconds, self.runner, self.executor, self.bus,
            alone=self.runner_lock is not None,
        )
        self.worker_loop.start(self.leftovers)
        self.runner.start()
        self.retention.start()
        if self.demo_wanted:
            self.demo_thread = threading.Thread(target=demo.run, args=(self,), name="studio-demo", daemon=True)
            self.demo_thread.start()

    def stop(self) -> None:
        """Stop background work promptly (threads are daemons; this joins them); a worker gives back the jobs
        it never started and retires, so another takes over what it ran at once."""
        with self._lock:
            self._stopped = True
            started, self._started = self._started, False
        if self.demo_thread is not None:
            self.demo_thread.join(timeout=10)
        if self.worker_loop is not None:
            if started and self.role == "worker" and isinstance(self.executor, BuiltinExecutor):
                # A restart (deploy, systemctl restart) should not stall the jobs this process runs: they end here.
                log.warning("worker %s stopping: letting its running jobs finish (at most %d s)",
                            self.worker_id, workers.WIND_DOWN_SECONDS)
                given, running = self.worker_loop.wind_down(workers.WIND_DOWN_SECONDS)
                log.warning("worker %s stopped: %d job(s) not started went back to the waiting line; %s",
                            self.worker_id, len(given),
                            f"{running} still running are left to another worker" if running
                            else "every job it ran ended")
            self.worker_loop.stop()
        self.runner.stop()
        self.retention.stop()
        if started and self.runs_jobs:
            self.executor.stop()
            try:
                unstarted = self.executor.unstarted()
                workers.give_back(self.worker_id, unstarted)
                workers.retire(self.worker_id)
                if self.role == "worker" and not isinstance(self.executor, BuiltinExecutor):
                    # Its ComfyUI jobs go on on their servers: another worker takes them over at once.
                    log.warning("worker %s stopped: %d job(s) not posted went back to the waiting line; the "
                                "ones on ComfyUI are left to another worker", self.worker_id, len(unstarted))
            except Exception:  # the store may be gone already; the heartbeat then expires by itself
                log.exception("could not retire worker %s", self.worker_id)
        if self.runner_lock is not None:
            self.runner_lock.release()
            self.runner_lock = None
        self.bus.stop()
        self.thumbnails.stop()

    # ---- running a workflow ------------------------------------------------------------------------

    def workflow(self, workflow_id: str):
        """The workflow with this id; raise UnknownWorkflow."""
        workflow = self.workflows.get(workflow_id)
        if workflow is None:
            raise UnknownWorkflow(f"no workflow {workflow_id!r}: it is not installed in this studio")
        return workflow

    def delete(self, delete) -> jobs.DeleteReport:
        """Run ``delete()`` (a jobs.delete_* call), timed and counted, and publish job.deleted for each job gone."""
        with self.metrics.delete_duration.time():
            try:
                report = delete()
            except jobs.StoreBusy as busy:
                self._announce_deleted(busy.report)  # the jobs deleted before the lock was met are gone: say so
                raise
        self._announce_deleted(report)
        return report

    def _announce_deleted(self, report: jobs.DeleteReport) -> None:
        """Count and publish job.deleted for each job a delete removed."""
        self.metrics.deleted_jobs.inc(len(report.deleted))
        for record in report.deleted_jobs:
            self.bus.publish("job.deleted", record)

    def delete_jobs(self, prompt_ids: list[str]) -> jobs.DeleteReport:
        """Delete these jobs with their files (jobs.delete_jobs), as delete() does."""
        return self.delete(lambda: jobs.delete_jobs(prompt_ids, self.settings.output_roots))

    def retry_plan(self, job: Job):
        """What a Retry of ``job`` would run now (workflows.plan_retry), or why it cannot run."""
        if job.workflow_id == COMFYUI_WORKFLOW_ID:
            # Its own graph runs again as it was; only a ComfyUI server can run it.
            reason = None if self.settings.comfyui_urls else "it ran on ComfyUI; set STUDIO_COMFYUI_URL to run it again"
            return RetryPlan(params=dict(job.params or {}), input_image=job.input_image, reason=reason)
        return plan_retry(self.workflows.get(job.workflow_id), job.params, job.input_image)

    def execute(self, workflow_id: str, params=None, input_image: str | None = None, retry_of: str | None = None) -> Job:
        """Validate, record as queued, and hand a job to the executor; return the job.

        Raises UnknownWorkflow, ValidationError (naming the field), or the executor's ExecutorUnavailable
        / ExecutorRejected, in which case no record is left behind. A retry (``retry_of``) reuses the
        original's resolved seeds, input image and (when none are given) parameters.
        """
        if workflow_id == COMFYUI_WORKFLOW_ID:
            return self.rerun_comfyui_prompt(retry_of)
        workflow = self.workflow(workflow_id)
        previous_seeds = None
        notes: list[str] = []
        if retry_of is not None:
            original = jobs.get_job(retry_of) if isinstance(retry_of, str) else None
            if original is None:
                raise ValidationError("retry_of", f"no job with prompt_id {retry_of!r}")
            if original.workflow_id != workflow.id:
                raise ValidationError("retry_of", f"job {retry_of} ran {original.workflow_id}, not {workflow.id}")
            if params is None:
                # The recorded params, fitted to the workflow as installed now; the notes say what changed.
                plan = plan_retry(workflow, original.params, input_image or original.input_image)
                params, input_image, notes = plan.params, plan.input_image, plan.notes
            elif input_image is None:
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
        job = self._record(
            graph,
            prompt_id=prompt_id,
            workflow_id=workflow.id,
            workflow_name=workflow.name,
            queued_at=now,
            params=clean,
            seeds=seeds,
            input_image=input_image,
            outputs=[],
            output_dir=output_dir,
            retry_of=retry_of,
        )
        return self._hand_over(job, Submission(prompt_id, workflow.id, graph, output_dir, input_image), notes)

    def _record(self, graph: dict, ui_workflow: dict | None = None, **values) -> Job:
        """Store a new queued job and its graph in one transaction: held by this process when it runs jobs,
        else left waiting for a worker (everything a worker needs to submit it is in the store)."""
        with db.connection(), db.database.atomic():
            job = jobs.record_queued(owner=self.worker_id if self.runs_jobs else None, **values)
            jobs.save_graph(job.prompt_id, graph, ui_workflow)
            if not self.runs_jobs:
                workers.enqueue(job.prompt_id, job.queued_at)
        return job

    def _hand_over(self, job: Job, submission: Submission, notes: list[str]) -> Job:
        """Announce a recorded job and submit it to the executor (a worker's, when this process runs none);
        when it is refused, leave no record and re-raise."""
        record = job.to_dict()
        job.retry_notes = notes
        if self.runs_jobs:
            self.runner.follow(job.prompt_id)
        self.bus.publish("job.queued", record)  # in a web process this wakes the workers (NOTIFY) too
        if self.runs_jobs:
            try:
                self.executor.submit(submission)
            except Exception:
                # The executor never took it: no record is left behind.
                self.runner.unfollow(job.prompt_id)
                jobs.discard_queued(job.prompt_id)
                self.bus.publish("job.deleted", record)
                raise
        if job.retry_of is not None:
            self.bus.publish("job.retried", record)
        return job

    def rerun_comfyui_prompt(self, retry_of) -> Job:
        """Retry a prompt another ComfyUI client queued: post its own graph again (same seeds), as ours.

        Its files go wherever its graph saves them, like the original's; the new record lists them.
        """
        original = jobs.get_job(retry_of) if isinstance(retry_of, str) else None
        if original is None or original.workflow_id != COMFYUI_WORKFLOW_ID:
            raise ValidationError("retry_of", f"no ComfyUI job with prompt_id {retry_of!r} (only a retry can run one)")
        if not self.settings.comfyui_urls:
            raise ValidationError("retry_of", "this job ran on ComfyUI; set STUDIO_COMFYUI_URL to run it again")
        kept = jobs.graph_of(original.prompt_id)
        if kept is None or not isinstance(kept.graph, dict) or not kept.graph:
            raise ValidationError("retry_of", f"job {retry_of} has no graph kept to run again")
        prompt_id = str(uuid.uuid4())
        job = self._record(
            kept.graph,
            kept.ui_workflow,
            prompt_id=prompt_id,
            workflow_id=COMFYUI_WORKFLOW_ID,
            workflow_name=original.workflow_name,
            queued_at=utcnow(),
            params=original.params,
            seeds=original.seeds,
            outputs=[],
            output_dir=None,
            retry_of=original.prompt_id,
            # Who queued the original, and that this is a retry: it runs wherever the shortest queue is now,
            # which comfyui_server records (the original's server may be another, or down).
            source=retried_source(original.source),
        )
        return self._hand_over(job, workers.submission_of(job, kept), [])


def retried_source(source: str | None) -> str | None:
    """The ``source`` of a retry of a prompt another client queued: the original's, said to be a retry."""
    if not source:
        return source
    return source if source.endswith(RETRIED) else source + RETRIED


RETRIED = ", retried from the studio"


def make_bus(settings) -> EventBus:
    """The event bus: in-process for SQLite; with PostgreSQL, LISTEN/NOTIFY reaches every process."""
    if db.is_sqlite():
        return EventBus()
    from history.events_pg import PostgresEventBus  # here, not at the top: psycopg is the optional postgres extra

    return PostgresEventBus(settings.database_url, load_job=jobs.job_record)


def init_app(app) -> None:
    """Attach the Studio to the app; its background work starts on the first request (history.web.guard)."""
    settings = app.config["STUDIO"]
    instance = Studio(settings, make_bus(settings), start_runner=bool(app.config.get("START_RUNNER", True)))
    for error in instance.workflow_errors:
        app.logger.warning("workflow skipped: %s", error)
    instance.snapshot_leftovers()
    app.extensions["studio"] = instance


def start_background_work():
    """Before a request: start the app's Studio (what its role runs) if it has not started; a process that may
    not run jobs (another runs them on this SQLite store) answers 503 saying so."""
    instance = current_app.extensions.get("studio")
    if instance is None or instance.started:
        return None
    if instance.refusal is None:
        try:
            instance.start()
            return None
        except workers.RunnerRefused as refused:
            current_app.logger.error("not running jobs: %s", refused)
    if instance.refusal is not None:
        return current_app.response_class(f"studio-history: {instance.refusal}\n", status=503,
                                          mimetype="text/plain", headers={"Retry-After": "60"})
    return None


def studio(app=None) -> Studio:
    """The Studio of the current (or given) app."""
    return (app or current_app).extensions["studio"]
