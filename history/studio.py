"""The Studio: what one app runs beside its requests (event bus, workflows, executor, runner), and its accessor.

Background work starts lazily, on the app's first request (or when ``python app.py`` starts serving),
never at import or in a CLI command: a ``flask history export`` must not reconcile the jobs of a running
server. Which jobs count as "left by a previous process" is decided when the app is created, so jobs made
after that are never mistaken for leftovers.
"""
from __future__ import annotations

import threading
import uuid

from flask import current_app

from history import db
from history import demo
from history import files
from history import jobs
from history.arrivals import ThumbnailMaker
from history.events import EventBus
from history.executors import make_executor
from history.executors.base import Submission
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


class UnknownWorkflow(LookupError):
    """No workflow has this id (the API answers 404)."""


class Studio:
    """What one app runs beside its requests: the event bus, workflows, runner and executor."""

    def __init__(self, settings, bus: EventBus, start_runner: bool = True):
        self.settings = settings
        self.bus = bus
        self.start_runner = start_runner
        self.workflows, self.workflow_errors = load_workflows(settings.workflows_dir)
        self.metrics = Metrics(count_by_status=jobs.count_by_status)  # this app's own registry (/metrics)
        self.runner = Runner(bus, settings.stall_seconds, settings, self.metrics)
        self.executor = make_executor(settings, self.runner)
        self.runner.executor = self.executor
        self.thumbnails = ThumbnailMaker(settings)  # card thumbnails made as jobs end, not when a page asks
        self.retention = RetentionTimer(settings, bus)  # STUDIO_RETENTION, hourly
        self.leftovers: list[tuple[str, str]] = []  # (prompt_id, status) found queued/running at creation
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

    def snapshot_leftovers(self) -> None:
        """Note the jobs a previous process left queued or running (they are reconciled at start)."""
        self.leftovers = jobs.leftover_jobs()
        # The demo runs on the built-in executor only: a real ComfyUI server gets no unasked-for work.
        if self.settings.demo and not self.settings.comfyui_urls:
            self.demo_wanted = jobs.store_is_empty()

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
        self.thumbnails.start(self.bus)
        self.executor.start([prompt_id for prompt_id, _status in self.leftovers])
        self.runner.start()
        self.retention.start()
        if self.demo_wanted:
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
        self.retention.stop()
        if started:
            self.executor.stop()
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
        job = jobs.record_queued(
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
        jobs.save_graph(prompt_id, graph)
        return self._hand_over(job, Submission(prompt_id, workflow.id, graph, output_dir, input_image), notes)

    def _hand_over(self, job: Job, submission: Submission, notes: list[str]) -> Job:
        """Announce a recorded job and submit it to the executor; when it is refused, leave no record and re-raise."""
        record = job.to_dict()
        self.runner.follow(job.prompt_id)
        self.bus.publish("job.queued", record)
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
        job.retry_notes = notes
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
        job = jobs.record_queued(
            prompt_id=prompt_id,
            workflow_id=COMFYUI_WORKFLOW_ID,
            workflow_name=original.workflow_name,
            queued_at=utcnow(),
            params=original.params,
            seeds=original.seeds,
            outputs=[],
            output_dir=None,
            retry_of=original.prompt_id,
            source=original.source,
        )
        jobs.save_graph(prompt_id, kept.graph, kept.ui_workflow)
        extra_data = {"extra_pnginfo": {"workflow": kept.ui_workflow}} if kept.ui_workflow else None
        return self._hand_over(job, Submission(prompt_id, COMFYUI_WORKFLOW_ID, kept.graph, None, None, extra_data), [])


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
    """Before a request: start the app's Studio (executor, stall watcher, demo) if it has not started."""
    instance = current_app.extensions.get("studio")
    if instance is not None and not instance.started:
        instance.start()


def studio(app=None) -> Studio:
    """The Studio of the current (or given) app."""
    return (app or current_app).extensions["studio"]
