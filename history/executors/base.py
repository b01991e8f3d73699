"""The one interface every executor implements, and what it reports back.

An executor turns a Submission (a ComfyUI API-format graph whose save nodes already write under
``comfyui-studio/<output_dir>/``) into calls on a Reporter: started, progress, completed or failed.
The Reporter is the runner (history/runner.py), which writes the store and publishes events; an
executor never touches the database or Flask.
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Protocol


class ExecutorError(Exception):
    """Base class of what submit() raises; the message is shown to the user."""


class ExecutorUnavailable(ExecutorError):
    """The executor cannot take work now (ComfyUI unreachable): the API answers 503."""


class ExecutorRejected(ExecutorError):
    """The executor refused the graph (ComfyUI validation): the API answers 400 with ``details``."""

    def __init__(self, message: str, details: dict | None = None):
        super().__init__(message)
        self.details = details or {}


@dataclass
class Submission:
    """One job handed to an executor."""

    prompt_id: str
    workflow_id: str
    graph: dict
    output_dir: str | None
    input_image: str | None = None
    # ComfyUI's extra_data (its UI workflow under extra_pnginfo), re-posted with a retried ComfyUI job.
    extra_data: dict | None = None


class Reporter(Protocol):
    """What an executor calls as a job moves; all times are aware UTC datetimes."""

    def started(self, prompt_id: str, at: datetime.datetime) -> None: ...

    def progress(self, prompt_id: str, node: str | None, value: int, maximum: int) -> None: ...

    def completed(self, prompt_id: str, outputs: list[dict], at: datetime.datetime) -> None:
        """``outputs``: every ``{filename, subfolder, type}`` in node order; a ref may carry
        ``"animated": True`` (ComfyUI's flag for animated images), which marks it as a video."""

    def failed(
        self, prompt_id: str, error: str, at: datetime.datetime, status: str = "error", outputs: list[dict] | None = None
    ) -> None:
        """``status`` is ``error`` (the run failed or was interrupted) or ``stalled`` (lost); ``outputs``
        are the files saved before it failed (they are the job's as much as a completed job's)."""

    def placed(self, prompt_id: str, server: str) -> None:
        """Record the ComfyUI server (its address) a job is handed to, before it is posted there."""

    def moved(self, prompt_id: str, server: str, note: str) -> None:
        """Record that a queued job now waits on ``server`` (its first server went down), with a note saying why."""

    def servers_of(self, prompt_ids: list[str]) -> dict:
        """The ComfyUI server each of these jobs was handed to (None when none is recorded), by prompt_id."""

    def observed(self, record: dict, status: str) -> bool:
        """Record a prompt another client queued (``comfyui_graph.observed_record``) as ``queued`` or
        ``running``; answer whether it is new to the store (then the executor follows it)."""

    def unknown(self, prompt_ids: list[str]) -> list[str]:
        """The ids the store has no record of (so an observer knows what to read)."""

    def recorded(self, records: list[dict], announce: bool = True) -> "tuple[int, list[dict]]":
        """Store finished prompts of other clients (observed_record with status, times, outputs, error)
        that the store does not have; answer (taken, refused). ``announce`` publishes each as it ends."""


class Executor:
    """Runs jobs; subclasses: BuiltinExecutor, ComfyUIServers (one ComfyUIExecutor per server)."""

    # How many jobs this executor runs at once, so a worker claims no more than it can start (None: no
    # limit; ComfyUI keeps its own queue).
    capacity: int | None = None

    def __init__(self, reporter: Reporter):
        self.reporter = reporter

    def start(self, pending: list[str]) -> None:
        """Start workers; ``pending`` are prompt ids the store has as queued or running."""

    def adopt(self, prompt_ids: list[str], reason: str, last_alive: dict | None = None) -> None:
        """Take over jobs another process ran (it stopped, or its heartbeat expired: ``reason``) and settle
        them: report what became of each, or fail it as stalled when nothing can tell, ending at ``last_alive``
        (by prompt id: when its worker was last known alive) so its duration never counts the silence."""
        for prompt_id in prompt_ids:
            self.reporter.failed(prompt_id, reason, (last_alive or {}).get(prompt_id) or utcnow(), status="stalled")

    def unstarted(self) -> list[str]:
        """After stop(): the jobs submitted that never started and that another worker may run instead."""
        return []

    def submit(self, submission: Submission) -> None:
        """Queue one job; raise ExecutorUnavailable or ExecutorRejected when it cannot."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop workers and connections; jobs still running stay as they are in the store."""

    def forget(self, prompt_id: str) -> None:
        """Stop following a job (the runner marked it stalled or deleted it); later news of it is ignored."""


def utcnow() -> datetime.datetime:
    """Now, as an aware UTC datetime."""
    return datetime.datetime.now(datetime.timezone.utc)
