"""Hands jobs to the executor, records their lifecycle, publishes events, watches for stalls."""
from __future__ import annotations

from history.events import EventBus


class Studio:
    """What one app runs beside its requests: the event bus, the runner and its executor."""

    def __init__(self, settings, bus: EventBus):
        self.settings = settings
        self.bus = bus

    def stop(self) -> None:
        """Stop background work."""
        self.bus.stop()


def init_app(app) -> None:
    """Attach the event bus and runner to the app."""
    app.extensions["studio"] = Studio(app.config["STUDIO"], EventBus())


def studio(app=None) -> Studio:
    """The Studio of the current (or given) app."""
    from flask import current_app

    return (app or current_app).extensions["studio"]
