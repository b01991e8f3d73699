"""Repeat a list poll's answer before Flask's dispatch: the same request, the store unchanged, the caller's login still good.

A page polls its list every few seconds with the same request (its cookie or token, the ETag it shows) and,
while nothing changed, gets the same 204 (or 304) with the same headers; after a change, every open page
sends the same request once and gets the same new list. The full app answers the first of them: the request
pipeline (history.web.guard) decides the host, the caller and the origin, the view compares the ETag. The
view then says its answer may be repeated (``allow_repeat``), with the change token it was made under and
how long the guard's decision holds; this layer keeps the answer under the request's exact inputs (method,
path, query, every header, the client's address, the scheme) and gives it to an identical request while the
token has not moved and the deadline has not passed. It decides nothing itself: any other request, or any
request after a change, goes through the app as before. No Flask import.
"""
from __future__ import annotations

import threading
import time

# Where a view leaves its permission to repeat (a RepeatableAnswer) in the WSGI environ.
ENVIRON_KEY = "studio.repeatable_answer"
# Every environ entry besides the HTTP_* headers that can change what the app answers to a GET.
ENVIRON_INPUTS = (
    "REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "RAW_URI", "REQUEST_URI", "CONTENT_TYPE",
    "CONTENT_LENGTH", "SERVER_NAME", "SERVER_PORT", "SERVER_PROTOCOL", "REMOTE_ADDR", "wsgi.url_scheme",
)
# Only a conditional GET is a poll: the poller's X-List-ETag or a client's If-None-Match.
CONDITIONAL_HEADERS = ("HTTP_X_LIST_ETAG", "HTTP_IF_NONE_MATCH")
MAX_ANSWERS = 1024
MAX_BYTES = 32 * 1024 * 1024  # the bodies kept, all together (a list of 50 cards is about 90 KB)


class RepeatableAnswer:
    """What lets an answer be repeated: the store's change token it was made under, when, and until when the
    guard's decision on its caller holds."""

    __slots__ = ("changes", "token", "made_at", "holds_until", "on_repeat")

    def __init__(self, changes, token, made_at: float, holds_until: float, on_repeat=None):
        self.changes = changes  # a history.changes.StoreChanges
        self.token = token
        self.made_at = made_at  # time.monotonic() when the answer's ETag was computed
        self.holds_until = holds_until  # a Unix time, like a login's end
        self.on_repeat = on_repeat  # called on every repeat (a metrics counter's inc)

    def holds(self) -> bool:
        """Say whether the answer is still the one the app would give (the token also runs out after its max age)."""
        return time.time() < self.holds_until and self.changes.fresh(self.token, self.made_at)


def allow_repeat(environ: dict, changes, token, made_at: float, holds_until: float, on_repeat=None) -> None:
    """Let the answer to this request be repeated to identical requests while ``changes`` stays at ``token``
    (taken before the answer was decided), for the token's max age from ``made_at`` and until ``holds_until``
    (a Unix time)."""
    if token is not None:
        environ[ENVIRON_KEY] = RepeatableAnswer(changes, token, made_at, holds_until, on_repeat)


def request_key(environ: dict):
    """Answer the inputs of a request that decide its answer (None for a request that cannot be a poll)."""
    if environ.get("REQUEST_METHOD") != "GET" or not any(name in environ for name in CONDITIONAL_HEADERS):
        return None
    return (tuple(environ.get(name) for name in ENVIRON_INPUTS),
            tuple(item for item in environ.items() if item[0].startswith("HTTP_")))


class PollAnswers:
    """WSGI middleware: repeat the answers the app allowed (allow_repeat) to identical requests while they hold."""

    def __init__(self, wsgi_app, size: int = MAX_ANSWERS, max_bytes: int = MAX_BYTES):
        self.wsgi_app = wsgi_app
        self.size = size
        self.max_bytes = max_bytes
        self._answers: dict = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def __call__(self, environ, start_response):
        key = request_key(environ)
        if key is None:
            return self.wsgi_app(environ, start_response)
        entry = self._answers.get(key)
        if entry is not None:
            status, headers, body, repeatable = entry
            if repeatable.holds():
                if repeatable.on_repeat is not None:
                    repeatable.on_repeat()
                start_response(status, list(headers))
                return [body]
            self._forget(key, entry)
        answered = []

        def keep_answer(status, headers, exc_info=None):
            answered.append((status, headers))
            return start_response(status, headers, exc_info)

        chunks = self.wsgi_app(environ, keep_answer)
        repeatable = environ.get(ENVIRON_KEY)
        if repeatable is None or not answered:
            return chunks
        try:
            body = b"".join(chunks)  # a rendered fragment or nothing: never a stream
        finally:
            if hasattr(chunks, "close"):
                chunks.close()
        self._keep(key, answered[-1], body, repeatable)
        return [body]

    def _keep(self, key, answer, body: bytes, repeatable: RepeatableAnswer) -> None:
        status, headers = answer
        if status[:3] not in ("200", "204", "304") or any(name.lower() == "set-cookie" for name, _ in headers):
            return  # an answer that sets something on the client is not the same for the next one
        if len(body) > self.max_bytes // 8:
            return
        with self._lock:
            old = self._answers.pop(key, None)
            if old is not None:
                self._bytes -= len(old[2])
            self._answers[key] = (status, tuple(headers), body, repeatable)
            self._bytes += len(body)
            while len(self._answers) > self.size or self._bytes > self.max_bytes:
                oldest = self._answers.pop(next(iter(self._answers)))
                self._bytes -= len(oldest[2])

    def _forget(self, key, entry) -> None:
        with self._lock:
            if self._answers.get(key) is entry:
                del self._answers[key]
                self._bytes -= len(entry[2])


def init_app(app) -> None:
    """Put the poll-answer layer in front of the app's WSGI callable."""
    app.wsgi_app = PollAnswers(app.wsgi_app)
