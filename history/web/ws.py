"""The websocket: job events as JSON text frames ``{"type", "data", "ts"}`` at /ws (``?events=`` narrows the types).

One Subscription per connection; the bus only queues messages, and this route's own thread is the
only one that calls ``send`` (flask-sock's rule). Pings (SOCK_SERVER_OPTIONS ping_interval) keep it
alive. It holds no database connection for its lifetime.
"""
from __future__ import annotations

import functools
import time

from flask import Blueprint
from flask import request
from flask_sock import Sock
from simple_websocket import ConnectionClosed

from history.db import database
from history.events import EVENT_TYPES
from history.studio import studio
from history.web import guard

bp = Blueprint("ws", __name__)
sock = Sock()

# How long the sender waits for an event before it checks that the client is still there.
IDLE_CHECK_SECONDS = 1.0


def authorize_websocket() -> tuple[bool, float | None]:
    """Whether this websocket request may listen (history.web.guard checks the login and the Origin),
    and when its login runs out (None: never)."""
    if not guard.websocket_allowed():
        return False, None
    return True, guard.login_ends_at()


def wanted_types() -> list[str] | None:
    """The event types the client asked for (``?events=job.completed,job.failed``), or None for all."""
    raw = request.args.get("events")
    if not raw:
        return None
    # Unknown names are left out rather than refused: a page written for a newer studio still connects.
    return [name for name in raw.split(",") if name in EVENT_TYPES] or None


@functools.lru_cache(maxsize=64)
def text_frame(message: str) -> bytes:
    """The websocket text frame (RFC 6455: final, unmasked, uncompressed) of an event, built once per
    event for every socket that sends it, rather than by wsproto once per socket (and deflated per socket
    when the browser offered permessage-deflate, which allows uncompressed messages)."""
    payload = message.encode()
    size = len(payload)
    if size < 126:
        head = bytes((0x81, size))
    elif size < 1 << 16:
        head = bytes((0x81, 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((0x81, 127)) + size.to_bytes(8, "big")
    return head + payload


@sock.route("/ws", bp=bp)
def events(ws):
    """Send every job event of this studio to the client until it goes away."""
    # The request pipeline opened a connection for this request; a websocket must not hold one.
    if not database.is_closed():
        database.close()
    allowed, login_ends_at = authorize_websocket()
    if not allowed:
        ws.close(reason=1008, message="login required")
        return
    metrics = studio().metrics
    subscription = studio().bus.subscribe(wanted_types())
    metrics.websockets_open.inc()
    try:
        while ws.connected and not subscription.closed.is_set():
            if login_ends_at is not None and time.time() >= login_ends_at:
                # No more events once the login is over; the page's next request goes to the login form.
                ws.close(reason=1008, message="login expired")
                return
            message = subscription.get(timeout=IDLE_CHECK_SECONDS)
            if message is not None and ws.connected:
                # simple-websocket's send() frames through wsproto per socket; the frame is the same for all.
                ws.sock.sendall(text_frame(message))
                metrics.delivered(message)
    except (ConnectionClosed, OSError):
        pass
    finally:
        metrics.websockets_open.dec()
        subscription.close()
