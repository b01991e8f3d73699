"""The repeated-retry guard: a double click, or two tabs, make one retry of a job, not two.

Each Studio holds one guard (``Studio.retry_guard``); the JSON API's execute and the page's Retry form
both ask it before they run a retry. No Flask import.
"""
from __future__ import annotations

import datetime
import threading
import time
from dataclasses import dataclass

from history import jobs

RETRY_GUARD_SECONDS = 5.0


@dataclass(frozen=True)
class Refusal:
    """Why a retry was refused: its message, and the retry already made (when there is one)."""

    message: str
    prompt_id: str | None = None


class RetryGuard:
    """Retries in flight or just made, by the id they retry."""

    def __init__(self, seconds: float = RETRY_GUARD_SECONDS):
        self.seconds = seconds
        self._lock = threading.Lock()
        self._recent: dict[str, float] = {}

    def claim(self, prompt_id: str) -> float | None:
        """Claim a retry of ``prompt_id``; return how long ago the last one was when it is too recent."""
        now = time.monotonic()
        with self._lock:
            self._recent = {key: at for key, at in self._recent.items() if now - at < self.seconds}
            if prompt_id in self._recent:
                return now - self._recent[prompt_id]
            self._recent[prompt_id] = now
            return None

    def release(self, prompt_id: str) -> None:
        """Forget a claim whose retry did not happen (refused or failed), so it can be tried again at once."""
        with self._lock:
            self._recent.pop(prompt_id, None)

    def check(self, retry_of: str) -> Refusal | None:
        """Claim a retry of ``retry_of``, or refuse it: one was made within seconds (any process: the store says) or is on its way here."""
        ago = self.claim(retry_of)
        latest = jobs.retries_of(retry_of).first()
        age = (datetime.datetime.now(datetime.timezone.utc) - latest.queued_at).total_seconds() if latest else None
        if age is not None and age < self.seconds:
            if ago is None:
                self.release(retry_of)
            message = f"job {retry_of[:12]} was retried {age:.0f} s ago as {latest.prompt_id[:12]}; see the queue page"
            return Refusal(message, latest.prompt_id)
        if ago is not None:
            return Refusal(f"job {retry_of[:12]} is being retried already; see the queue page")
        return None
