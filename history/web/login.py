"""Access control: login, the guard in front of every view, CSRF, origins and security headers.

With STUDIO_ADMIN_PASSWORD set, every view but the login page and static files needs either a session
from /login (a signed cookie: HttpOnly, SameSite=Lax, Secure over https, valid for a fixed time from the
login that polling does not extend) or ``Authorization: Bearer <token>`` (history.security explains the
token). Every view is guarded unless it is marked with ``@public``, so a new route is protected by default.

Every state-changing request (POST, PUT, PATCH, DELETE) must carry the session's CSRF token (header
``X-CSRF-Token`` or form field ``csrf_token``), or be JSON from this site's own origin, or come from a
bearer client (no cookie, so nothing ambient to forge). Pages put the token in ``<meta name="csrf-token">``
and on ``<body hx-headers:inherited=...>`` so htmx sends it on every request.
"""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from dataclasses import field

import click
from flask import Blueprint
from flask import Flask
from flask import current_app
from flask import g
from flask import has_request_context
from flask import jsonify
from flask import make_response
from flask import redirect
from flask import render_template
from flask import request
from flask import session
from flask import url_for
from flask.cli import with_appcontext
from flask.sessions import SecureCookieSessionInterface
from markupsafe import Markup
from markupsafe import escape

from history import security

bp = Blueprint("auth", __name__)

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
CSRF_KEY = "csrf"
FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})
MAX_BODY_BYTES = 32 * 1024 * 1024  # uploads (an input image) through multipart
MAX_JSON_BYTES = 4 * 1024 * 1024  # a JSON body: 10,000 prompt ids fit with room to spare
LOGIN_LIFETIME_SECONDS = 12 * 3600
LOGIN_FAILURES_PER_MINUTE = 5


def public(view):
    """Mark a view as open to anonymous visitors (the guard protects every other view)."""
    view._studio_public = True
    return view


@dataclass
class AuthState:
    """Per-app state: the login rate limiter and the accepted bearer tokens (derived once, on first use)."""

    limiter: security.RateLimiter
    scope: frozenset[str] | None = None
    _tokens: dict = field(default_factory=dict)

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


class StudioSessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, with the Secure flag whenever the request came over https."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"]) or (has_request_context() and request.is_secure)


def _settings():
    return current_app.config["STUDIO"]


def _state() -> AuthState:
    return current_app.extensions["studio_auth"]


def _client_address() -> str:
    return request.remote_addr or "unknown"


def _api_root() -> str:
    return _settings().url_prefix + "/api/"


def _is_api() -> bool:
    return request.path.startswith(_api_root())


def _is_websocket() -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"


def _is_htmx() -> bool:
    return request.headers.get("HX-Request") == "true"


def password_required() -> bool:
    """Whether this app asks for a login (STUDIO_ADMIN_PASSWORD is set)."""
    return bool(_settings().admin_password)


# ---- CSRF ----------------------------------------------------------------------------------------

def csrf_token() -> str:
    """This session's CSRF token (made on first use); pages put it in a meta tag and htmx sends it."""
    token = session.get(CSRF_KEY)
    if not isinstance(token, str) or len(token) < 32:
        token = secrets.token_urlsafe(32)
        session[CSRF_KEY] = token
    return token


def csrf_field() -> Markup:
    """A hidden form field carrying the CSRF token, for plain (non-htmx) forms."""
    return Markup(f'<input type="hidden" name="{CSRF_FIELD}" value="{escape(csrf_token())}">')


def request_origin() -> str | None:
    """The origin the request says it came from: Origin, or Referer's origin when Origin is absent."""
    origin = request.headers.get("Origin")
    if origin is not None:
        return security.origin_of(origin)
    return security.origin_of(request.headers.get("Referer"))


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


def csrf_valid() -> bool:
    """Whether a state-changing request carries this session's token, or is JSON from this very origin."""
    expected = session.get(CSRF_KEY)
    given = request.headers.get(CSRF_HEADER)
    if given is None and request.mimetype in FORM_TYPES:
        given = request.form.get(CSRF_FIELD)
    if isinstance(expected, str) and security.equals(given, expected):
        return True
    return request.mimetype == "application/json" and is_same_origin(request_origin())


# ---- who is asking ---------------------------------------------------------------------------------

def session_login_valid() -> bool:
    """Whether the session holds a login for the current password that has not outlived its lifetime."""
    settings = _settings()
    if not settings.admin_password or "login_at" not in session:
        return False
    fingerprint = security.password_fingerprint(current_app.secret_key, settings.admin_password)
    login_at = session.get("login_at")
    lifetime = current_app.config["LOGIN_LIFETIME"]
    if (
        not security.equals(session.get("login"), fingerprint)
        or not isinstance(login_at, (int, float))
        or not 0 <= time.time() - login_at < lifetime
    ):
        session.pop("login", None)
        session.pop("login_at", None)
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


def websocket_allowed() -> bool:
    """Whether this websocket request may listen: logged in (or no password), from an allowed Origin.

    The guard has refused anything else before the view ran; the websocket view asks again, so that the
    answer holds even where the guard was not installed.
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
    return url_for("auth.login", next=next_path) if next_path else url_for("auth.login")


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
    if _is_api():
        response = jsonify(error="log in first: sign in at the login page, or send Authorization: Bearer <token>")
        response.status_code = 401
        response.headers["WWW-Authenticate"] = 'Bearer realm="studio-history"'
        if _is_htmx():
            response.headers["HX-Redirect"] = _htmx_login_url()  # a Retry button's POST, say
        return response
    if _is_websocket():
        return _plain(401, "log in first: the websocket needs a session or a bearer token")
    if _is_htmx():
        response = _plain(401, "your login has expired: log in again")
        response.headers["HX-Redirect"] = _htmx_login_url()
        return response
    return redirect(login_url(_current_path() if request.method in ("GET", "HEAD") else None))


def _plain(status: int, message: str, **headers):
    response = make_response(message + "\n", status)
    response.mimetype = "text/plain"
    response.headers.update(headers)
    return response


def refusal(status: int, message: str, **headers):
    """A 4xx that says what to do: JSON ``{"error"}`` under /api/, plain text elsewhere."""
    if _is_api():
        response = jsonify(error=message)
        response.status_code = status
        response.headers.update(headers)
        return response
    return _plain(status, message, **headers)


def _too_many(wait: int):
    return refusal(429, f"too many failed logins from your address: try again in {wait} s", **{"Retry-After": str(wait)})


# ---- the guard ----------------------------------------------------------------------------------------

def _is_public_endpoint(endpoint: str | None) -> bool:
    if endpoint is None:
        return True  # no route matched: the 404/405 handlers answer, nothing is served
    if endpoint == "static" or endpoint.endswith(".static"):
        return True
    view = current_app.view_functions.get(endpoint)
    return bool(getattr(view, "_studio_public", False))


def _ours() -> bool:
    """Whether the request is for this studio (all of the app, or only its blueprints inside a host app)."""
    scope = current_app.extensions["studio_auth"].scope
    return scope is None or request.blueprint in scope


def guard():
    """Before every request: size limits, who is asking, login, websocket origin and CSRF."""
    if not _ours():
        return None
    if request.mimetype == "application/json":
        request.max_content_length = min(MAX_JSON_BYTES, current_app.config.get("MAX_CONTENT_LENGTH") or MAX_JSON_BYTES)
    if request.method == "OPTIONS" or request.endpoint is None:
        # Preflights carry no credentials (Flask or the CORS layer answers them); an unrouted request
        # gets its 404/405 from the error handlers, and nothing is served or changed.
        return None
    settings = _settings()
    state = _state()

    given = _bearer_given()
    tokens = state.tokens(settings) if given is not None else []
    if given is not None and tokens:
        address = _client_address()
        wait = state.limiter.retry_after(address)
        if wait:
            return _too_many(wait)
        if not any(security.equals(given, token) for token in tokens):
            state.limiter.fail(address)
            return refusal(401, "the bearer token is not valid", **{"WWW-Authenticate": 'Bearer error="invalid_token"'})
        g.studio_login = "bearer"
    elif session_login_valid():
        g.studio_login = "session"

    if settings.admin_password and current_login() is None and not _is_public_endpoint(request.endpoint):
        return _refuse_anonymous()
    if (
        not settings.admin_password
        and not settings.proxy_fix
        and security.is_loopback_address(request.remote_addr)
        and not security.is_loopback_host(request.host)
    ):
        # DNS rebinding: a page on another site whose name now points at 127.0.0.1 would be same-origin
        # with an open studio. Without a password, a browser here must ask for it by a loopback name.
        return refusal(
            403,
            f"refused: this studio has no password and answers on this machine only as localhost or 127.0.0.1, "
            f"not as {security.safe_host(request.host) or 'that host'}; set STUDIO_ADMIN_PASSWORD "
            "(or STUDIO_PROXY_FIX behind a proxy)",
        )

    if _is_websocket():
        # Browsers always send Origin on a websocket; a page on another site must not ride our cookie.
        if not websocket_origin_allowed():
            return _plain(403, "websocket refused: its Origin is not this site nor one of STUDIO_EMBED_ORIGINS")
        return None

    if request.method in UNSAFE_METHODS and current_login() != "bearer" and not csrf_valid():
        return refusal(
            403,
            "refused: this request has no valid CSRF token. Reload the page and try again; "
            f"scripts send JSON from this site's origin, the {CSRF_HEADER} header, or Authorization: Bearer <token>",
        )
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
    """After every request: CSP (unless a view set its own, like media), nosniff, referrer and frame policy."""
    if not _ours():
        return response
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


def _too_large(error):
    """413 with the limit in words (a view's own 413, such as too many ids, keeps its message)."""
    if error.description != type(error).description:
        return refusal(413, error.description)
    limit = request.max_content_length or current_app.config.get("MAX_CONTENT_LENGTH") or 0
    return refusal(413, f"the request body is larger than {limit // (1024 * 1024) or 1} MiB; send a smaller one")


# ---- views --------------------------------------------------------------------------------------------

@bp.route("/login", methods=["GET", "POST"])
@public
def login():
    """Ask for the admin password; on success start a session and go back to ``next``."""
    settings = _settings()
    next_url = security.local_path(request.values.get("next")) or url_for("pages.history")
    if not settings.admin_password:
        return render_template("login.html", password_required=False, next_url=next_url, error=None)
    status = 200
    error = None
    headers = {}
    if request.method == "POST":
        address = _client_address()
        wait = _state().limiter.retry_after(address)
        if wait:
            status, error = 429, f"Too many failed attempts. Try again in {wait} seconds."
            headers["Retry-After"] = str(wait)
        elif security.equals(request.form.get("password"), settings.admin_password):
            _state().limiter.reset(address)
            session.clear()  # a fresh session (and CSRF token) for the new login
            session.permanent = True
            session["login"] = security.password_fingerprint(current_app.secret_key, settings.admin_password)
            session["login_at"] = time.time()
            csrf_token()
            return redirect(next_url, 303)
        else:
            _state().limiter.fail(address)
            status, error = 401, "Wrong password."
    page = render_template("login.html", password_required=True, next_url=next_url, error=error)
    return page, status, headers


@bp.post("/logout")
@public
def logout():
    """End the session and show the login page."""
    session.clear()
    return redirect(url_for("auth.login"), 303)


@click.command("api-token")
@with_appcontext
def api_token_command():
    """Print the bearer token derived from STUDIO_ADMIN_PASSWORD."""
    settings = current_app.config["STUDIO"]
    if not settings.admin_password:
        raise click.ClickException("STUDIO_ADMIN_PASSWORD is not set: there is no token to derive")
    click.echo(security.derive_api_token(settings.admin_password))


def init_app(app: Flask, blueprints: set[str] | None = None) -> None:
    """Install the login blueprint, the guard, CSRF helpers, security headers and body limits.

    ``blueprints`` limits the guard and the headers to those blueprints (and this one), for a host app
    that mounts the studio beside routes of its own; by default they cover the whole app.
    """
    settings = app.config["STUDIO"]
    scope = frozenset(blueprints) | {bp.name} if blueprints is not None else None
    app.extensions["studio_auth"] = AuthState(security.RateLimiter(LOGIN_FAILURES_PER_MINUTE, 60.0), scope)
    app.session_interface = StudioSessionInterface()
    app.config.setdefault("LOGIN_LIFETIME", LOGIN_LIFETIME_SECONDS)
    app.config.update(
        SESSION_COOKIE_NAME=app.config.get("STUDIO_SESSION_COOKIE", "studio_session"),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        # The cookie lives as long as a login; polling must not push that out (the login time is checked too).
        PERMANENT_SESSION_LIFETIME=app.config["LOGIN_LIFETIME"],
        SESSION_REFRESH_EACH_REQUEST=False,
    )
    if app.config.get("MAX_CONTENT_LENGTH") is None:
        app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.register_blueprint(bp, url_prefix=settings.url_prefix or None)
    app.before_request(guard)
    app.after_request(security_headers)
    app.register_error_handler(413, _too_large)
    app.jinja_env.globals.update(
        csrf_token=csrf_token,
        csrf_field=csrf_field,
        current_login=current_login,
    )
    app.cli.add_command(api_token_command)
