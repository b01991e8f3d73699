"""Events across processes and hosts: PostgreSQL LISTEN/NOTIFY beside the in-process bus.

Each process delivers its own events to its own subscribers at once and NOTIFYs the others; a listener
thread per process hands what other processes NOTIFY to the local subscribers. A NOTIFY payload is
limited to 8,000 bytes, so an event whose data is larger travels by id: the receiver reads the job back
from the store (a deleted job's id is all there is to send). No Flask import.
"""
from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid

import psycopg

from history.changes import CHANGES_CHANNEL
from history.events import EventBus
from history.events import encode

log = logging.getLogger(__name__)

CHANNEL = "studio_history_events"
NOTIFY_LIMIT = 7900  # PostgreSQL refuses payloads of 8000 bytes or more; keep a margin for the envelope.


def libpq_url(database_url: str) -> str:
    """A peewee db_url (postgresql+pool://, postgresext://, ...) as a plain libpq URI."""
    return re.sub(r"^[a-z0-9+]+://", "postgresql://", database_url)


class PostgresEventBus(EventBus):
    """An EventBus whose events also reach every other process on the same PostgreSQL database."""

    def __init__(self, database_url: str, load_job=None, reconnect_delay: float = 1.0):
        super().__init__()
        self.url = libpq_url(database_url)
        self.sender = uuid.uuid4().hex
        self.load_job = load_job  # prompt_id -> API dict or None, for events that travelled by id
        self.reconnect_delay = reconnect_delay
        self._publisher = None
        self._publish_lock = threading.Lock()
        self._stopping = threading.Event()
        self._listening = threading.Event()
        self._thread: threading.Thread | None = None
        # The listener also LISTENs here, so stop() can end its wait for notifications at once.
        self._stop_channel = f"studio_history_stop_{self.sender}"
        self._changes = 0  # CHANGES_CHANNEL notifications heard (and reconnects, which may have missed some)

    def start(self) -> None:
        """Start the listener thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._listen, name="studio-pg-events", daemon=True)
            self._thread.start()

    def wait_listening(self, timeout: float = 10.0) -> bool:
        """Wait until the listener has issued LISTEN (for tests and start-up)."""
        return self._listening.wait(timeout)

    def change_count(self) -> int | None:
        """How often the job table changed, as far as the listener heard; None while it is not listening."""
        return self._changes if self._listening.is_set() else None

    def stop(self) -> None:
        """Stop the listener, close both connections and end every subscription."""
        self._stopping.set()
        if self._thread is not None:
            self._wake_listener()
            self._thread.join(timeout=5)
            self._thread = None
        with self._publish_lock:
            if self._publisher is not None:
                self._publisher.close()
                self._publisher = None
        super().stop()

    def publish(self, event_type: str, data: dict) -> None:
        """Deliver locally at once, then tell the other processes."""
        ts = time.time()
        message = encode(event_type, data, ts)
        super().deliver(message, event_type)
        envelope = json.dumps({"sender": self.sender, "message": message})
        if len(envelope.encode()) > NOTIFY_LIMIT:
            by_id = {"type": event_type, "prompt_id": data.get("prompt_id"), "ts": ts}
            envelope = json.dumps({"sender": self.sender, "by_id": by_id})
        try:
            self._notify(envelope)
        except psycopg.Error as error:
            # Other processes fall back to polling for this one event; this process already has it.
            log.warning("could not NOTIFY %s: %s", event_type, error)

    def _wake_listener(self) -> None:
        """NOTIFY the listener's own stop channel: without it, stopping waits out the listener's 0.5 s timeout."""
        if not self._listening.is_set():
            return
        try:
            self._notify("", channel=self._stop_channel)
        except psycopg.Error as error:
            log.warning("could not wake the event listener (%s); it stops within 0.5 s", error)

    def _notify(self, payload: str, channel: str = CHANNEL) -> None:
        with self._publish_lock:
            for attempt in (1, 2):
                try:
                    if self._publisher is None or self._publisher.closed:
                        self._publisher = psycopg.connect(self.url, autocommit=True)
                    self._publisher.execute("SELECT pg_notify(%s, %s)", (channel, payload))
                    return
                except psycopg.OperationalError:
                    if self._publisher is not None:
                        self._publisher.close()
                    self._publisher = None
                    if attempt == 2:
                        raise

    def _receive(self, payload: str) -> None:
        try:
            envelope = json.loads(payload)
        except ValueError:
            return
        if envelope.get("sender") == self.sender:
            return
        if "message" in envelope:
            super().deliver(envelope["message"])
            return
        by_id = envelope.get("by_id") or {}
        prompt_id = by_id.get("prompt_id")
        data = (self.load_job(prompt_id) if self.load_job and prompt_id else None) or {"prompt_id": prompt_id}
        super().deliver(encode(by_id.get("type", "job.progress"), data, by_id.get("ts")))

    def _listen(self) -> None:
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True) as connection:
                    connection.execute(f"LISTEN {CHANNEL}")
                    connection.execute(f"LISTEN {CHANGES_CHANNEL}")
                    connection.execute(f"LISTEN {self._stop_channel}")
                    self._changes += 1
                    self._listening.set()
                    while not self._stopping.is_set():
                        for notify in connection.notifies(timeout=0.5):
                            if self._stopping.is_set():
                                break
                            if notify.channel == CHANGES_CHANNEL:
                                self._changes += 1
                            else:
                                self._receive(notify.payload)
            except psycopg.Error as error:
                self._listening.clear()
                if self._stopping.is_set():
                    return
                log.warning("event listener lost PostgreSQL (%s); reconnecting", error)
                self._stopping.wait(self.reconnect_delay)
