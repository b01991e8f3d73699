"""What process managers and monitors ask: /healthz (public, tiny) and /metrics (Prometheus, guarded like the rest)."""
from __future__ import annotations

from flask import Blueprint
from flask import current_app
from flask import jsonify
from flask import make_response
from prometheus_client import CONTENT_TYPE_LATEST

from history import db
from history.studio import studio
from history.web.guard import public

bp = Blueprint("monitoring", __name__)


def store_problem() -> str | None:
    """Why the store does not answer a trivial query, or None when it does."""
    try:
        with db.connection() as database:
            database.execute_sql("SELECT 1").fetchone()
    except Exception as error:  # whatever the driver raises: a health check reports it, never fails on it
        return f"{type(error).__name__}: {error}".strip()
    return None


def executor_state() -> dict:
    """Which executor runs jobs and whether it is reachable now (ComfyUI: its websocket is connected)."""
    the_studio = studio()
    settings = current_app.config["STUDIO"]
    if not settings.comfyui_urls:
        # A web process runs nothing itself: the built-in executor is there only in the live workers.
        live = the_studio.live_worker_count()
        return {"kind": "builtin", "reachable": live is None or live > 0}
    # A process that runs no jobs says what the live workers see (up None: no live worker reports it).
    states = the_studio.server_states()
    return {
        "kind": "comfyui",
        "url": ",".join(settings.comfyui_urls),
        # Reachable while some server can take a job; "servers" says which.
        "reachable": any(state["up"] for state in states),
        "running": the_studio.started,
        "servers": [{"url": state["url"], "reachable": state["up"]} for state in states],
    }


@bp.get("/healthz")
@public
def healthz():
    """Answer 200 when the store answers, else 503 with the reason; say whether the executor is reachable."""
    problem = store_problem()
    body = {
        "status": "ok" if problem is None else "unavailable",
        "store": "ok" if problem is None else problem,
        "executor": executor_state(),
    }
    the_studio = studio()
    if the_studio.role != "all":
        # Which process answered: a web process runs nothing; a worker names itself as jobs' owners do.
        body["role"] = the_studio.role
        if the_studio.runs_jobs:
            body["worker"] = the_studio.worker_id
        elif problem is None:
            # A web process runs nothing: whether any worker is alive to run what is posted to it.
            body["live_workers"] = the_studio.live_worker_count()
    response = jsonify(body)
    response.status_code = 200 if problem is None else 503
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/metrics")
def metrics():
    """Every metric of this process in Prometheus's text format."""
    response = make_response(studio().metrics.exposition())
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    response.headers["Cache-Control"] = "no-store"
    return response
