"""The ComfyUI executor: POST /prompt, one websocket per process, and reconcile through /history and /queue.

ComfyUI sends a prompt's execution frames only to the websocket whose ``clientId`` posted it, so each
executor posts with its own ``client_id`` and keeps exactly one socket open under that id. Frames seen
while the socket is down are lost for good; after every (re)connect, and at start-up for the jobs the
store still has as queued or running, the executor asks ``/queue`` and ``/history/{id}`` what became of
each job it tracks. Shapes follow the transcripts of a real ComfyUI 0.3.64 in ``../shared/comfyui/``.

No Flask and no database here: everything goes out through the Reporter.
"""
from __future__ import annotations

import datetime
import http.client
import json
import logging
import re
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from dataclasses import field

import simple_websocket
from simple_websocket.ws import Base as WebSocketBase
from wsproto import ConnectionType

from history import text
from history.executors.base import Executor
from history.executors.base import ExecutorRejected
from history.executors.base import ExecutorUnavailable
from history.executors.base import Reporter
from history.executors.base import Submission
from history.executors.base import utcnow
from history.executors.comfyui_graph import observed_record

log = logging.getLogger(__name__)

# The keys of a node's "executed" output that hold file references, in the order we list them.
OUTPUT_KINDS = ("images", "gifs", "videos", "audio")
# Keys whose files are videos whatever their "animated" flag says (VideoHelperSuite's "gifs", core "videos").
VIDEO_KINDS = ("gifs", "videos")
INTERRUPTED = "interrupted"
FORGOTTEN = (
    "ComfyUI no longer knows this job: it is neither queued, running nor in its history "
    "(ComfyUI was probably restarted while the job waited or ran)"
)
DIED = (
    "ComfyUI went away while this job ran (it was restarted or crashed) and no longer knows it; "
    "its end is when the studio last knew it alive"
)
REMOVED = "removed from ComfyUI's queue before it ran (another client deleted it)"
WENT_DOWN = (
    "ComfyUI at {server} went down while this job ran (it refuses connections: {reason}); "
    "its end is when the studio last knew it alive"
)
# How many of ComfyUI's newest history entries a sweep reads (after a status frame, and every poll):
# what finished since the last look, including prompts that ran between two looks at /queue.
RECENT_HISTORY = 8
HISTORY_PAGE = 100


@dataclass
class _Job:
    """What the executor knows of one job it follows."""

    prompt_id: str
    graph: dict | None = None
    # True once started() was reported; False for a job we submitted and have not seen start;
    # None for a job found at start-up, whose start an earlier process may already have reported.
    started: bool | None = False
    # Submitted through this executor's client_id, so its frames come to our socket.
    owned: bool = True
    submitting: bool = False
    # A reconcile skipped the job while its POST was in flight: look again once the POST returns.
    recheck: bool = False
    comfy_id: str | None = None
    current_node: str | None = None
    nodes_done: set = field(default_factory=set)
    outputs: dict = field(default_factory=dict)
    # The last moment the job was known alive (the socket that carried its news closed then): a job
    # ComfyUI lost while it was down ends there, so its duration never counts the outage.
    alive_at: datetime.datetime | None = None
    # Reported stalled when its server went down; still followed, so its real end is reported if the
    # server comes back with it (the runner decides what a stalled job's later end changes).
    lost: bool = False
    # What was posted (graph and extra_data), so a job still queued on a server that went down can be
    # posted to another one under the same prompt_id (history/executors/comfyui_servers.py).
    submission: Submission | None = None
    # Held while the job's start or end is reported: the socket thread and a reconcile (on another
    # thread) can both learn of a job, and its end must not be stored before its start is.
    reporting: threading.Lock = field(default_factory=threading.Lock)


class _Connection(simple_websocket.Client):
    """A websocket client that connects and handshakes with a timeout and closes without leaking.

    simple_websocket.Client connects with no timeout and leaves its socket open when the connect or
    the handshake fails (a ResourceWarning, and a thread stuck on a hung server), so the socket is
    made here and handed to the shared websocket machinery.
    """

    def __init__(self, url: str, timeout: float, ping_interval: float | None = None):
        parts = urllib.parse.urlsplit(url)
        secure = parts.scheme == "wss"
        self.host = parts.hostname
        self.port = parts.port or (443 if secure else 80)
        self.path = parts.path + ("?" + parts.query if parts.query else "")
        self.subprotocols = []
        self.extra_headeers = []  # simple_websocket's own spelling; its handshake() reads it
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        try:
            if secure:
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self.host)
            WebSocketBase.__init__(
                self, sock, connection_type=ConnectionType.CLIENT, ping_interval=ping_interval
            )
        except BaseException:
            sock.close()
            raise

    def handshake(self):
        """Handshake under the connect timeout, then let the reader thread block without one."""
        super().handshake()
        self.sock.settimeout(None)
        # Frames that came in the same packet as the handshake answer (ComfyUI's greeting) would
        # wait in wsproto until more data arrives: take them now.
        self.connected = self._handle_events()

    def close_now(self) -> None:
        """Send a close frame if possible, then shut the socket so the reader thread ends at once."""
        if self.connected:
            try:
                WebSocketBase.close(self)
            except Exception:  # the peer may be gone already; closing is all we want
                pass
        self.connected = False
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.thread.join(timeout=5)
        self.sock.close()


class ComfyUIExecutor(Executor):
    """Runs jobs on a ComfyUI server and follows them over one websocket."""

    # How often jobs whose frames cannot reach us (found at start-up, posted by another client) are
    # looked up in /history; tests lower it.
    orphan_poll_seconds = 5.0
    # Reconnect attempts stay frequent (a refused connect costs nothing), so jobs are reconciled within
    # about this long after ComfyUI answers again, never after a 30 s backoff.
    max_reconnect_delay = 2.0
    # Status frames come in bursts (2-3 per queue change): one sweep of /queue and /history per burst.
    sweep_delay = 0.1
    ping_interval = 20.0
    # How long a submit waits for the websocket to open first, so the job's frames (its real start
    # time among them) reach us; past that it posts anyway and a reconcile fills in what was missed.
    connect_wait = 2.0

    def __init__(
        self,
        reporter: Reporter,
        base_url: str,
        client_id: str | None = None,
        reconnect_delay: float = 1.0,
        http_timeout: float = 10.0,
        observe: bool = True,
    ):
        super().__init__(reporter)
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id or str(uuid.uuid4())
        self.reconnect_delay = reconnect_delay
        self.http_timeout = http_timeout
        parts = urllib.parse.urlsplit(self.base_url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        query = urllib.parse.urlencode({"clientId": self.client_id})
        self.websocket_url = urllib.parse.urlunsplit((scheme, parts.netloc, parts.path + "/ws", query, ""))
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}
        self._aliases: dict[str, str] = {}
        self._stopping = threading.Event()
        self._connected = threading.Event()
        self._connection: _Connection | None = None
        self._thread: threading.Thread | None = None
        # Observing: record the prompts other clients queue, and import the history on the first connection.
        self.observe = observe
        self._imported = False
        self._sweep_due: float | None = None
        self._lost_at: datetime.datetime | None = None
        # The server's load, for choosing where a job goes: its queue as its last status frame told
        # (exec_info.queue_remaining: pending plus running), and the jobs posted here since that frame,
        # so a burst of submits spreads before the frames that count them arrive.
        self.queue_remaining = 0
        self._uncounted: set[str] = set()
        # Whether a websocket was open since the server was last found down: a refused connect after
        # one means the server went away, and the jobs it ran end stalled.
        self._was_up = False
        # When this server was found down (it refused connections after a socket was up), None while up.
        self.down_since: float | None = None  # time.monotonic()
        self.down_at: datetime.datetime | None = None
        # Prompts moved to another server while this one was down: taken out of its queue when it answers
        # again, so it never runs them a second time.
        self._moved_away: set[str] = set()

    # -- the Executor interface ---------------------------------------------------------------

    def start(self, pending: list[str]) -> None:
        """Follow ``pending`` (queued or running in the store) and open the websocket; reconcile on connect."""
        with self._lock:
            for prompt_id in pending:
                self._jobs.setdefault(prompt_id, _Job(prompt_id, started=None, owned=False))
        self._follow_in_background()

    def adopt(self, prompt_ids: list[str], reason: str, last_alive: dict | None = None) -> None:
        """Follow jobs another process posted (it stopped or went silent) and ask ComfyUI what became of them."""
        with self._lock:
            for prompt_id in prompt_ids:
                self._jobs.setdefault(prompt_id, _Job(prompt_id, started=None, owned=False))
        self._follow_in_background()  # on connect, reconcile() settles every job followed
        threading.Thread(target=self._reconcile_adopted, args=(list(prompt_ids),), name="comfyui-adopt",
                         daemon=True).start()

    def _reconcile_adopted(self, prompt_ids: list[str]) -> None:
        try:
            self._reconcile(prompt_ids)
        except ExecutorUnavailable as error:
            log.warning("Could not look up jobs taken over from another worker yet: %s", error)
        except Exception:
            log.exception("Could not settle jobs taken over from another worker")

    def submit(self, submission: Submission, connect_wait: float | None = None) -> None:
        """POST the graph under our prompt_id and client_id; raise ExecutorUnavailable or ExecutorRejected.

        ``connect_wait``: how long to wait for the websocket first (default ``connect_wait``); several servers
        pass 0, having chosen a connected one or waited for any already.
        """
        prompt_id = submission.prompt_id
        job = _Job(prompt_id, graph=submission.graph, submitting=True, submission=submission)
        # Track the job before posting: its first frames can arrive before POST /prompt answers.
        with self._lock:
            self._jobs[prompt_id] = job
            self._uncounted.add(prompt_id)
        self._follow_in_background()
        wait = self.connect_wait if connect_wait is None else connect_wait
        if wait > 0:
            self._connected.wait(min(wait, self.http_timeout))
        body = {"prompt": submission.graph, "client_id": self.client_id, "prompt_id": prompt_id}
        if submission.extra_data:
            body["extra_data"] = submission.extra_data
        try:
            status, answer = self._request("POST", "/prompt", body)
        except ExecutorUnavailable:
            self.forget(prompt_id)
            raise
        if status == 200 and isinstance(answer, dict) and answer.get("prompt_id"):
            comfy_id = str(answer["prompt_id"])
            with self._lock:
                job.submitting = False
                recheck = job.recheck
                if comfy_id != prompt_id and self._jobs.get(prompt_id) is job:
                    # A ComfyUI older than caller-chosen prompt ids mints its own: frames and history use it.
                    job.comfy_id = comfy_id
                    self._aliases[comfy_id] = prompt_id
            if recheck:
                try:
                    self._reconcile([prompt_id])
                except ExecutorUnavailable as error:
                    log.warning("Could not look up job %s after submitting it: %s", prompt_id, error)
            return
        self.forget(prompt_id)
        if status == 400 and isinstance(answer, dict) and "error" in answer:
            raise ExecutorRejected(rejection_message(answer, submission.graph), answer)
        if 400 <= status < 500:
            raise ExecutorRejected(f"ComfyUI refused the workflow ({status}): {_short(answer)}", {"error": answer})
        raise ExecutorUnavailable(f"ComfyUI at {self.base_url} answered {status}: {_short(answer)}")

    def stop(self) -> None:
        """Close the websocket and end the background thread; jobs stay as they are in the store."""
        self._stopping.set()
        with self._lock:
            connection = self._connection
        if connection is not None:
            connection.close_now()
        if self._thread is not None:
            self._thread.join(timeout=self.http_timeout + 5)
            self._thread = None

    # -- more for the runner ------------------------------------------------------------------

    def forget(self, prompt_id: str) -> None:
        """Stop following a job (the runner marked it stalled or deleted it); later frames are ignored."""
        self._settle(prompt_id)

    @property
    def load(self) -> int:
        """Count the jobs that wait or run here: the last status frame's queue and the posts it has not counted yet."""
        with self._lock:
            return self.queue_remaining + len(self._uncounted)

    def cancel(self, prompt_id: str) -> None:
        """Take a job out of ComfyUI's queue, or interrupt it if it runs; a run then fails as interrupted."""
        with self._lock:
            job = self._jobs.get(prompt_id)
            comfy_id = (job.comfy_id if job else None) or prompt_id
        self._request("POST", "/queue", {"delete": [comfy_id]})
        self._request("POST", "/interrupt", {"prompt_id": comfy_id})

    def reconcile(self) -> None:
        """Ask ComfyUI about every job followed now: report finished ones, fail lost ones as stalled."""
        with self._lock:
            prompt_ids = list(self._jobs)
        self._reconcile(prompt_ids)

    @property
    def connected(self) -> bool:
        """Whether the websocket is open and the jobs were reconciled on it."""
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        """Wait until the websocket is open and reconciled; answer whether it is."""
        return self._connected.wait(timeout)

    def following(self) -> list[str]:
        """The prompt ids of the jobs this executor follows."""
        with self._lock:
            return list(self._jobs)

    # -- moving queued jobs off a server that is down -------------------------------------------

    def movable(self) -> list[str]:
        """List the jobs this studio posted here that have not started (none was seen start), oldest first."""
        with self._lock:
            return [job.prompt_id for job in self._jobs.values() if self._movable(job)]

    @staticmethod
    def _movable(job: _Job) -> bool:
        return job.started is False and job.owned and not job.submitting and not job.lost and job.submission is not None

    def hand_off(self, prompt_id: str) -> Submission | None:
        """Stop following a queued job that goes to another server; it is taken out of this server's queue
        when it answers again. None when it started or ended meanwhile."""
        with self._lock:
            job = self._jobs.get(prompt_id)
            if job is None or not self._movable(job):
                return None
            del self._jobs[prompt_id]
            self._uncounted.discard(prompt_id)
            if job.comfy_id:
                self._aliases.pop(job.comfy_id, None)
            self._moved_away.add(job.comfy_id or prompt_id)
        return job.submission

    def take_back(self, submission: Submission) -> None:
        """Follow again a job handed off that no other server could take: it waits in this server's queue."""
        with self._lock:
            self._moved_away.discard(submission.prompt_id)
            self._jobs.setdefault(submission.prompt_id, _Job(submission.prompt_id, graph=submission.graph,
                                                             submission=submission))

    def _delete_moved(self) -> None:
        """Take the prompts moved to another server out of this one's queue (or interrupt one it runs)."""
        with self._lock:
            moved = sorted(self._moved_away)
        if not moved:
            return
        self._request("POST", "/queue", {"delete": moved})
        running, _pending = _queue_entries(self._request("GET", "/queue")[1])
        for comfy_id in moved:
            if comfy_id in running:  # it had started before the studio could reach it again
                self._request("POST", "/interrupt", {"prompt_id": comfy_id})
        log.warning("ComfyUI at %s answers again: took %d prompt(s) moved to another server out of its queue",
                    self.base_url, len(moved))
        with self._lock:
            self._moved_away.difference_update(moved)

    # -- HTTP ---------------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: dict | None = None) -> tuple[int, object]:
        """Send one request to ComfyUI; answer (status, parsed JSON or text); raise ExecutorUnavailable."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        request = urllib.request.Request(self.base_url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.http_timeout) as response:
                return response.status, _parse(response.read())
        except urllib.error.HTTPError as error:
            try:
                return error.code, _parse(error.read())
            finally:
                error.close()
        except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
            reason = getattr(error, "reason", error)
            reason = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
            raise ExecutorUnavailable(f"ComfyUI at {self.base_url} is unreachable: {reason}") from None

    # -- the websocket ------------------------------------------------------------------------

    def _follow_in_background(self) -> None:
        """Start the websocket thread unless it runs or the executor stopped."""
        with self._lock:
            if self._thread is not None or self._stopping.is_set():
                return
            self._thread = threading.Thread(target=self._follow, name="comfyui-websocket", daemon=True)
            self._thread.start()

    def _follow(self) -> None:
        """Keep one websocket open to ComfyUI, reconnecting with backoff, and handle what it says."""
        delay = self.reconnect_delay
        outage_logged = False
        while not self._stopping.is_set():
            try:
                connection = _Connection(self.websocket_url, self.http_timeout, self.ping_interval)
            except (OSError, simple_websocket.ConnectionError) as error:
                if not outage_logged:
                    log.warning("ComfyUI websocket %s unreachable (%s); retrying", self.websocket_url, error)
                    outage_logged = True
                if isinstance(error, OSError) and self._was_up:
                    # Nothing listens any more (a websocket turned away while HTTP answers is a ComfyUI
                    # starting up, whose reconcile settles its jobs): what ran here will not report.
                    self._was_up = False
                    self._went_down(error)
                self._stopping.wait(delay)
                delay = min(delay * 2, self.max_reconnect_delay)
                continue
            with self._lock:
                if self._stopping.is_set():
                    connection.close_now()
                    break
                self._connection = connection
                self._was_up = True
                self.down_since = self.down_at = None
            try:
                # First of all: what went to another server while this one was away must not run here too.
                self._delete_moved()
                # Reconcile only once ComfyUI has registered the socket, so a job that ends meanwhile
                # is either in /history now or reported by a frame that is already on its way.
                self._await_greeting(connection)
                self.reconcile()
                log.info("ComfyUI websocket connected as %s", self.client_id)
                outage_logged = False
                delay = self.reconnect_delay
                self._connected.set()
                if self.observe and not self._imported:
                    # A new studio's page is full on the first day: take what ComfyUI already holds, on a
                    # thread of its own so that frames keep flowing while thousands of entries are read.
                    self._imported = True
                    threading.Thread(target=self._import_in_background, name="comfyui-import", daemon=True).start()
                elif self.observe:
                    # Back after a drop: what other clients ran meanwhile, and what they queued.
                    self._catch_up()
                    self._observe_queue(self._request("GET", "/queue")[1])
                self._sweep_due = None
                self._read(connection)
            except ExecutorUnavailable as error:
                log.warning("Could not reconcile jobs with ComfyUI: %s", error)
            except simple_websocket.ConnectionClosed:
                pass
            finally:
                self._connected.clear()
                lost_at = utcnow()
                with self._lock:
                    self._connection = None
                    # Every job followed was known alive until now; what ComfyUI forgets meanwhile ends here.
                    for job in self._jobs.values():
                        job.alive_at = lost_at
                connection.close_now()
            if not self._stopping.is_set():
                log.warning("ComfyUI websocket closed; reconnecting in %.1f s", delay)
                self._stopping.wait(delay)
                delay = min(delay * 2, self.max_reconnect_delay)

    def _went_down(self, error: OSError) -> None:
        """Report the jobs that ran here as stalled, naming this server: it refuses connections now.

        They stay followed: if the server comes back with one (a network outage, not a restart), the
        reconcile reports its real end too.
        """
        reason = error.strerror or str(error) or type(error).__name__
        with self._lock:
            self.down_since = time.monotonic()
            self.down_at = utcnow()
            self.queue_remaining = 0
            self._uncounted.clear()
            running = [job for job in self._jobs.values() if job.started is True and not job.lost]
            for job in running:
                job.lost = True
        for job in running:
            log.warning("ComfyUI at %s went down while job %s ran; it is stalled", self.base_url, job.prompt_id)
            message = WENT_DOWN.format(server=self.base_url, reason=reason)
            self._report_end(job, "failed", message, job.alive_at or utcnow(), status="stalled")

    def _await_greeting(self, connection: _Connection) -> None:
        """Wait for ComfyUI's first ``status`` frame: it sends it once our clientId gets our frames."""
        deadline = time.monotonic() + self.http_timeout
        while not self._stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            message = connection.receive(timeout=remaining)
            if message is None or self._handle(message) == "status":
                return

    def _read(self, connection: _Connection) -> None:
        """Handle frames until the socket closes or the executor stops; poll jobs no frame will tell about."""
        last_poll = time.monotonic()
        while not self._stopping.is_set():
            timeout = min(1.0, self.orphan_poll_seconds)
            if self._sweep_due is not None:
                timeout = max(0.0, min(timeout, self._sweep_due - time.monotonic()))
            try:
                message = connection.receive(timeout=timeout)
            except simple_websocket.ConnectionClosed:
                return
            if message is not None:
                self._handle(message)
            now = time.monotonic()
            if now - last_poll >= self.orphan_poll_seconds:
                # No frame tells of what other clients' prompts did between status frames, nor of a status
                # frame we missed: look anyway (a few entries: each carries its graph and UI workflow).
                last_poll = now
                self._sweep_due = None
                self._sweep(RECENT_HISTORY)
            elif self._sweep_due is not None and now >= self._sweep_due:
                self._sweep_due = None
                self._sweep(RECENT_HISTORY)

    def _sweep(self, recent: int) -> None:
        """After ComfyUI's queue changed: settle jobs that left it, and record what other clients queued and ran."""
        try:
            with self._lock:
                # Jobs not started yet (a delete from the queue ends them) and other clients' jobs (no frame
                # of theirs reaches us): where they are now.
                watched = [job.prompt_id for job in self._jobs.values() if job.started is False or not job.owned]
            queue = self._reconcile(watched, live=True)
            if self.observe:
                if queue is None:
                    _, queue = self._request("GET", "/queue")
                self._observe_queue(queue)
                self._observe_history(recent)
        except ExecutorUnavailable as error:
            log.warning("Could not look at ComfyUI's queue: %s", error)
        except Exception:  # a malformed answer must not end the socket thread
            log.exception("Could not look at ComfyUI's queue and history")

    # -- observing other clients ---------------------------------------------------------------

    def _observe_queue(self, queue) -> None:
        """Record the prompts in ComfyUI's queue that the studio has never seen, and follow them."""
        running, pending = _queue_entries(queue)
        entries = {**pending, **running}
        fresh = [comfy_id for comfy_id, entry in entries.items()
                 if self._job(comfy_id) is None and not _posted_by(entry, self.client_id)]
        if not fresh:
            return
        for comfy_id in self.reporter.unknown(fresh):
            entry = entries[comfy_id]
            record = observed_record(entry, self.base_url, utcnow())
            if record is None:
                continue
            status = "running" if comfy_id in running else "queued"
            job = _Job(comfy_id, graph=record["graph"], started=status == "running", owned=False)
            with self._lock:
                if comfy_id in self._jobs:
                    continue
                self._jobs[comfy_id] = job
            try:
                taken = self.reporter.observed(record, status)
            except Exception:
                log.exception("Could not record ComfyUI prompt %s", comfy_id)
                taken = False
            if not taken:
                self._settle(comfy_id)

    def _catch_up(self) -> None:
        """Record what ComfyUI ran while the socket was down: the newest entries, further back until one is known."""
        size = RECENT_HISTORY * 8
        while True:
            _, history = self._request("GET", f"/history?max_items={size}")
            if not isinstance(history, dict) or not history:
                return
            oldest = next(iter(history))
            # The oldest of this look already in the store: the gap is covered.
            covered = self._job(oldest) is not None or not self.reporter.unknown([oldest])
            self._record_history(history, announce=True)
            if covered or len(history) < size:
                return
            size *= 4

    def _observe_history(self, recent: int) -> None:
        """Record the newest finished prompts of ComfyUI's history that the studio has no record of."""
        _, history = self._request("GET", f"/history?max_items={int(recent)}")
        self._record_history(history, announce=True)

    def _record_history(self, history, announce: bool) -> tuple[int, list[dict]]:
        """Hand the entries of a /history page the store lacks to the reporter; answer (taken, refused)."""
        if not isinstance(history, dict) or not history:
            return 0, []
        candidates = [prompt_id for prompt_id in history if isinstance(prompt_id, str) and self._job(prompt_id) is None]
        if not candidates:
            return 0, []
        records, refused = [], []
        for prompt_id in self.reporter.unknown(candidates):
            record = finished_record(history.get(prompt_id), self.base_url)
            if record is None:
                refused.append({"prompt_id": prompt_id, "error": "not a ComfyUI history entry"})
            else:
                records.append(record)
        if not records:
            return 0, refused
        taken, more_refused = self.reporter.recorded(records, announce=announce)
        return taken, refused + list(more_refused)

    def _import_in_background(self) -> None:
        """Import ComfyUI's history once; a failure is logged and the next connection tries again."""
        try:
            taken, refused = self.import_history()
        except Exception as error:  # ComfyUI went away mid-way, or an answer was malformed
            log.warning("Could not import ComfyUI's history: %s", error)
            self._imported = False
            return
        if taken or refused:
            log.info("Imported %d prompts from ComfyUI's history (%d refused)", taken, len(refused))

    def import_history(self, page_size: int = HISTORY_PAGE) -> tuple[int, list[dict]]:
        """Read ComfyUI's whole /history, page by page, into the store (what it lacks); answer (taken, refused)."""
        taken, refused = 0, []
        for page in history_pages(self._request, page_size):
            page_taken, page_refused = self._record_history(page, announce=False)
            taken += page_taken
            refused.extend(page_refused)
        return taken, refused

    def _handle(self, message) -> str | None:
        """Handle one frame and answer its type; nothing a frame holds may end the thread."""
        if not isinstance(message, str):
            return None  # binary preview images
        try:
            frame = text.repair(json.loads(message))
        except (ValueError, RecursionError):
            log.debug("Ignoring a non-JSON frame from ComfyUI: %.80r", message)
            return None
        if not isinstance(frame, dict) or not isinstance(frame.get("data"), dict):
            return None
        kind = frame.get("type")
        try:
            self._on_frame(kind, frame["data"])
        except ExecutorUnavailable as error:
            log.warning("Could not look up a job in ComfyUI: %s", error)
        except Exception:
            log.exception("Could not handle a %r frame from ComfyUI", kind)
        return kind if isinstance(kind, str) else None

    def _on_frame(self, kind: str, data: dict) -> None:
        """Turn one execution frame of a job we follow into reporter calls."""
        if kind == "status":
            # Every socket gets these when ComfyUI's queue changes: a prompt posted (by anyone), taken,
            # finished or deleted. Look at /queue and /history once the burst is over.
            self._note_queue_remaining(data)
            if self._sweep_due is None:
                self._sweep_due = time.monotonic() + self.sweep_delay
            return
        handler = self.FRAME_HANDLERS.get(kind)
        job = self._job(data.get("prompt_id"))
        if handler is None or job is None:
            return  # other clients' jobs, forgotten jobs, the reconnect "executing" hint, frames we do not use
        handler(self, job, data)

    def _note_queue_remaining(self, data: dict) -> None:
        """Keep a status frame's queue length (``{"status": {"exec_info": {"queue_remaining": N}}}``)."""
        status = data.get("status")
        info = status.get("exec_info") if isinstance(status, dict) else None
        remaining = info.get("queue_remaining") if isinstance(info, dict) else None
        if not isinstance(remaining, int) or isinstance(remaining, bool) or remaining < 0:
            return
        with self._lock:
            self.queue_remaining = remaining
            # ComfyUI queues a prompt, sends this frame and then answers the POST: a post made before
            # the frame is read is in its count (one still on its way is counted by the frame it causes).
            self._uncounted.clear()

    def _on_execution_start(self, job: _Job, data: dict) -> None:
        """The job runs."""
        self._report_started(job, _time(data))

    def _on_execution_cached(self, job: _Job, data: dict) -> None:
        """Nodes ComfyUI took from its cache count as done."""
        job.nodes_done.update(str(node) for node in data.get("nodes") or [])

    def _on_executing(self, job: _Job, data: dict) -> None:
        """A node starts (progress by nodes), or, with no node, the run is over."""
        node = data.get("node")
        if job.current_node is not None:
            job.nodes_done.add(job.current_node)
        if node is None:
            # The run is over; a verdict frame should have come first. Without one (an older
            # ComfyUI, or a frame lost), /history has the outcome by now.
            self._reconcile([job.prompt_id])
            return
        job.current_node = str(node)
        total = len(job.graph) if job.graph else 0
        self._call("progress", job.prompt_id, job.current_node, len(job.nodes_done), total)

    def _on_progress(self, job: _Job, data: dict) -> None:
        """A node's own progress (a sampler's steps)."""
        node = data.get("node")
        self._call(
            "progress", job.prompt_id, str(node) if node is not None else None,
            int(data.get("value") or 0), int(data.get("max") or 0),
        )

    def _on_executed(self, job: _Job, data: dict) -> None:
        """A node finished with its outputs."""
        node = str(data.get("node"))
        output = data.get("output")
        if isinstance(output, dict):
            job.outputs.setdefault(node, []).append(output)
        job.nodes_done.add(node)

    def _on_execution_success(self, job: _Job, data: dict) -> None:
        """The job completed."""
        if self._settle(job.prompt_id):
            self._report_end(job, "completed", output_refs(job.outputs), _time(data))

    def _on_execution_error(self, job: _Job, data: dict) -> None:
        """The job failed; what it saved stays its outputs."""
        if self._settle(job.prompt_id):
            self._report_end(job, "failed", error_message(data, job.graph), _time(data), outputs=output_refs(job.outputs))

    def _on_execution_interrupted(self, job: _Job, data: dict) -> None:
        """The job was interrupted; what it saved stays its outputs."""
        if self._settle(job.prompt_id):
            self._report_end(job, "failed", INTERRUPTED, _time(data), outputs=output_refs(job.outputs))

    # The execution frames of a followed job, by type.
    FRAME_HANDLERS = {
        "execution_start": _on_execution_start,
        "execution_cached": _on_execution_cached,
        "executing": _on_executing,
        "progress": _on_progress,
        "executed": _on_executed,
        "execution_success": _on_execution_success,
        "execution_error": _on_execution_error,
        "execution_interrupted": _on_execution_interrupted,
    }

    # -- reconcile ----------------------------------------------------------------------------

    def _reconcile(self, prompt_ids: list[str], live: bool = False, queue=None) -> None:
        """Settle the given jobs from /queue and /history; the ones ComfyUI forgot become stalled.

        ``live``: the socket stayed open since these jobs were last seen, so one that never started and
        is gone from the queue without a history entry was deleted from the queue, not lost in a restart.
        """
        if not prompt_ids:
            return
        # Only jobs whose POST /prompt had answered before /queue is read can be judged by it: one posted
        # meanwhile may be missing from that queue snapshot and not yet in the history, yet alive.
        with self._lock:
            posted = {pid for pid in prompt_ids if pid in self._jobs and not self._jobs[pid].submitting}
        # /queue before /history: ComfyUI moves a job from its queue into its history under one lock,
        # so a job missing from the queue now is either in the history next or truly gone.
        if queue is None:
            _, queue = self._request("GET", "/queue")
        running, pending = _queue_entries(queue)
        for prompt_id in prompt_ids:
            self._reconcile_job(prompt_id, prompt_id in posted, running, pending, live)
        return queue

    def _reconcile_job(self, prompt_id: str, posted: bool, running: dict, pending: dict, live: bool) -> None:
        """Settle one job from the queue snapshot, else from its /history entry, else as removed or lost."""
        with self._lock:
            job = self._jobs.get(prompt_id)
            if job is None:
                return
            if job.submitting:
                job.recheck = True
                return
            if not posted:
                return  # posted after the queue snapshot: its frames (or the next reconcile) settle it
            comfy_id = job.comfy_id or prompt_id
        if comfy_id in running or comfy_id in pending:
            self._note_queued(job, comfy_id, running, pending)
            return
        _, history = self._request("GET", "/history/" + urllib.parse.quote(comfy_id, safe=""))
        record = history.get(comfy_id) if isinstance(history, dict) else None
        if isinstance(record, dict) and record:
            self._settle_from_history(job, record)
        elif live and job.started is False:
            if self._settle(prompt_id):
                self._report_end(job, "failed", REMOVED, utcnow())
        elif live:
            return  # running a moment ago and not in the history yet: the next look settles it
        elif self._settle(prompt_id):
            died = job.started is True and job.alive_at is not None
            self._report_end(job, "failed", DIED if died else FORGOTTEN, job.alive_at or utcnow(), status="stalled")

    def _note_queued(self, job: _Job, comfy_id: str, running: dict, pending: dict) -> None:
        """What ComfyUI's queue tells of a job still in it: its graph, whether we posted it, that it runs."""
        entry = running.get(comfy_id) or pending.get(comfy_id)
        if job.graph is None and isinstance(entry[2], dict):
            job.graph = entry[2]
        if isinstance(entry[3], dict) and entry[3].get("client_id") == self.client_id:
            job.owned = True
        if comfy_id in running and job.started is False:
            # Its execution_start went by while we were away; now is the best we know.
            self._report_started(job, utcnow())

    def _settle_from_history(self, job: _Job, record: dict) -> None:
        """Report a finished job's outcome as ComfyUI's history holds it."""
        if not self._settle(job.prompt_id):
            return
        graph = job.graph
        prompt = record.get("prompt")
        if graph is None and isinstance(prompt, list) and len(prompt) > 2 and isinstance(prompt[2], dict):
            graph = prompt[2]
        outcome = history_outcome(record, graph)
        if outcome["started_at"] is not None and (job.started is not True or not job.owned):
            # For another client's job seen running in /queue, this is its real start (the runner keeps the earlier).
            with job.reporting:
                job.started = True
                self._call("started", job.prompt_id, outcome["started_at"])
        if outcome["status"] == "completed":
            self._report_end(job, "completed", outcome["outputs"], outcome["finished_at"])
        else:
            self._report_end(job, "failed", outcome["error"], outcome["finished_at"], outputs=outcome["outputs"])

    # -- bookkeeping --------------------------------------------------------------------------

    def _job(self, comfy_id) -> _Job | None:
        """The followed job a frame's prompt_id names, if any."""
        if not isinstance(comfy_id, str):
            return None
        with self._lock:
            return self._jobs.get(self._aliases.get(comfy_id, comfy_id))

    def _settle(self, prompt_id: str) -> _Job | None:
        """Stop following a job that ended; only the caller that gets it back reports the end."""
        with self._lock:
            self._uncounted.discard(prompt_id)
            job = self._jobs.pop(prompt_id, None)
            if job is not None and job.comfy_id:
                self._aliases.pop(job.comfy_id, None)
        return job

    def _report_started(self, job: _Job, at: datetime.datetime) -> None:
        """Report a job's start once, whichever thread learns of it first."""
        with job.reporting:
            if job.started is True:
                return
            job.started = True
            self._call("started", job.prompt_id, at)

    def _report_end(self, job: _Job, method: str, *args, **kwargs) -> None:
        """Report a settled job's end, after its start if another thread is reporting that now."""
        with job.reporting:
            self._call(method, job.prompt_id, *args, **kwargs)

    def _call(self, method: str, *args, **kwargs) -> None:
        """Call the reporter; a failing reporter must not end the websocket thread."""
        try:
            getattr(self.reporter, method)(*args, **kwargs)
        except Exception:
            log.exception("Reporter.%s failed for job %s", method, args[0] if args else "?")


# -- what ComfyUI says, in the studio's words -------------------------------------------------


def output_refs(outputs_by_node: dict) -> list[dict]:
    """Every file reference of a run, in node order, as ComfyUI gave it; animated ones flagged."""
    refs = []
    for node in sorted(outputs_by_node, key=node_order):
        for output in outputs_by_node[node]:
            animated = output.get("animated")
            animated = list(animated) if isinstance(animated, (list, tuple)) else []
            for kind in OUTPUT_KINDS:
                items = output.get(kind)
                if not isinstance(items, list):
                    continue
                for index, item in enumerate(items):
                    if not isinstance(item, dict) or not item.get("filename"):
                        continue
                    ref = {
                        "filename": item["filename"],
                        "subfolder": item.get("subfolder", ""),
                        "type": item.get("type", "output"),
                    }
                    if kind in VIDEO_KINDS or (kind == "images" and _flag(animated, index)):
                        ref["animated"] = True
                    refs.append(ref)
    return refs


def node_order(node_id: str) -> tuple:
    """Sort key for node ids: numerically where they are numbers ("2" < "10"), also in subgraph ids ("5:3")."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.findall(r"\d+|\D+", str(node_id)))


def node_title(graph: dict | None, node_id, class_type: str | None = None) -> str:
    """A node's title from the graph's ``_meta``, else its class_type."""
    node = (graph or {}).get(str(node_id))
    if isinstance(node, dict):
        meta = node.get("_meta")
        if isinstance(meta, dict) and meta.get("title"):
            return str(meta["title"])
        class_type = class_type or node.get("class_type")
    return class_type or "?"


def error_message(error: dict, graph: dict | None) -> str:
    """The text of an ``execution_error``: "node <title> (#id): <exception_type>: <exception_message>"."""
    exception = f"{error.get('exception_type') or 'Error'}: {str(error.get('exception_message') or '').strip()}"
    node_id = error.get("node_id")
    if node_id is None:
        return exception
    return f"node {node_title(graph, node_id, error.get('node_type'))} (#{node_id}): {exception}"


def rejection_message(answer: dict, graph: dict | None) -> str:
    """The text of a 400 from POST /prompt, naming each node that failed validation and why."""
    parts = []
    node_errors = answer.get("node_errors")
    if isinstance(node_errors, dict):
        for node_id in sorted(node_errors, key=node_order):
            entry = node_errors[node_id] if isinstance(node_errors[node_id], dict) else {}
            reasons = []
            for reason in entry.get("errors") or []:
                if isinstance(reason, dict):
                    details = reason.get("details")
                    reasons.append(f"{reason.get('message')}: {details}" if details else str(reason.get("message")))
            title = node_title(graph, node_id, entry.get("class_type"))
            parts.append(f"node {title} (#{node_id}): {'; '.join(reasons) or 'invalid'}")
    if not parts:
        error = answer.get("error")
        if isinstance(error, dict):
            details = error.get("details")
            message = str(error.get("message") or error.get("type") or "invalid workflow")
            parts.append(f"{message} ({details})" if details and details != message else message)
        else:
            parts.append(str(error))
    return "ComfyUI rejected the workflow: " + "; ".join(parts)


def history_outcome(record: dict, graph: dict | None) -> dict:
    """A /history entry's end in the studio's words: status, error, saved files, start and finish times."""
    status = record.get("status") if isinstance(record.get("status"), dict) else {}
    messages = {}
    for message in status.get("messages") or []:
        if isinstance(message, (list, tuple)) and len(message) == 2 and isinstance(message[1], dict):
            messages[message[0]] = message[1]
    outputs = record.get("outputs") if isinstance(record.get("outputs"), dict) else {}
    by_node = {str(node): [output] for node, output in outputs.items() if isinstance(output, dict)}
    outcome = {
        "status": "completed",
        "error": None,
        # Whatever the end, the files it saved are in the history and on disk: they are the job's.
        "outputs": output_refs(by_node),
        "started_at": _time(messages["execution_start"]) if "execution_start" in messages else None,
    }
    if "execution_interrupted" in messages:
        outcome.update(status="error", error=INTERRUPTED, finished_at=_time(messages["execution_interrupted"]))
    elif "execution_error" in messages:
        error = messages["execution_error"]
        outcome.update(status="error", error=error_message(error, graph), finished_at=_time(error))
    elif status.get("status_str") == "error":
        outcome.update(status="error", error="ComfyUI reported an error without details", finished_at=utcnow())
    else:
        outcome["finished_at"] = _time(messages.get("execution_success") or {})
    return outcome


def finished_record(entry, server: str) -> dict | None:
    """The studio's record of one finished /history entry of another client, or None if it is not one."""
    if not isinstance(entry, dict):
        return None
    record = observed_record(entry.get("prompt"), server)
    if record is None:
        return None
    outcome = history_outcome(entry, record["graph"])
    record.update(outcome)
    # ComfyUI keeps no queue time; its start is the closest it tells.
    record["queued_at"] = outcome["started_at"] or outcome["finished_at"]
    return record


def history_pages(request, page_size: int = HISTORY_PAGE):
    """Yield ComfyUI's /history a page at a time, oldest first (``offset`` counts from the oldest entry)."""
    offset = 0
    while True:
        _, page = request("GET", f"/history?max_items={int(page_size)}&offset={offset}")
        if not isinstance(page, dict) or not page:
            return
        yield page
        if len(page) < page_size:
            return
        offset += len(page)


def _posted_by(entry: list, client_id: str) -> bool:
    """Whether a queue entry was posted under this client id (one of ours whose POST has not answered yet)."""
    return isinstance(entry[3], dict) and entry[3].get("client_id") == client_id


def _queue_entries(queue) -> tuple[dict, dict]:
    """/queue as {prompt_id: entry} for running and for pending jobs; an entry is [number, id, graph, extra, outputs]."""
    found = []
    for key in ("queue_running", "queue_pending"):
        entries = {}
        items = queue.get(key) if isinstance(queue, dict) else None
        for item in items or []:
            if isinstance(item, list) and len(item) > 1:
                entries[str(item[1])] = list(item) + [None] * (5 - len(item))
        found.append(entries)
    return found[0], found[1]


def _flag(flags: list, index: int) -> bool:
    """Whether the file at ``index`` is animated."""
    # SaveAnimatedWEBP sends one flag for all its files, ("animated": [true]); others one per file.
    if index < len(flags):
        return bool(flags[index])
    return len(flags) == 1 and bool(flags[0])


def _time(data: dict) -> datetime.datetime:
    """The ComfyUI timestamp of a frame (milliseconds since the epoch), else now."""
    stamp = data.get("timestamp") if isinstance(data, dict) else None
    if isinstance(stamp, (int, float)) and not isinstance(stamp, bool) and stamp > 0:
        try:
            return datetime.datetime.fromtimestamp(stamp / 1000, tz=datetime.timezone.utc)
        except (OverflowError, OSError, ValueError):
            pass
    return utcnow()


def _parse(body: bytes):
    """An HTTP body as JSON, or as text when it is not JSON."""
    decoded = body.decode("utf-8", "replace")
    try:
        # ComfyUI's answers are reported, not refused: text UTF-8 cannot encode becomes U+FFFD.
        return text.repair(json.loads(decoded))
    except (ValueError, RecursionError):
        return decoded


def _short(answer) -> str:
    """An answer cut short for an error message."""
    shown = answer if isinstance(answer, str) else json.dumps(answer)
    return shown[:200] or "(empty)"
