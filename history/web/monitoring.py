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


def live_workers() -> tuple[int | None, str | None]:
    """How many workers are alive for a web process (None elsewhere), and why that could not be read."""
    try:
        return studio().live_worker_count(), None
    except Exception as error:  # the store went away after its check: reported, never a 500
        return None, f"{type(error).__name__}: {error}".strip()


def executor_state(live: int | None) -> dict:
    """Which executor runs jobs and whether it is reachable now (ComfyUI: its websocket is connected).

    ``live`` is live_workers()'s count: a web process runs nothing itself, so the built-in executor is
    there only in the live workers (None on a web process whose store did not answer: not reachable).
    """
    the_studio = studio()
    settings = current_app.config["STUDIO"]
    if not settings.comfyui_urls:
        if the_studio.role == "web" and not the_studio.runs_jobs:
            return {"kind": "builtin", "reachable": bool(live)}
        return {"kind": "builtin", "reachable": True}
    # A process that runs no jobs says what the live workers see (up None: no live worker reports it).
    states = the_studio.server_states()
    return {
        "kind": "comfyui",
        "url": ",".join(settings.comfyui_urls),
        # Reachable while some server can take a job; "servers" says which.
        "reachable": any(state["up"] for state in states),
        "running": the_studio.started and the_studio.runs_jobs,  # a web process runs no executor
        "servers": [{"url": state["url"], "reachable": state["up"]} for state in states],
    }


@bp.get("/healthz")
@public
def healthz():
    """Answer 200 when the store answers, else 503 with the reason; say whether the executor is reachable."""
    problem = store_problem()
    live = None
    if problem is None:
        live, problem = live_workers()
    body = {
        "status": "ok" if problem is None else "unavailable",
        "store": "ok" if problem is None else problem,
        "executor": executor_state(live),
    }
    the_studio = studio()
    if the_studio.role != "all":
        # Which process answered: a web process runs nothing; a worker names itself as jobs' owners do.
        body["role"] = the_studio.role
        if the_studio.runs_jobs:
            body["worker"] = the_studio.worker_id
        elif live is not None:
            # A web process runs nothing: whether any worker is alive to run what is posted to it.
            body["live_workers"] = live
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
