"""The request pipeline: one ordered list of small named steps run before every request, and the headers after.

``STEPS`` is the whole of what happens before a view runs, in order; each step returns None to go on or
a response that answers the request. With STUDIO_ADMIN_PASSWORD set, every view but the login page and
static files needs either a session from /login (history.web.login) or ``Authorization: Bearer <token>``
(history.security explains the token). Every view is guarded unless it is marked with ``@public``, so a
new route is protected by default.

Cross-origin protection is the rule of Go 1.25's ``http.CrossOriginProtection``: a state-changing
request (POST, PUT, PATCH, DELETE) whose ``Sec-Fetch-Site`` is ``cross-site`` or ``same-site`` is refused
unless its Origin is one of STUDIO_EMBED_ORIGINS; without ``Sec-Fetch-Site`` (an older browser), one
whose ``Origin`` (or, lacking that, Referer) names another host is refused; a request with neither is not
from a browser and passes, so scripts call the JSON API with plain requests. No token is needed.
"""
from __future__ import annotations

import datetime
import time
from dataclasses import dataclass
from dataclasses import field
from urllib.parse import urlsplit

from flask import Flask
from flask import json as flask_json
from flask import current_app
from flask import g
from flask import jsonify
from flask import redirect
from flask import request
from flask import session
from flask import url_for

from werkzeug.exceptions import BadRequest

from history import security
from history import studio
from history import text
from history.models import EndedLogin
from history.web import cors
from history.web import errors

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_BODY_BYTES = 32 * 1024 * 1024  # uploads (an input image) through multipart
MAX_JSON_BYTES = 4 * 1024 * 1024  # a JSON body: 10,000 prompt ids fit with room to spare
LOGIN_LIFETIME_SECONDS = 12 * 3600
LOGIN_FAILURES_PER_MINUTE = 5
TOKEN_FAILURES_PER_MINUTE = 5
# How stale this process's copy of the ended logins may be: a logout elsewhere is honoured within this.
ENDED_LOGINS_SECONDS = 1.0
EXTENSION = "studio_auth"


def public(view):
    """Mark a view as open to anonymous visitors (the guard protects every other view)."""
    view._studio_public = True
    return view


@dataclass
class AuthState:
    """Per-app state: the rate limiters of failed logins and of failed bearer tokens (counted apart, so bad
    tokens never lock a person out of the login page), the accepted tokens (derived once, on first use)
    and the logins ended by a logout (read from the store at most every ENDED_LOGINS_SECONDS)."""

    limiter: security.RateLimiter
    scope: frozenset[str] | None = None
    token_limiter: security.RateLimiter = field(default_factory=lambda: security.RateLimiter(TOKEN_FAILURES_PER_MINUTE, 60.0))
    _tokens: dict = field(default_factory=dict)
    _ended: set = field(default_factory=set)
    _ended_read_at: float = float("-inf")

    def login_ended(self, login_id: str) -> bool:
        """Whether a logout (in any process sharing the store) ended this login."""
        now = time.monotonic()
        if login_id not in self._ended and now - self._ended_read_at >= ENDED_LOGINS_SECONDS:
            self._ended = ended_logins()
            self._ended_read_at = now
        return login_id in self._ended

    def ended_known_until(self) -> float:
        """Answer when (time.monotonic()) this process will next read the ended logins: until then a login's answer stands."""
        return self._ended_read_at + ENDED_LOGINS_SECONDS

    def end_login(self, login_id: str) -> None:
        """Note at once, in this process, a login this process's logout ended."""
        self._ended.add(login_id)

    def tokens(self, settings) -> list[str]:
        """Bearer tokens this app accepts: the password-derived one and STUDIO_API_TOKEN."""
        key = (settings.admin_password, settings.api_token)
        if key not in self._tokens:
            tokens = []
            if settings.admin_password:
                tokens.append(security.derive_api_token(settings.admin_password))
            if settings.api_token:
                tokens.append(settings.api_token)
            self._tokens = {key: tokens}  # PBKDF2 once per password, not once per request
        return self._tokens[key]


def _settings():
    return current_app.config["STUDIO"]


def state() -> AuthState:
    """This app's login rate limiter and bearer tokens."""
    return current_app.extensions[EXTENSION]


def client_address() -> str:
    """The address a request came from (after STUDIO_PROXY_FIX), for rate limits."""
    return request.remote_addr or "unknown"


def _is_websocket() -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"


def _is_htmx() -> bool:
    return request.headers.get("HX-Request") == "true"


def password_required() -> bool:
    """Whether this app asks for a login (STUDIO_ADMIN_PASSWORD is set)."""
    return bool(_settings().admin_password)


# ---- where a request comes from ------------------------------------------------------------------

def _host_origin() -> str | None:
    return security.origin_of(request.host_url)


def is_same_origin(origin: str | None) -> bool:
    """Whether ``origin`` is this site: same host and port, same scheme (or https seen as http behind a proxy)."""
    own = _host_origin()
    if origin is None or own is None:
        return False
    if origin == own:
        return True
    # A TLS-terminating proxy without STUDIO_PROXY_FIX shows us http while the browser says https.
    return own.startswith("http://") and origin == "https://" + own[len("http://"):]


def _origin_is_this_host(origin: str) -> bool:
    """Whether an Origin header names this host and port (the scheme aside, as Go compares it with Host)."""
    return urlsplit(origin.strip()).netloc.lower() == request.host.lower()


def cross_origin_refusal() -> str | None:
    """Why a state-changing request from another site is refused (Go's CrossOriginProtection rule), or None."""
    site = request.headers.get("Sec-Fetch-Site", "")
    origin = request.headers.get("Origin")
    if site in ("same-origin", "none"):
        return None
    if site:
        if security.origin_of(origin) in _settings().embed_origins:
            return None
        return f"it came from another site (Sec-Fetch-Site: {site[:32]})"
    if origin is None:
        # A browser too old for Sec-Fetch-Site that sent no Origin still names the page in Referer.
        origin = request.headers.get("Referer")
        if origin is None:
            return None  # neither header: not a browser (a script, curl), nothing ambient to forge
    if _origin_is_this_host(origin) or security.origin_of(origin) in _settings().embed_origins:
        return None
    return f"its Origin is not this site ({security.origin_of(origin) or 'an opaque origin'})"


# ---- who is asking ---------------------------------------------------------------------------------

def ended_logins() -> set[str]:
    """The ids of logins a logout ended that have not run out yet (one indexed query)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return {login_id for (login_id,) in EndedLogin.select(EndedLogin.login_id).where(EndedLogin.until > now).tuples()}


def session_login_valid() -> bool:
    """Whether the session holds a login for the current password that has not outlived its lifetime
    and that no logout has ended (the login's id is checked against the store, in every process)."""
    settings = _settings()
    if not settings.admin_password or "login_at" not in session:
        return False
    fingerprint = security.password_fingerprint(current_app.secret_key, settings.admin_password)
    login_at = session.get("login_at")
    login_id = session.get("login_id")
    lifetime = current_app.config["LOGIN_LIFETIME"]
    if (
        not security.equals(session.get("login"), fingerprint)
        or not isinstance(login_at, (int, float))
        or not 0 <= time.time() - login_at < lifetime
        or not isinstance(login_id, str)
        or state().login_ended(login_id)
    ):
        session.pop("login", None)
        session.pop("login_at", None)
        session.pop("login_id", None)
        return False
    return True


def current_login() -> str | None:
    """How the current request is authenticated: "bearer", "session", or None."""
    return g.get("studio_login")


def login_ends_at() -> float | None:
    """When the current request's session login runs out (a Unix time), or None for a login that does not."""
    if current_login() != "session":
        return None
    return session["login_at"] + current_app.config["LOGIN_LIFETIME"]


def caller_holds_until() -> float:
    """Answer until when (a Unix time) the pipeline would decide the same about an identical request's caller.

    Without a password, or with a bearer token, the decision depends on the request alone; a session login
    holds until it runs out or this process next reads the logins a logout ended (a logout in another
    process is then honoured as soon as it would be without the repeat). Anonymous with a password: never.
    """
    login = current_login()
    if not password_required() or login == "bearer":
        return float("inf")
    if login == "session":
        ended_read_in = state().ended_known_until() - time.monotonic()
        return min(login_ends_at(), time.time() + ended_read_in)
    return float("-inf")


def websocket_allowed() -> bool:
    """Whether this websocket request may listen: logged in (or no password), from an allowed Origin.

    The pipeline has refused anything else before the view ran; the websocket view asks again, so that
    the answer holds even where the pipeline was not installed.
    """
    if password_required() and current_login() is None:
        return False
    return websocket_origin_allowed()


def websocket_origin_allowed() -> bool:
    """Whether a websocket's Origin is this site or one of STUDIO_EMBED_ORIGINS (no Origin: not a browser)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    seen = security.origin_of(origin)
    return is_same_origin(seen) or seen in _settings().embed_origins


def _bearer_given() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip()


# ---- refusals ----------------------------------------------------------------------------------------

def login_url(next_path: str | None = None) -> str:
    """The login page, coming back to ``next_path`` (a local path) afterwards."""
    next_path = security.local_path(next_path)
    return url_for("login.login", next=next_path) if next_path else url_for("login.login")


def _current_path() -> str:
    path = request.script_root + request.path
    query = request.query_string.decode("latin-1")
    return path + ("?" + query if query else "")


def _htmx_login_url() -> str:
    """The login page, coming back to the page an htmx request came from (when it is on this site)."""
    current = request.headers.get("HX-Current-URL")
    back = None
    if current and is_same_origin(security.origin_of(current)):
        back = "/" + current.split("://", 1)[-1].partition("/")[2]
    return login_url(back)


def _refuse_anonymous():
    """401 JSON for the API, an HX-Redirect for htmx, a plain 401 for the websocket, else a redirect to login."""
    if errors.wants_json():
        response = jsonify(error="log in first: sign in at the login page, or send Authorization: Bearer <token>")
        response.status_code = 401
        response.headers["WWW-Authenticate"] = 'Bearer realm="studio-history"'
        if _is_htmx():
            response.headers["HX-Redirect"] = _htmx_login_url()  # a Retry button's POST, say
        return response
    if _is_websocket():
        return errors.plain(401, "log in first: the websocket needs a session or a bearer token")
    if _is_htmx():
        response = errors.plain(401, "your login has expired: log in again")
        response.headers["HX-Redirect"] = _htmx_login_url()
        return response
    return redirect(login_url(_current_path() if request.method in ("GET", "HEAD") else None))


def too_many(wait: int, what: str = "logins"):
    """429 for an address that failed too many logins (or bearer tokens), saying when to try again."""
    return errors.refusal(
        429, f"too many failed {what} from your address: try again in {wait} s", **{"Retry-After": str(wait)}
    )


# ---- the steps ----------------------------------------------------------------------------------------

def _is_public_endpoint(endpoint: str | None) -> bool:
    if endpoint is None:
        return True  # no route matched: the 404/405 handlers answer, nothing is served
    if endpoint == "static" or endpoint.endswith(".static"):
        return True
    view = current_app.view_functions.get(endpoint)
    return bool(getattr(view, "_studio_public", False))


def _ours() -> bool:
    """Whether the request is for this studio (all of the app, or only its blueprints inside a host app)."""
    scope = state().scope
    return scope is None or request.blueprint in scope


def _served() -> bool:
    """Whether a view will serve this request.

    Preflights carry no credentials (Flask or the CORS layer answers them); an unrouted request gets its
    404/405 from the error handlers, and nothing is served or changed.
    """
    return request.method != "OPTIONS" and request.endpoint is not None


class RequestBodyJSON:
    """The JSON module request bodies are read with (``get_json``): history.text's, so JSON nested deeper
    than text.MAX_DEPTH (a 2 KB body can nest 1,000 deep, past Python's recursion limit) or holding a lone
    surrogate is a 400 naming the field, even for ``get_json(silent=True)``, which would otherwise read it
    as no body at all. Answers and everything else keep Flask's JSON."""

    dumps = staticmethod(flask_json.dumps)

    @staticmethod
    def loads(s, **kwargs):
        try:
            return text.loads(s)
        except text.InvalidText as error:
            refusal = BadRequest(str(error))
            refusal.field = error.field  # the API's 400s name their field (errors.http_error)
            raise refusal from None


def request_class(base: type) -> type:
    """``base`` (Flask's or htmx-flask's request class) reading JSON bodies with RequestBodyJSON."""

    class StudioRequest(base):
        @property
        def json_module(self):
            return RequestBodyJSON

        @json_module.setter
        def json_module(self, value):
            pass  # Flask sets app.json on each request; answers keep it, bodies are read as above

    return StudioRequest


WORKER_ENDPOINTS = frozenset({"monitoring.healthz", "monitoring.metrics"})


def serve_workers_health_only():
    """Refuse anything but /healthz and /metrics in a ``worker`` process (STUDIO_ROLE), which runs jobs."""
    if _settings().role != "worker" or request.endpoint in WORKER_ENDPOINTS:
        return None
    return errors.plain(404, "this process is a worker (STUDIO_ROLE=worker): it runs jobs and serves only "
                             "/healthz and /metrics; pages and the API are on the web processes")


def limit_body_size():
    """A JSON body may be at most MAX_JSON_BYTES (uploads keep MAX_CONTENT_LENGTH)."""
    if request.mimetype == "application/json":
        request.max_content_length = min(MAX_JSON_BYTES, current_app.config.get("MAX_CONTENT_LENGTH") or MAX_JSON_BYTES)
    return None


def identify_caller():
    """Who is asking: a valid bearer token, a session login, or nobody (a wrong token is refused)."""
    if not _served():
        return None
    given = _bearer_given()
    tokens = state().tokens(_settings()) if given is not None else []
    if given is not None and tokens:
        # A valid token is never refused; failed ones are counted apart from failed logins.
        if not any(security.equals(given, token) for token in tokens):
            address = client_address()
            wait = state().token_limiter.retry_after(address)
            if wait:
                return too_many(wait, "bearer tokens")
            state().token_limiter.fail(address)
            return errors.refusal(401, "the bearer token is not valid", **{"WWW-Authenticate": 'Bearer error="invalid_token"'})
        g.studio_login = "bearer"
    elif session_login_valid():
        g.studio_login = "session"
    return None


def require_login():
    """With a password, every view not marked ``@public`` needs a login."""
    if not _served() or not password_required() or current_login() is not None:
        return None
    if _is_public_endpoint(request.endpoint):
        return None
    return _refuse_anonymous()


def check_host():
    """Without a password, a browser on this machine must ask for the studio by a loopback name.

    DNS rebinding: a page on another site whose name now points at 127.0.0.1 would be same-origin with
    an open studio.
    """
    settings = _settings()
    if (
        not _served()
        or settings.admin_password
        or settings.proxy_fix
        or not security.is_loopback_address(request.remote_addr)
        or security.is_loopback_host(request.host)
    ):
        return None
    return errors.refusal(
        403,
        f"refused: this studio has no password and answers on this machine only as localhost or 127.0.0.1, "
        f"not as {security.safe_host(request.host) or 'that host'}; set STUDIO_ADMIN_PASSWORD "
        "(or STUDIO_PROXY_FIX behind a proxy)",
    )


def check_websocket_origin():
    """Browsers always send Origin on a websocket; a page on another site must not ride our cookie."""
    if not _served() or not _is_websocket() or websocket_origin_allowed():
        return None
    return errors.plain(403, "websocket refused: its Origin is not this site nor one of STUDIO_EMBED_ORIGINS")


def check_cross_origin():
    """Refuse a state-changing request a browser sent from another site (cross_origin_refusal)."""
    if not _served() or _is_websocket() or request.method not in UNSAFE_METHODS:
        return None
    reason = cross_origin_refusal()
    if reason is None:
        return None
    return errors.refusal(
        403,
        f"cross-origin request refused: {reason}. Use this studio's own pages, or call the API from a "
        "script (no Origin or Sec-Fetch-Site header; with a password, Authorization: Bearer <token>)",
    )


# The pipeline, in order. A CORS preflight is answered before anything else, and background work starts
# on the first request whoever makes it. No step opens the database: peewee's autoconnect opens the
# request's connection at its first query (db.py closes it in teardown), so a request that needs none
# (an idle poll answered from history/changes.py, a static file) never pays for one.
STEPS = (
    cors.answer_preflight,
    studio.start_background_work,
    serve_workers_health_only,
    limit_body_size,
    check_host,
    identify_caller,
    require_login,
    check_websocket_origin,
    check_cross_origin,
)


def run_steps():
    """Before every request: run STEPS in order until one answers."""
    if not _ours():
        return None
    for step in STEPS:
        response = step()
        if response is not None:
            return response
    return None


# ---- headers ------------------------------------------------------------------------------------------

def content_security_policy() -> str:
    """The page policy: only this site's scripts, styles and connections; frames only by embed origins."""
    settings = _settings()
    connect = ["'self'"]
    host = security.safe_host(request.host)
    if host:
        # CSP3 lets 'self' match ws(s) on the same host; older engines need it spelled out.
        connect += [f"ws://{host}", f"wss://{host}"]
    ancestors = " ".join(["'self'", *settings.embed_origins])
    return "; ".join([
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "media-src 'self' blob:",
        "connect-src " + " ".join(connect),
        "frame-ancestors " + ancestors,
        "base-uri 'self'",
        "form-action 'self'",
        "object-src 'none'",
    ])


def security_headers(response):
    """CSP (unless a view set its own, like media), nosniff, referrer and frame policy."""
    if response.status_code in (204, 304):
        # No body, nothing to render or frame: an idle poll stays a few hundred bytes on the wire.
        response.headers.pop("Content-Type", None)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response
    if "Content-Security-Policy" not in response.headers:
        response.headers["Content-Security-Policy"] = content_security_policy()
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if not _settings().embed_origins:
        response.headers.setdefault("X-Frame-Options", "SAMEORIGIN")
    return response


def count_list_poll(response):
    """Count the history list's answers for /metrics: 200 rendered, 204 or 304 when nothing changed."""
    if request.endpoint == "history.history_list" and not request.args.get("before"):
        studio.studio().metrics.list_polls.labels(str(response.status_code)).inc()
    return response


AFTER_STEPS = (
    cors.add_headers,
    security_headers,
    count_list_poll,
)


def finish_response(response):
    """After every request: run AFTER_STEPS in order on the response."""
    if not _ours():
        return response
    for step in AFTER_STEPS:
        response = step(response)
    return response


def init_app(app: Flask, blueprints: set[str] | None = None) -> None:
    """Run the pipeline before every request and the header steps after it; set the session and body limits.

    ``blueprints`` limits the pipeline and the headers to those blueprints (and the login one), for a host
    app that mounts the studio beside routes of its own; by default they cover the whole app.
    """
    scope = frozenset(blueprints) | {"login"} if blueprints is not None else None
    app.extensions[EXTENSION] = AuthState(security.RateLimiter(LOGIN_FAILURES_PER_MINUTE, 60.0), scope)
    app.config.setdefault("LOGIN_LIFETIME", LOGIN_LIFETIME_SECONDS)
    if app.config.get("MAX_CONTENT_LENGTH") is None:
        app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.request_class = request_class(app.request_class)
    app.before_request(run_steps)
    app.after_request(finish_response)
