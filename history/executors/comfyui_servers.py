"""Several ComfyUI servers (one per GPU) as one executor: each job goes to the up server with the shortest queue.

Each server keeps its own ComfyUIExecutor: one websocket and its HTTP requests, its own reconcile, and its
own observing of what other clients queue there (prompt ids are unique across servers, and a server only
ever follows the jobs handed to it or found in its own queue and history, so one server's sweep never
touches another's jobs). A server's load is its last status frame's ``queue_remaining`` plus the jobs this
studio posted there that no status frame has counted yet.

A server that goes down (it refuses connections) for ``move_after`` seconds hands the jobs this studio
posted there and that have not started to the up server with the shortest queue: the same graph under the
same prompt_id (ComfyUI 0.3.64's POST /prompt takes the caller's ``prompt_id``), the record's server and a
note in its ``error`` saying so. When the first server answers again, they are deleted from its queue
first of all. With no server up they stay where they are, noted as waiting. No Flask and no database here.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid

from history.executors.base import Executor
from history.executors.base import ExecutorRejected
from history.executors.base import ExecutorUnavailable
from history.executors.base import Reporter
from history.executors.base import Submission
from history.executors.base import utcnow
from history.executors.comfyui import ComfyUIExecutor

log = logging.getLogger(__name__)

MOVED = "moved to ComfyUI at {to} at {at:%H:%M:%S} UTC: ComfyUI at {source} went down at {down:%H:%M:%S} UTC before it started"
WAITING = ("ComfyUI at {source} went down at {down:%H:%M:%S} UTC before this job started, with no other ComfyUI "
           "server up to take it")


class ComfyUIServers(Executor):
    """Runs jobs on one or more ComfyUI servers, each job on the up server with the shortest queue."""

    def __init__(self, reporter: Reporter, urls, observe: bool = True, client_id: str | None = None, **options):
        super().__init__(reporter)
        if not urls:
            raise ValueError("ComfyUIServers needs at least one ComfyUI address")
        # One client id for the studio on every server: each server's frames come to its own socket.
        self.client_id = client_id or str(uuid.uuid4())
        self.servers = [
            ComfyUIExecutor(reporter, url, client_id=self.client_id, observe=observe, **options) for url in urls
        ]
        # A worker claims jobs for each server as a built-in executor does for each thread (history/workers.py).
        self.capacity = len(self.servers)
        self._lock = threading.Lock()
        self._turn = 0  # where the next tie is broken: servers take equal loads in turn
        self._stopping = threading.Event()
        self._mover: threading.Thread | None = None
        self._noted: set[str] = set()  # jobs noted as waiting for a server (noted once)

    # A server down this long (seconds) hands its queued jobs to another: a short network drop keeps them.
    move_after = 5.0

    # -- the Executor interface ---------------------------------------------------------------

    def start(self, pending: list[str]) -> None:
        """Hand each leftover job to the server its record names (one with none to the first), then connect."""
        mine = self._by_record(pending)
        for url, gone in mine.pop(None, {}).items():
            log.warning("job(s) %s ran on %s, which is no longer in STUDIO_COMFYUI_URL; left as they are", gone, url)
        for server in self.servers:
            server.start(mine[server.base_url])
        if len(self.servers) > 1 and self._mover is None:
            self._stopping.clear()
            self._mover = threading.Thread(target=self._watch_down_servers, name="comfyui-mover", daemon=True)
            self._mover.start()

    def adopt(self, prompt_ids: list[str], reason: str, last_alive: dict | None = None) -> None:
        """Hand jobs taken over from another worker to the server each record names; it asks what became of them."""
        mine = self._by_record(prompt_ids)
        # Nothing can tell what became of a job on a server no longer configured: it ends stalled, saying why,
        # rather than staying queued or running under this worker for good.
        for url, gone in mine.pop(None, {}).items():
            super().adopt(gone, f"{reason}; it was on ComfyUI at {url}, which is no longer in STUDIO_COMFYUI_URL",
                          last_alive)
        for server in self.servers:
            if mine[server.base_url]:
                server.adopt(mine[server.base_url], reason)

    def _by_record(self, prompt_ids: list[str]) -> dict:
        """Group the given jobs by the server their records name (one with none: the first); under None, the
        jobs of servers no longer configured, by their server."""
        servers = self.reporter.servers_of(list(prompt_ids)) if prompt_ids else {}
        first = self.servers[0].base_url
        mine: dict = {server.base_url: [] for server in self.servers}
        for prompt_id in prompt_ids:
            # A record from before servers were recorded ran on the one server the studio had then.
            url = servers.get(prompt_id) or first
            if url in mine:
                mine[url].append(prompt_id)
            else:
                mine.setdefault(None, {}).setdefault(url, []).append(prompt_id)
        return mine

    def submit(self, submission: Submission) -> None:
        """Post the job to the up server with the shortest queue; try the next when one cannot be reached."""
        if len(self.servers) == 1:
            # One server: exactly its own behaviour (it waits a moment for its socket, then posts anyway).
            self._post(self.servers[0], submission)
            return
        if not any(server.connected for server in self.servers):
            self._wait_any_connected(min(self.servers[0].connect_wait, self.servers[0].http_timeout))
        failures = []
        for server in self._by_load():
            try:
                self._post(server, submission, connect_wait=0)
                return
            except ExecutorUnavailable as error:
                failures.append(str(error))
        raise ExecutorUnavailable("no ComfyUI server can take the job: " + "; ".join(failures))

    def stop(self) -> None:
        """Close every server's websocket; jobs stay as they are in the store."""
        self._stopping.set()
        if self._mover is not None:
            self._mover.join(timeout=10)
            self._mover = None
        for server in self.servers:
            server.stop()

    def forget(self, prompt_id: str) -> None:
        """Stop following a job on whichever server follows it."""
        for server in self.servers:
            server.forget(prompt_id)

    # -- more for the runner, the queue page and health -----------------------------------------

    def cancel(self, prompt_id: str) -> None:
        """Take a job out of the queue of the server that has it, or interrupt it there."""
        server = next((server for server in self.servers if prompt_id in server.following()), None)
        if server is None:
            url = self.reporter.servers_of([prompt_id]).get(prompt_id)
            server = next((server for server in self.servers if server.base_url == url), self.servers[0])
        server.cancel(prompt_id)

    def reconcile(self) -> None:
        """Ask every server about the jobs it follows."""
        for server in self.servers:
            server.reconcile()

    @property
    def connected(self) -> bool:
        """Say whether every server's websocket is open and reconciled."""
        return all(server.connected for server in self.servers)

    def wait_connected(self, timeout: float) -> bool:
        """Wait until every server is connected; answer whether they are."""
        deadline = time.monotonic() + timeout
        return all(server.wait_connected(max(0.0, deadline - time.monotonic())) for server in self.servers)

    def following(self) -> list[str]:
        """List the prompt ids every server follows."""
        return [prompt_id for server in self.servers for prompt_id in server.following()]

    def server_states(self) -> list[dict]:
        """Each server as the queue page shows it: url, up (its websocket open) and queue_remaining (its load)."""
        return [{"url": server.base_url, "up": server.connected, "queue_remaining": server.load} for server in self.servers]

    # -- moving the queued jobs of a server that is down ---------------------------------------

    def _watch_down_servers(self) -> None:
        """Look a few times a second for a server down long enough to move its queued jobs."""
        while not self._stopping.wait(max(0.05, min(0.5, self.move_after / 4))):
            try:
                self.move_queued()
            except Exception:  # the watcher must outlive a failing store or server
                log.exception("could not move the queued jobs of a ComfyUI server that is down")

    def move_queued(self) -> None:
        """Post each job queued on a server down for ``move_after`` seconds to an up one (or note it waits)."""
        now = time.monotonic()
        with self._lock:
            if self._noted:  # ended or deleted meanwhile
                self._noted.intersection_update(self.following())
        for server in self.servers:
            since = server.down_since
            if since is None or now - since < self.move_after:
                continue
            for prompt_id in server.movable():
                self._move(server, prompt_id)

    def _move(self, source: ComfyUIExecutor, prompt_id: str) -> None:
        """Post one queued job of a down server to the up server with the shortest queue, under its own id."""
        down = source.down_at or utcnow()
        targets = [server for server in self._by_load() if server is not source and server.connected]
        submission = source.hand_off(prompt_id) if targets else None
        if submission is not None:
            for target in targets:
                self.reporter.moved(prompt_id, target.base_url,
                                    MOVED.format(to=target.base_url, at=utcnow(), source=source.base_url, down=down))
                try:
                    target.submit(submission, connect_wait=0)
                except ExecutorUnavailable as error:
                    log.warning("could not move job %s to %s: %s", prompt_id, target.base_url, error)
                    continue
                except ExecutorRejected as error:  # the same graph another ComfyUI took: a different node set
                    self.reporter.failed(prompt_id, str(error), utcnow())
                    return
                log.warning("moved job %s from %s (down) to %s", prompt_id, source.base_url, target.base_url)
                with self._lock:
                    self._noted.discard(prompt_id)
                return
            # No server took it: it waits on the first one again, and its record says so (not the last one tried).
            source.take_back(submission)
        elif prompt_id in self._noted:
            return
        with self._lock:
            self._noted.add(prompt_id)
        self.reporter.moved(prompt_id, source.base_url, WAITING.format(source=source.base_url, down=down))

    # -- choosing --------------------------------------------------------------------------------

    def _by_load(self) -> list[ComfyUIExecutor]:
        """Order the up servers shortest queue first, equal queues in turn; every server when none is up."""
        with self._lock:
            count = len(self.servers)
            turn = self._turn
            self._turn = (turn + 1) % count
        rotated = [self.servers[(turn + offset) % count] for offset in range(count)]
        up = [server for server in rotated if server.connected]
        return sorted(up, key=lambda server: server.load) if up else rotated

    def _post(self, server: ComfyUIExecutor, submission: Submission, connect_wait: float | None = None) -> None:
        """Record the server as the job's, then post it there."""
        self.reporter.placed(submission.prompt_id, server.base_url)
        server.submit(submission, connect_wait=connect_wait)

    def _wait_any_connected(self, timeout: float) -> None:
        """Wait a moment for some server's websocket to open (the studio just started)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not any(server.connected for server in self.servers):
            if self.servers[0].wait_connected(min(0.05, max(0.0, deadline - time.monotonic()))):
                return
