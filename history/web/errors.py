"""One place that decides how an error is answered: JSON for the JSON API's blueprint, HTML or text elsewhere."""
from __future__ import annotations

from flask import Flask
from flask import current_app
from flask import jsonify
from flask import make_response
from flask import request
from peewee import OperationalError
from playhouse.pool import MaxConnectionsExceeded
from werkzeug.exceptions import HTTPException
from werkzeug.exceptions import RequestEntityTooLarge

from history import jobs
from history.db import is_busy

# Blueprints whose every answer is JSON, errors included (monitoring: a scraper gets a 401, not the login page).
JSON_BLUEPRINTS = frozenset({"api", "monitoring"})
# The headers an HTTP error carries that a client acts on; they survive the change to JSON.
KEPT_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate")
BUSY_RETRY_SECONDS = 5


def _api_root() -> str:
    return current_app.config["STUDIO"].url_prefix + "/api/"


def wants_json() -> bool:
    """Whether this request is the JSON API's: decided by its blueprint.

    A URL that matched no route (a 404, or a 405 of a known URL) has no blueprint in Flask; under the
    API's root it still gets JSON, so that a script's typo is answered in the API's own terms.
    """
    if request.url_rule is not None:
        return request.blueprint in JSON_BLUEPRINTS
    return request.path.startswith(_api_root())


def plain(status: int, message: str, **headers):
    """A plain-text answer (the websocket and the guard's refusals outside the API)."""
    response = make_response(message + "\n", status)
    response.mimetype = "text/plain"
    response.headers.update(headers)
    return response


def refusal(status: int, message: str, **headers):
    """A 4xx that says what to do: JSON ``{"error"}`` for the API, plain text elsewhere."""
    if wants_json():
        response = jsonify(error=message)
        response.status_code = status
        response.headers.update(headers)
        return response
    return plain(status, message, **headers)


def http_error(error: HTTPException):
    """Every HTTP error of the API as JSON ``{"error"}`` (its 404 and 405 of unknown URLs too); others as they are."""
    if not wants_json():
        return error
    field = getattr(error, "field", None)
    response = jsonify(
        error=error.description if isinstance(error.description, str) else error.name,
        **({"field": field} if isinstance(field, str) else {}),
    )
    response.status_code = error.code or 500
    original = error.get_response()
    for header in KEPT_HEADERS:
        if original.headers.get(header):
            response.headers[header] = original.headers[header]
    return response


def too_large(error: RequestEntityTooLarge):
    """413 with the limit in words (a view's own 413, such as too many ids, keeps its message)."""
    if error.description != type(error).description:
        return refusal(413, error.description)
    limit = request.max_content_length or current_app.config.get("MAX_CONTENT_LENGTH") or 0
    length = request.content_length
    if length is None or length > limit:
        return refusal(413, f"the request body is larger than {limit // (1024 * 1024) or 1} MiB; send a smaller one")
    # The body is within its size: Werkzeug's form parser refused the form itself (too many fields, or
    # too much text outside file uploads), and does not say which.
    return refusal(413, (
        f"the form is over a limit: at most {request.max_form_parts:,} fields and "
        f"{(request.max_form_memory_size or 0) // 1024:,} KB in fields that are not files; send fewer or smaller fields"
    ))


def store_busy(error):
    """503 with Retry-After when another process holds the store past the busy timeout; nothing was written.

    A batch delete that met the lock partway (jobs.StoreBusy) also says which jobs it had deleted. Any
    other database error is a real fault: it goes on to Flask's 500.
    """
    if not isinstance(error, jobs.StoreBusy) and not is_busy(error):
        raise error
    message = f"the job store is busy with another writer; nothing was changed; try again in {BUSY_RETRY_SECONDS} s"
    extra = {}
    if isinstance(error, jobs.StoreBusy):
        extra = error.report.to_dict()  # each job in it is whole or gone
        if error.report.deleted:
            message = (
                f"the job store is busy with another writer; only the jobs in deleted were deleted; "
                f"try again in {BUSY_RETRY_SECONDS} s"
            )
    retry = {"Retry-After": str(BUSY_RETRY_SECONDS)}
    if wants_json():
        response = jsonify(error=message, **extra)
        response.status_code = 503
        response.headers.update(retry)
        return response
    return plain(503, message, **retry)


def malformed_body(error):
    """400 for a body the HTTP server could not read (gunicorn's chunked-encoding errors surface in the view)."""
    return refusal(400, f"the request body is malformed ({type(error).__name__}); send it again, whole")


def _body_read_errors() -> tuple[type, ...]:
    """The exceptions a WSGI server raises while a view reads a broken body (gunicorn's; Werkzeug's own
    server answers those itself)."""
    try:
        from gunicorn.http.errors import NoMoreData
        from gunicorn.http.errors import ParseException
    except ImportError:
        return ()
    return (ParseException, NoMoreData)


def init_app(app: Flask) -> None:
    """Install the error handlers."""
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(413, too_large)
    for busy in (OperationalError, MaxConnectionsExceeded, jobs.StoreBusy):
        app.register_error_handler(busy, store_busy)
    for broken in _body_read_errors():
        app.register_error_handler(broken, malformed_body)
