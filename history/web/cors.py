"""CORS for the fragments another site may embed: the list, one card and a job's overlay.

Only the origins in STUDIO_EMBED_ORIGINS get ``Access-Control-Allow-Origin`` (their own origin, never
``*``), and ``Access-Control-Allow-Credentials`` only with STUDIO_EMBED_CREDENTIALS. Every answer of these
endpoints says ``Vary: Origin`` (a shared cache must not hand one origin's answer to another). A preflight
from an allowed origin for GET gets the headers htmx sends; any other preflight gets 403. No other
endpoint answers cross-origin requests; history/web/guard.py refuses a write from another site unless it is one
of those origins.

Fragments fetched by another origin carry absolute URLs (``http://studio.example/media/...``): a relative
one would resolve against the embedding page's own site.
"""
from __future__ import annotations

from flask import current_app
from flask import g
from flask import make_response
from flask import request

from history import security

# The endpoints another origin may fetch (history.py's fragments).
FRAGMENT_ENDPOINTS = frozenset({"history.history_list", "history.history_card", "history.history_job"})
# What htmx 4 sends on a request (HX-Boosted only on boosted links) and the list poller's ETag header.
ALLOWED_REQUEST_HEADERS = (
    "HX-Request",
    "HX-Current-URL",
    "HX-Source",
    "HX-Target",
    "HX-Request-Type",
    "HX-Boosted",
    "X-List-ETag",  # history.LIST_ETAG_HEADER, the list poller's (a test holds the two equal)
)
ALLOWED_METHODS = ("GET", "HEAD")
ABSOLUTE_URLS = "studio_absolute_urls"  # the g key absolute_urls_wanted() reads
PREFLIGHT_MAX_AGE = 600  # seconds a browser may reuse a preflight (Chromium caps it at 7200)


def _settings():
    return current_app.config["STUDIO"]


def embedding_origin() -> str | None:
    """The Origin of this request when it is an allowed embedding origin for a fragment, else None."""
    if request.endpoint not in FRAGMENT_ENDPOINTS:
        return None
    origin = security.origin_of(request.headers.get("Origin"))
    if origin is None or origin not in _settings().embed_origins:
        return None
    return origin


def absolute_urls_wanted() -> bool:
    """Whether this request's URLs must be built absolute: a fragment fetched by an allowed other origin.

    history.StudioFlask.url_for asks this (through ``g``) for every URL it builds, Python and templates,
    media and thumbnails included.
    """
    return bool(g.get(ABSOLUTE_URLS))


def answer_preflight():
    """Before a request (history.web.guard runs it first): answer preflights of the fragment endpoints; make a cross-origin fragment's URLs absolute."""
    if request.endpoint not in FRAGMENT_ENDPOINTS:
        return None
    origin = embedding_origin()
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        wanted = request.headers["Access-Control-Request-Method"].upper()
        if origin is None or wanted not in ALLOWED_METHODS:
            g.studio_cors_refused = True
            reason = "the Origin is not in STUDIO_EMBED_ORIGINS" if origin is None else f"only {', '.join(ALLOWED_METHODS)}"
            response = make_response(f"cross-origin request refused: {reason}\n", 403)
            response.mimetype = "text/plain"
            return response
        response = make_response("", 204)
        response.headers["Access-Control-Allow-Methods"] = ", ".join(ALLOWED_METHODS)
        response.headers["Access-Control-Allow-Headers"] = ", ".join(ALLOWED_REQUEST_HEADERS)
        response.headers["Access-Control-Max-Age"] = str(PREFLIGHT_MAX_AGE)
        return response
    if origin is not None:
        g.setdefault(ABSOLUTE_URLS, True)  # a relative URL would resolve against the embedding page's site
    return None


def add_headers(response):
    """After a request: add the CORS headers of an allowed origin, and Vary: Origin to every fragment answer."""
    if request.endpoint not in FRAGMENT_ENDPOINTS:
        return response
    response.vary.add("Origin")
    origin = embedding_origin()
    if origin is not None and not g.get("studio_cors_refused"):
        response.headers["Access-Control-Allow-Origin"] = origin
        if _settings().embed_credentials:
            response.headers["Access-Control-Allow-Credentials"] = "true"
    return response
