"""Events across processes through PostgreSQL LISTEN/NOTIFY."""
from __future__ import annotations

import json

import pytest

from history.events_pg import PostgresEventBus
from tests.conftest import POSTGRES_URL


@pytest.fixture
def two_buses():
    first = PostgresEventBus(POSTGRES_URL)
    second = PostgresEventBus(POSTGRES_URL, load_job=lambda prompt_id: {"prompt_id": prompt_id, "loaded": True})
    for bus in (first, second):
        bus.start()
        assert bus.wait_listening(), "the listener did not connect to PostgreSQL"
    yield first, second
    first.stop()
    second.stop()


def test_an_event_reaches_the_other_process_once(two_buses):
    first, second = two_buses
    with first.subscribe() as local, second.subscribe() as remote:
        first.publish("job.completed", {"prompt_id": "abc", "status": "completed"})
        mine = json.loads(local.get(timeout=5))
        theirs = json.loads(remote.get(timeout=5))
        assert mine["type"] == theirs["type"] == "job.completed"
        assert theirs["data"] == {"prompt_id": "abc", "status": "completed"}
        assert theirs["ts"] == mine["ts"]
        assert local.get(timeout=0.3) is None  # the sender does not hear its own NOTIFY again


def test_a_payload_over_the_notify_limit_travels_by_id(two_buses):
    first, second = two_buses
    with second.subscribe() as remote:
        first.publish("job.completed", {"prompt_id": "big", "params": {"positive_prompt": "x" * 20_000}})
        event = json.loads(remote.get(timeout=5))
        assert event["type"] == "job.completed"
        assert event["data"] == {"prompt_id": "big", "loaded": True}
