"""The queue page: queued and running jobs with their progress, and each ComfyUI server's load, live."""
from __future__ import annotations

from dataclasses import dataclass

from flask import Blueprint
from flask import make_response
from flask import render_template
from flask import request

from history import jobs
from history.models import RUNNING
from history.studio import studio

bp = Blueprint("queue", __name__)


@dataclass(frozen=True)
class ServerState:
    """One ComfyUI server as the queue page shows it."""

    url: str
    up: bool | None  # None: this process follows no server (it runs no jobs) and no live worker reports it
    queue_remaining: int | None
    running: list  # the Job records running there now


def server_states(active: list) -> list[ServerState]:
    """Each configured ComfyUI server's state, with the jobs of ``active`` that run on it (as the store says)."""
    shown = []
    for state in studio().server_states():
        # From the records, so a process that runs no jobs (STUDIO_ROLE=web) shows them too.
        running = [job for job in active if job.status == RUNNING and job.comfyui_server == state["url"]]
        shown.append(ServerState(state["url"], state["up"], state["queue_remaining"], running))
    return shown


@bp.get("/admin/queue")
def queue():
    """Queued and running jobs with their progress, live: the page, or (for htmx) its list alone."""
    progress = studio().runner.progress_snapshot()
    active = list(jobs.active_jobs())
    context = {
        "entries": [{"job": job, "progress": progress.get(job.prompt_id)} for job in active],
        "servers": server_states(active),
        # A web process with no live worker: what is posted waits, and the page says why.
        "no_worker": studio().live_worker_count() == 0,
    }
    # The list polls itself with hx-get on this URL; htmx says so with HX-Request.
    template = "queue_list.html" if request.htmx else "queue.html"
    response = make_response(render_template(template, **context))
    response.headers["Vary"] = "HX-Request"
    response.headers["Cache-Control"] = "no-store"
    return response
