"""The event bus: one queue per subscriber, so a slow websocket never blocks a job.

In one process the bus is a set of in-process queues. With PostgreSQL, PostgresEventBus (added beside this
class) carries events between processes by LISTEN/NOTIFY. No Flask import.
"""
from __future__ import annotations

import json
import logging
import queue
import threading
import time

log = logging.getLogger(__name__)

EVENT_TYPES = (
    "job.queued", "job.started", "job.progress", "job.completed",
    "job.failed", "job.stalled", "job.deleted", "job.retried",
)
# Events after which the history list changes, so the page refreshes it at once.
LIST_EVENTS = ("job.completed", "job.failed", "job.stalled", "job.deleted")
SUBSCRIBER_QUEUE_SIZE = 1000


def encode(event_type: str, data: dict, ts: float | None = None) -> str:
    """An event as the JSON text frame the websocket sends (``ts`` last: published_at reads it from the end)."""
    return json.dumps({"type": event_type, "data": data, "ts": ts if ts is not None else time.time()})


def event_type_of(message: str) -> str | None:
    """The ``type`` of an encoded event, or None."""
    try:
        return json.loads(message).get("type")
    except (ValueError, AttributeError):
        return None


def published_at(message: str) -> float | None:
    """The ``ts`` of an encoded event, read from its end without parsing the whole frame; None if absent."""
    head, found, tail = message.rpartition('"ts": ')
    try:
        return float(tail.rstrip("} ")) if found else None
    except ValueError:
        return None


class Subscription:
    """One subscriber's queue of encoded events; drops the oldest when the subscriber falls behind."""

    def __init__(self, bus: "EventBus", maxsize: int = SUBSCRIBER_QUEUE_SIZE, types: frozenset[str] | None = None):
        self.bus = bus
        self.types = types  # None: every event; else only these (a history page needs LIST_EVENTS alone)
        self.queue: queue.Queue[str] = queue.Queue(maxsize=maxsize)
        self.dropped = 0
        self.closed = threading.Event()

    def put(self, message: str) -> None:
        """Queue a message without ever blocking the publisher."""
        while True:
            try:
                self.queue.put_nowait(message)
                return
            except queue.Full:
                try:
                    self.queue.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass

    def get(self, timeout: float | None = None) -> str | None:
        """The next message, or None after ``timeout`` seconds (or once the subscription is closed)."""
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        """Stop receiving events; a reader waiting in get() wakes up."""
        self.closed.set()
        self.bus.unsubscribe(self)
        try:
            self.queue.put_nowait(None)
        except queue.Full:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class EventBus:
    """Publish events to every subscriber of this process."""

    def __init__(self):
        self._subscribers: set[Subscription] = set()
        self._lock = threading.Lock()
        self.delivered = 0  # events handed out so far: each follows a write (history/changes.py reads it)
        self._listeners: list = []

    def subscribe(self, types=None) -> Subscription:
        """A new subscription (to every event, or to these ``types``); close it when done."""
        subscription = Subscription(self, types=frozenset(types) if types else None)
        with self._lock:
            self._subscribers.add(subscription)
        return subscription

    def add_listener(self, listener) -> None:
        """Call ``listener(message)`` with every encoded event, in the publisher's thread: it must only queue work."""
        with self._lock:
            self._listeners.append(listener)

    def unsubscribe(self, subscription: Subscription) -> None:
        """Forget a subscription."""
        with self._lock:
            self._subscribers.discard(subscription)

    @property
    def subscriber_count(self) -> int:
        """How many subscribers are listening."""
        return len(self._subscribers)

    def publish(self, event_type: str, data: dict) -> None:
        """Send an event to every subscriber."""
        if event_type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {event_type!r}")
        self.deliver(encode(event_type, data), event_type)

    def deliver(self, message: str, event_type: str | None = None) -> None:
        """Hand an encoded event to the local subscribers that want its type."""
        with self._lock:
            self.delivered += 1
            subscribers = list(self._subscribers)
            listeners = list(self._listeners)
        if event_type is None and any(subscription.types for subscription in subscribers):
            event_type = event_type_of(message)
        for subscription in subscribers:
            if subscription.types is None or event_type in subscription.types:
                subscription.put(message)
        for listener in listeners:
            try:
                listener(message)
            except Exception:  # noqa: BLE001 - a listener never stops an event
                log.exception("event listener failed")

    def start(self) -> None:
        """Start any background listener (none in process)."""

    def stop(self) -> None:
        """Stop any background listener and end every subscription (their websockets then close)."""
        self.close_subscriptions()

    def close_subscriptions(self) -> None:
        """End every subscription: readers wake up and their websockets close."""
        with self._lock:
            subscribers = list(self._subscribers)
        for subscription in subscribers:
            subscription.close()
