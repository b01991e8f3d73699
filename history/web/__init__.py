"""Blueprints: one per surface (history, queue, assets, JSON API, media, websocket, login, monitoring)."""
from __future__ import annotations

from flask import Flask
from htmx_flask import Htmx

from history.web import api
from history.web import assets
from history.web import errors
from history.web import guard
from history.web import history
from history.web import poll_answers
from history.web import login
from history.web import media
from history.web import monitoring
from history.web import queue
from history.web import templating
from history.web import ws

SURFACES = (history, queue, assets, api, media, ws, monitoring)


def init_app(app: Flask, url_prefix: str = "") -> None:
    """Register every surface under ``url_prefix``, the login, the request pipeline, templates and errors."""
    if "htmx" not in app.extensions:
        Htmx(app)  # request.htmx reads HX-Request
    for module in SURFACES:
        app.register_blueprint(module.bp, url_prefix=url_prefix or None)
    ws.sock.init_app(app)
    login.init_app(app)
    guard.init_app(app)  # the pipeline before every view: limits, host, who is asking, login, cross-origin
    templating.init_app(app)
    errors.init_app(app)
    poll_answers.init_app(app)  # in front of it all: an identical idle poll gets the app's own answer again
