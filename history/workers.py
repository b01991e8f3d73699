"""Processes that run jobs: each keeps a heartbeat row, holds (owns) the jobs it runs, and claims waiting ones.

- A process with STUDIO_ROLE ``all`` or ``worker`` registers a ``worker`` row and refreshes its
  ``heartbeat_at`` every STUDIO_HEARTBEAT_SECONDS. A job it runs records it as ``job.owner``.
- A worker whose heartbeat is older than EXPIRY_BEATS intervals (or whose row is gone: it stopped cleanly)
  is not alive: the first live worker to look takes its queued and running jobs over and hands them to its
  executor (``adopt``), which asks ComfyUI what became of them, or marks the built-in executor's as stalled.
  A live worker's jobs are never touched.
- A job posted to a ``web`` process is recorded queued with no owner and a ``job_waiting`` row; a worker
  claims the oldest ones with ``SELECT ... FOR UPDATE SKIP LOCKED`` (two workers never take the same job
  and never wait for each other), woken by the event bus's ``job.queued`` with a slow poll as the fallback.
- On SQLite one process runs jobs: RunnerLock (an flock on a file beside the database) refuses a second.
- On PostgreSQL a worker writes each ComfyUI server's state (up, queue) into its row as it changes, so a
  ``web`` process's queue page shows them (``shared_server_states``).
No Flask import.
"""
from __future__ import annotations

import datetime
import fcntl
import logging
import os
import secrets
import socket
import threading
import time
from pathlib import Path

from history.db import connection
from history.db import database
from history.db import is_sqlite
from history.executors.base import ExecutorRejected
from history.executors.base import ExecutorUnavailable
from history.executors.base import Submission
from history.executors.builtin import RESTART_MESSAGE
from history.executors.comfyui_graph import COMFYUI_WORKFLOW_ID
from history.models import ACTIVE_STATUSES
from history.models import QUEUED
from history.models import Job
from history.models import JobGraph
from history.models import WaitingJob
from history.models import Worker
from history.models import utcnow

log = logging.getLogger(__name__)

# A worker is alive while its last heartbeat is younger than this many intervals.
EXPIRY_BEATS = 3
# At most this many jobs claimed in one transaction (an executor without a capacity takes them in turns).
CLAIM_BATCH = 32
# A worker looks for waiting jobs when one is queued (any process's event) and when one of its own ends
# (the runner says so: another worker's ends free no room here).
WAKE_PREFIX = '{"type": "job.queued"'  # events.encode writes the type first
# A worker keeps this many jobs per executor thread in hand, so a thread that finishes finds the next one
# without waiting for a claim.
CLAIM_AHEAD = 2
LEFT_BEHIND = RESTART_MESSAGE  # the start-up reason, as before workers had heartbeats
# How often a worker looks whether its ComfyUI servers' states changed (in memory; it writes only a change).
SERVER_STATES_SECONDS = 0.5
# A stopping built-in worker lets the jobs it runs finish for this long (below the README units' TimeoutStopSec=30).
WIND_DOWN_SECONDS = 20


class RunnerRefused(RuntimeError):
    """Another process already runs jobs on this SQLite store; the message says which and what to do."""


def new_worker_id() -> str:
    """Make a fresh id for this process: host, pid and a few random characters (a restarted pid is a new worker)."""
    return f"{socket.gethostname()[:80]}-{os.getpid()}-{secrets.token_hex(3)}"


def _select_for_update(query):
    """``query`` locking the rows it reads and skipping those another worker holds (PostgreSQL; SQLite's
    IMMEDIATE transactions already serialize writers)."""
    return query if is_sqlite() else query.for_update("FOR UPDATE SKIP LOCKED")


# ---- heartbeats ----------------------------------------------------------------------------------

def register(worker_id: str, role: str) -> None:
    """Record this process as a live worker."""
    now = utcnow()
    with connection(), database.atomic():
        (
            Worker.insert(worker_id=worker_id, role=role, host=socket.gethostname(), pid=os.getpid(),
                          started=now, heartbeat_at=now)
            .on_conflict(conflict_target=[Worker.worker_id], update={Worker.heartbeat_at: now})
            .execute()
        )


def _uncounted_write(query) -> int:
    """Run a write that touches no job beside history/changes.py's count of this process's writes (peewee runs
    in autocommit, so it commits at once): a heartbeat must not move the idle polls' change token."""
    sql, params = query.sql()
    cursor = database.connection().cursor()
    try:
        cursor.execute(sql, params)
        return cursor.rowcount
    finally:
        cursor.close()


def beat(worker_id: str, role: str) -> bool:
    """Refresh this worker's heartbeat; False when its row was gone (it had been taken for dead), then it is back."""
    with connection():
        updated = _uncounted_write(Worker.update(heartbeat_at=utcnow()).where(Worker.worker_id == worker_id))
    if not updated:
        register(worker_id, role)
    return bool(updated)


def retire(worker_id: str) -> None:
    """Remove this worker's row as it stops, so its jobs are taken over at once rather than after expiry."""
    with connection(), database.atomic():
        Worker.delete().where(Worker.worker_id == worker_id).execute()


def live_workers(expiry_seconds: float) -> list[Worker]:
    """List the workers whose heartbeat is fresh."""
    cutoff = utcnow() - datetime.timedelta(seconds=expiry_seconds)
    with connection():
        return list(Worker.select().where(Worker.heartbeat_at >= cutoff).order_by(Worker.started))


def share_server_states(worker_id: str, states: list[dict]) -> bool:
    """Write each ComfyUI server's state as this worker sees it into its row; False when the row is gone."""
    with connection():
        return bool(_uncounted_write(Worker.update(servers=states).where(Worker.worker_id == worker_id)))


def shared_server_states(expiry_seconds: float) -> dict[str, dict]:
    """Each ComfyUI server as the live workers see it, by url: up when one of them has its socket open,
    with the longest queue any of them saw (each counts the whole server's queue)."""
    merged: dict[str, dict] = {}
    for worker in live_workers(expiry_seconds):
        for state in worker.servers if isinstance(worker.servers, list) else []:
            if not isinstance(state, dict) or not isinstance(state.get("url"), str):
                continue
            seen = merged.setdefault(state["url"], {"url": state["url"], "up": False, "queue_remaining": 0})
            if state.get("up") is True:
                seen["up"] = True
                queue = state.get("queue_remaining")
                if isinstance(queue, int) and not isinstance(queue, bool):
                    seen["queue_remaining"] = max(seen["queue_remaining"], queue)
    return merged


def _not_waiting():
    return Job.prompt_id.not_in(WaitingJob.select(WaitingJob.prompt_id))


def ownerless_active() -> list[str]:
    """Queued or running jobs that no worker holds and none waits to claim (an older studio's, or imported)."""
    with connection():
        return [
            prompt_id for (prompt_id,) in (
                Job.select(Job.prompt_id)
                .where(Job.status.in_(ACTIVE_STATUSES) & Job.owner.is_null() & _not_waiting())
                .order_by(Job.queued_at)
                .tuples()
            )
        ]


def _why(owner: str | None, worker: Worker | None) -> str:
    if worker is None:
        # A row that went as its worker stopped (retire) still names it: "the studio restarted" would be untrue.
        return LEFT_BEHIND if owner is None else f"its worker {owner} stopped while this job ran"
    return (f"its worker {worker.host} (pid {worker.pid}) stopped sending heartbeats; "
            f"the last was at {worker.heartbeat_at:%H:%M:%S} UTC")


def take_over(worker_id: str, expiry_seconds: float, ownerless: list[str] = (), alone: bool = False
              ) -> list[tuple[str, str, datetime.datetime | None]]:
    """Make this worker the owner of every active job whose owner is not alive (and of the ``ownerless`` ones
    still without one); answer (prompt_id, why its owner lost it, when it was last known alive: its owner's last
    heartbeat, or its start when later; None when unknown) for each, oldest first.

    ``alone``: this process is the only one that can run jobs (the SQLite RunnerLock says so), so every
    other owner is gone whatever its heartbeat says.
    """
    cutoff = utcnow() - datetime.timedelta(seconds=expiry_seconds)

    def orphaned():
        alive = {worker_id}
        if not alone:
            alive |= {wid for (wid,) in Worker.select(Worker.worker_id).where(Worker.heartbeat_at >= cutoff).tuples()}
        condition = Job.status.in_(ACTIVE_STATUSES) & Job.owner.is_null(False) & Job.owner.not_in(sorted(alive))
        if ownerless:
            condition |= (Job.prompt_id.in_(list(ownerless)) & Job.status.in_(ACTIVE_STATUSES)
                          & Job.owner.is_null() & _not_waiting())
        return alive, condition

    with connection():
        # A look without a transaction first: a commit, even of nothing, moves the idle polls' change token.
        if not Job.select().where(orphaned()[1]).exists():
            return []
    with connection(), database.atomic():
        alive, condition = orphaned()
        rows = list(_select_for_update(
            Job.select(Job.prompt_id, Job.owner, Job.started_at).where(condition).order_by(Job.queued_at)
        ).tuples())
        if not rows:
            return []
        ids = [prompt_id for prompt_id, _owner, _started in rows]
        Job.update(owner=worker_id).where(Job.prompt_id.in_(ids)).execute()
        owners = {owner for _prompt_id, owner, _started in rows if owner}
        known = {worker.worker_id: worker for worker in Worker.select().where(Worker.worker_id.in_(sorted(owners)))}
        # Their jobs are ours now: the rows of the silent workers go (one that comes back registers again).
        Worker.delete().where(Worker.worker_id.in_(sorted(owners)) & Worker.worker_id.not_in(sorted(alive))).execute()
    return [(prompt_id, _why(owner, known.get(owner)), _last_alive(known.get(owner), started))
            for prompt_id, owner, started in rows]


def _last_alive(worker: Worker | None, started: datetime.datetime | None) -> datetime.datetime | None:
    if worker is None:
        return None  # it retired as it stopped, just now, or it is unknown: the take-over's time stands
    return max(worker.heartbeat_at, started) if started else worker.heartbeat_at


# ---- jobs waiting for a worker -------------------------------------------------------------------

def enqueue(prompt_id: str, queued_at: datetime.datetime, again: bool = False) -> None:
    """Leave a recorded queued job for the first free worker (inside the caller's transaction); ``again``
    when it may wait already (a job given back)."""
    insert = WaitingJob.insert(prompt_id=prompt_id, queued_at=queued_at)
    (insert.on_conflict_ignore() if again else insert).execute()


def claim(worker_id: str, limit: int) -> list[tuple[Job, JobGraph | None]]:
    """Take up to ``limit`` of the oldest waiting jobs for this worker; each with its kept graph."""
    with connection():
        # A look without a transaction first (the slow poll's usual answer): a commit moves the change token.
        if not WaitingJob.select().exists():
            return []
    with connection(), database.atomic():
        waiting = [
            prompt_id for (prompt_id,) in _select_for_update(
                WaitingJob.select(WaitingJob.prompt_id).order_by(WaitingJob.queued_at).limit(limit)
            ).tuples()
        ]
        if not waiting:
            return []
        WaitingJob.delete().where(WaitingJob.prompt_id.in_(waiting)).execute()
        # A job deleted while it waited is not run (its waiting row just goes).
        (
            Job.update(owner=worker_id)
            .where(Job.prompt_id.in_(waiting) & (Job.status == QUEUED) & Job.owner.is_null())
            .execute()
        )
        claimed = list(
            Job.select()
            .where(Job.prompt_id.in_(waiting) & (Job.owner == worker_id) & (Job.status == QUEUED))
            .order_by(Job.queued_at)
        )
        graphs = {kept.prompt_id: kept for kept in JobGraph.select().where(JobGraph.prompt_id.in_(waiting))}
    return [(job, graphs.get(job.prompt_id)) for job in claimed]


def give_back(worker_id: str, prompt_ids: list[str]) -> None:
    """Put queued jobs this worker claimed but never started back in the waiting line (it stops, or its
    executor is unavailable), in their order."""
    if not prompt_ids:
        return
    with connection(), database.atomic():
        mine = list(
            Job.select(Job.prompt_id, Job.queued_at)
            .where(Job.prompt_id.in_(list(prompt_ids)) & (Job.owner == worker_id) & (Job.status == QUEUED))
            .tuples()
        )
        if not mine:
            return
        Job.update(owner=None).where(Job.prompt_id.in_([prompt_id for prompt_id, _ in mine])).execute()
        for prompt_id, queued_at in mine:
            enqueue(prompt_id, queued_at, again=True)


def submission_of(job: Job, kept: JobGraph | None) -> Submission:
    """What the executor needs to run a recorded job: its graph, folder, input image (and a ComfyUI
    prompt's UI workflow, re-posted with it as the first run did)."""
    extra_data = None
    if kept is not None and kept.ui_workflow and job.workflow_id == COMFYUI_WORKFLOW_ID:
        extra_data = {"extra_pnginfo": {"workflow": kept.ui_workflow}}
    graph = kept.graph if kept is not None else None
    return Submission(job.prompt_id, job.workflow_id, graph, job.output_dir, job.input_image, extra_data)


# ---- one process alone on SQLite -----------------------------------------------------------------

class RunnerLock:
    """An exclusive flock on ``<database>.runner``: on SQLite one process runs jobs; CLI commands take no lock."""

    def __init__(self, database_path: str | Path):
        self.database_path = str(database_path)
        self.path = Path(f"{database_path}.runner")
        self._handle = None

    def acquire(self) -> None:
        """Take the lock; raise RunnerRefused naming the process that holds it."""
        if self._handle is not None:
            return
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunnerRefused(
                f"{holder} already runs this studio's jobs on the SQLite store {self.database_path}: "
                "on SQLite one process does everything; stop it first, or use PostgreSQL "
                "(STUDIO_DATABASE_URL=postgresql://...) with STUDIO_ROLE=web and worker processes"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        """Let the next process run jobs."""
        if self._handle is not None:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


# ---- the loop of a process that runs jobs --------------------------------------------------------

class WorkerLoop:
    """Keep this process's heartbeat fresh and take over the jobs of silent workers (one thread), and claim
    waiting jobs (another)."""

    def __init__(self, worker_id: str, role: str, interval: float, runner, executor, bus, alone: bool = False):
        self.worker_id = worker_id
        self.role = role
        self.interval = float(interval)
        self.expiry = EXPIRY_BEATS * self.interval
        self.runner = runner
        self.executor = executor
        self.bus = bus
        self.alone = alone
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._claimed: set[str] = set()  # claimed by this worker and not ended yet (in_hand)
        self._paused_until = 0.0  # the executor was unavailable: claim again after a beat
        self._winding_down = False  # stopping: claim nothing more
        self._ownerless: list[str] | None = None  # the start-up settling still to do (the store was away)

    def start(self, ownerless: list[str]) -> None:
        """Register, settle the jobs of workers gone before this one started, and start the loop (which tries
        again at each beat when the store does not answer now)."""
        self._ownerless = list(ownerless)
        try:
            self._settle_at_start()
        except Exception as error:  # a request must not fail because the store is away: the loop retries
            log.warning("worker %s could not register yet: %s", self.worker_id, error)
        # A listener, not a subscription: it only sets the event (a page's websocket count stays its own).
        self.bus.add_listener(self._hear)
        self.runner.on_end = self.room_freed
        self._threads = [
            threading.Thread(target=self._beat, name="studio-heartbeat", daemon=True),
            threading.Thread(target=self._claim, name="studio-claims", daemon=True),
        ]
        if hasattr(self.executor, "server_states") and not is_sqlite():
            # Only web processes read them, and they exist on PostgreSQL only.
            self._threads.append(threading.Thread(target=self._share_states, name="studio-server-states", daemon=True))
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """End the loops (no more claims); the caller retires the worker once its executor has stopped."""
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads = []

    def wind_down(self, seconds: float) -> tuple[list[str], int]:
        """Claim no more, give back the jobs the executor has not started, and wait up to ``seconds`` for the ones
        it runs to end, the heartbeat still beating (so a restart cuts none off); answer (given back, still running)."""
        self._winding_down = True
        given = self.executor.unstarted()
        give_back(self.worker_id, given)
        for prompt_id in given:
            self.runner.unfollow(prompt_id)
        with self._lock:
            self._claimed -= set(given)
        deadline = time.monotonic() + seconds
        while self.in_hand() and time.monotonic() < deadline and not self._stop.wait(0.1):
            pass
        return given, self.in_hand()

    def _hear(self, message: str) -> None:
        """Wake the loop on an event that may leave a job to claim (the bus calls this in the publisher's thread)."""
        if message.startswith(WAKE_PREFIX):
            self._wake.set()

    def room_freed(self) -> None:
        """Look for the next job, one of this worker's having ended (the runner calls this)."""
        self._wake.set()

    def _settle_at_start(self) -> None:
        register(self.worker_id, self.role)
        self._adopt(take_over(self.worker_id, self.expiry, self._ownerless, self.alone))
        self._ownerless = None

    def _adopt(self, taken: list[tuple[str, str, datetime.datetime | None]]) -> None:
        """Hand jobs taken over to the executor, grouped by why their owner lost them."""
        by_reason: dict[str, list[str]] = {}
        last_alive = {prompt_id: at for prompt_id, _reason, at in taken if at is not None}
        for prompt_id, reason, _at in taken:
            by_reason.setdefault(reason, []).append(prompt_id)
        for reason, prompt_ids in by_reason.items():
            log.warning("took over %d job(s) (%s): %s", len(prompt_ids), ", ".join(prompt_ids[:5])
                        + (", ..." if len(prompt_ids) > 5 else ""), reason)
            for prompt_id in prompt_ids:
                # Followed, but watched for stalls only once this process hears from them.
                self.runner.follow(prompt_id)
            self.executor.adopt(prompt_ids, reason, last_alive)

    def _beat(self) -> None:
        """Every interval: refresh the heartbeat and take over the jobs of silent workers (a thread of its own,
        so a slow submission never makes this worker look dead)."""
        while not self._stop.wait(self.interval):
            try:
                if self._ownerless is not None:
                    self._settle_at_start()
                    continue
                if self.alone:
                    pass  # nobody reads the heartbeat of a store one process runs (RunnerLock): no write
                elif not beat(self.worker_id, self.role):
                    log.warning("worker %s had been taken for dead (no heartbeat for %g s); it is back",
                                self.worker_id, self.expiry)
                self._adopt(take_over(self.worker_id, self.expiry, alone=self.alone))
            except Exception:  # the heartbeat must outlive a database hiccup
                log.exception("heartbeat failed")

    def _share_states(self) -> None:
        """Write the ComfyUI servers' states into this worker's row whenever they change."""
        written = None
        while not self._stop.wait(SERVER_STATES_SECONDS):
            states = self.executor.server_states()
            if states == written:
                continue
            try:
                # A row gone (taken for dead) is registered again by the next beat: write again then.
                written = states if share_server_states(self.worker_id, states) else None
            except Exception:
                log.exception("could not write the ComfyUI servers' states")

    def _claim(self) -> None:
        """Claim waiting jobs whenever woken, and at least every interval (a NOTIFY may be missed)."""
        while not self._stop.is_set():
            try:
                self.claim()
            except Exception:
                log.exception("claiming waiting jobs failed")
            self._wake.wait(timeout=max(self.interval, self._paused_until - time.monotonic()))
            self._wake.clear()  # one look at the waiting line serves a burst of events

    def in_hand(self) -> int:
        """Count the jobs this worker claimed that have not ended yet."""
        followed = self.runner.followed_ids()
        with self._lock:
            self._claimed &= followed  # ended, or deleted meanwhile
            return len(self._claimed)

    def claim(self) -> int:
        """Claim waiting jobs while the executor has room, and submit them; answer how many were claimed."""
        if time.monotonic() < self._paused_until or self._winding_down:
            return 0
        count = 0
        while not self._stop.is_set() and not self._winding_down:
            capacity = getattr(self.executor, "capacity", None)
            room = CLAIM_BATCH if capacity is None else min(CLAIM_BATCH, CLAIM_AHEAD * capacity - self.in_hand())
            if room <= 0:
                return count
            claimed = claim(self.worker_id, room)
            if not claimed:
                return count
            count += len(claimed)
            for index, (job, kept) in enumerate(claimed):
                if not self._submit(job, kept):
                    give_back(self.worker_id, [other.prompt_id for other, _ in claimed[index:]])
                    self._paused_until = time.monotonic() + self.interval
                    return count
        return count

    def _submit(self, job: Job, kept: JobGraph | None) -> bool:
        """Submit one claimed job; False when the executor cannot take work now (the job is given back)."""
        submission = submission_of(job, kept)
        self.runner.follow(job.prompt_id)
        with self._lock:
            self._claimed.add(job.prompt_id)
        if not submission.graph:
            self.runner.failed(job.prompt_id, "no graph was kept for this job, so no worker can run it", utcnow())
            return True
        try:
            self.executor.submit(submission)
        except ExecutorUnavailable as error:
            log.warning("executor unavailable, job %s goes back to the waiting line: %s", job.prompt_id, error)
            self.runner.unfollow(job.prompt_id)
            return False
        except ExecutorRejected as error:
            self.runner.failed(job.prompt_id, str(error), utcnow())
        except Exception as error:  # a bug must end the job with its reason, not leave it queued forever
            log.exception("could not submit %s", job.prompt_id)
            self.runner.failed(job.prompt_id, f"{type(error).__name__}: {error}", utcnow())
        return True
