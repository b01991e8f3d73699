"""The queue page: queued and running jobs with their progress, live."""
from __future__ import annotations

from flask import Blueprint
from flask import make_response
from flask import render_template
from flask import request

from history import jobs
from history.studio import studio

bp = Blueprint("queue", __name__)


@bp.get("/admin/queue")
def queue():
    """Queued and running jobs with their progress, live: the page, or (for htmx) its list alone."""
    progress = studio().runner.progress_snapshot()
    context = {"entries": [{"job": job, "progress": progress.get(job.prompt_id)} for job in jobs.active_jobs()]}
    # The list polls itself with hx-get on this URL; htmx says so with HX-Request.
    template = "queue_list.html" if request.htmx else "queue.html"
    response = make_response(render_template(template, **context))
    response.headers["Vary"] = "HX-Request"
    response.headers["Cache-Control"] = "no-store"
    return response
