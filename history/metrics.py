"""Prometheus metrics of one studio process, in a registry of its own (two apps in one process never share one).

The Studio owns a Metrics; the runner counts executions, the list view's answers are counted after each
request (history.web.guard), the websocket counts itself and the lag of each event it sends, and a delete
times itself. Jobs by status are counted in the store when /metrics is scraped. No Flask import.
"""
from __future__ import annotations

import logging
import time

from prometheus_client import CollectorRegistry
from prometheus_client import Counter
from prometheus_client import Gauge
from prometheus_client import Histogram
from prometheus_client import generate_latest
from prometheus_client.core import GaugeMetricFamily

from history import events

log = logging.getLogger(__name__)

# Event lag: from a millisecond on one host to seconds across a loaded PostgreSQL bus.
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# A batch delete: one job's folder in milliseconds, ten thousand jobs in minutes.
DELETE_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0)


class JobsByStatus:
    """A collector that counts the store's jobs by status when scraped (one GROUP BY on the status index)."""

    def __init__(self, count_by_status):
        self.count_by_status = count_by_status

    def collect(self):
        family = GaugeMetricFamily("studio_jobs", "Jobs in the store, by status.", labels=["status"])
        try:
            counts = self.count_by_status()
        except Exception as error:  # the store is down: /healthz says so; the other metrics still answer
            log.warning("metrics: could not count jobs: %s", error)
            counts = {}
        for status, count in sorted(counts.items()):
            family.add_metric([status], count)
        yield family


class Metrics:
    """The instruments of one studio process."""

    def __init__(self, count_by_status=None):
        self.registry = CollectorRegistry(auto_describe=True)
        self.executions_started = Counter(
            "studio_executions_started", "Jobs this process's executor started running.", registry=self.registry,
        )
        self.executions_finished = Counter(
            "studio_executions_finished", "Jobs this process recorded as ended, by status.", ["status"],
            registry=self.registry,
        )
        self.list_polls = Counter(
            "studio_list_polls", "Answers to the history list's polls: 200 rendered, 204 or 304 unchanged.", ["answer"],
            registry=self.registry,
        )
        self.websockets_open = Gauge("studio_websockets_open", "Open event websockets.", registry=self.registry)
        self.event_delivery = Histogram(
            "studio_event_delivery_seconds", "From an event's publication to its send on a websocket.",
            buckets=LAG_BUCKETS, registry=self.registry,
        )
        self.delete_duration = Histogram(
            "studio_delete_seconds", "Time a delete of jobs and their files took (one request or prune).",
            buckets=DELETE_BUCKETS, registry=self.registry,
        )
        self.deleted_jobs = Counter("studio_deleted_jobs", "Jobs deleted with their files.", registry=self.registry)
        if count_by_status is not None:
            self.registry.register(JobsByStatus(count_by_status))

    def delivered(self, message: str) -> None:
        """Note that an encoded event went out on a websocket now."""
        published = events.published_at(message)
        if published is not None:
            self.event_delivery.observe(max(0.0, time.time() - published))

    def exposition(self) -> bytes:
        """Every metric in Prometheus's text format."""
        return generate_latest(self.registry)
