"""Thumbnails made when jobs arrive (a job ends, records are imported), so no page waits for Pillow. No Flask import.

A card shows one thumbnail: its first output image, else its input image (the same choice as the
template). The studio's ThumbnailMaker hears the event bus (job.completed, job.failed, job.stalled,
from this process or, on PostgreSQL, any other) and makes them in the background: one bounded queue and a
few worker threads per process, so a burst of imports never holds more than WORKERS decodes at once
(thumbnails.py bounds them again) and a full queue drops work rather than memory (a dropped one is made
on its first request, as before). The CLI import makes those of the jobs it imported before it exits.
"""
from __future__ import annotations

import json
import logging
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from history import files
from history import thumbnails
from history.models import card_images

log = logging.getLogger(__name__)

WORKERS = 2
QUEUE_SIZE = 10_000
ARRIVAL_EVENTS = ("job.completed", "job.failed", "job.stalled")


def card_source(record: dict, settings) -> Path | None:
    """The file a job's card thumbnail is made from (its first output image, else its input image), or None."""
    images = card_images(record.get("outputs") or [])
    if images:
        ref = images[0]
    elif isinstance(record.get("input_image"), str) and record["input_image"]:
        subfolder, _, filename = record["input_image"].rpartition("/")
        ref = {"filename": filename, "subfolder": subfolder, "type": "input"}
    else:
        return None
    output_root = settings.output_roots.of(record.get("comfyui_server"))
    located = files.locate_ref(ref, output_root, settings.input_dir, settings.data_dir)
    if located is None or not thumbnails.can_thumbnail(located[1]):
        return None
    return located[2]


def make_for(records, settings, workers: int = WORKERS) -> int:
    """Make the card thumbnails of these records now, ``workers`` at a time; answer how many exist after."""
    sources = [source for source in (card_source(record, settings) for record in records) if source is not None]
    if not sources:
        return 0
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="studio-thumbs") as pool:
        made = list(pool.map(lambda source: thumbnails.make_thumbnail(source, settings.thumbnail_dir), sources))
    return sum(1 for path in made if path is not None)


class ThumbnailMaker:
    """A per-process background maker of card thumbnails, fed by the event bus (hear) or by submit()."""

    def __init__(self, settings, workers: int = WORKERS, queue_size: int = QUEUE_SIZE):
        self.settings = settings
        self.workers = workers
        self.pending: queue.Queue = queue.Queue(maxsize=queue_size)
        self.dropped = 0
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._idle = threading.Condition()
        self._busy = 0

    def start(self, bus=None) -> "ThumbnailMaker":
        """Start the workers, and hear ``bus`` when given (idempotent)."""
        if self._threads:
            return self
        for number in range(self.workers):
            thread = threading.Thread(target=self._work, name=f"studio-thumbs-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)
        if bus is not None:
            bus.add_listener(self.hear)
        return self

    def hear(self, message: str) -> None:
        """Queue an event's message; a worker reads it (the publisher only pays for a put)."""
        head = message[:40]  # '{"type": "job.completed", ...': the type comes first
        if self._threads and not self._stopping.is_set() and any(kind in head for kind in ARRIVAL_EVENTS):
            self._enqueue(message)

    def submit(self, record: dict) -> bool:
        """Queue a job's card thumbnail; False when the queue is full (it is then made on first request)."""
        source = card_source(record, self.settings)
        return source is not None and self._enqueue(source)

    def _enqueue(self, item) -> bool:
        with self._idle:
            self._busy += 1
        try:
            self.pending.put_nowait(item)
            return True
        except queue.Full:
            self.dropped += 1
            self._done()
            return False

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until every queued thumbnail is made (for tests and benches)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout)

    def stop(self) -> None:
        """Stop the workers (queued work is dropped: those thumbnails are made on request)."""
        self._stopping.set()
        for _thread in range(self.workers):
            try:
                self.pending.put_nowait(None)
            except queue.Full:
                pass
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []

    def _done(self) -> None:
        with self._idle:
            self._busy -= 1
            if self._busy == 0:
                self._idle.notify_all()

    def _work(self) -> None:
        while not self._stopping.is_set():
            item = self.pending.get()
            if item is None:
                return
            try:
                source = self._arrived(item) if isinstance(item, str) else item
                if source is not None:
                    thumbnails.make_thumbnail(source, self.settings.thumbnail_dir)
            except Exception:  # noqa: BLE001 - a thumbnail never stops the maker; it falls back to on-request
                log.exception("background thumbnail of %s failed", item)
            finally:
                self._done()

    def _arrived(self, message: str) -> Path | None:
        """The card source of a job an event says has ended, or None."""
        try:
            event = json.loads(message)
        except ValueError:
            return None
        if event.get("type") in ARRIVAL_EVENTS and isinstance(event.get("data"), dict):
            return card_source(event["data"], self.settings)
        return None
