"""The websocket: job events as JSON text frames ``{"type", "data", "ts"}`` at /ws.

One Subscription per connection; the bus only queues messages, and this route's own thread is the
only one that calls ``send`` (flask-sock's rule). Pings (SOCK_SERVER_OPTIONS ping_interval) keep it
alive. It holds no database connection for its lifetime.
"""
from __future__ import annotations

from flask import Blueprint
from flask_sock import Sock
from simple_websocket import ConnectionClosed

from history.db import database
from history.runner import studio

bp = Blueprint("ws", __name__)
sock = Sock()

# How long the sender waits for an event before it checks that the client is still there.
IDLE_CHECK_SECONDS = 1.0


def authorize_websocket() -> bool:
    """Whether this websocket request may listen: history.web.auth checks the login and the Origin."""
    from history.web import auth

    return auth.websocket_allowed()


@sock.route("/ws", bp=bp)
def events(ws):
    """Send every job event of this studio to the client until it goes away."""
    # db.py's before_request opened a connection for this request; a websocket must not hold one.
    if not database.is_closed():
        database.close()
    if not authorize_websocket():
        ws.close(reason=1008, message="login required")
        return
    subscription = studio().bus.subscribe()
    try:
        while ws.connected and not subscription.closed.is_set():
            message = subscription.get(timeout=IDLE_CHECK_SECONDS)
            if message is not None:
                ws.send(message)
    except ConnectionClosed:
        pass
    finally:
        subscription.close()
