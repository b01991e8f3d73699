"""Pages and their fragments: one view serves a page and, for htmx, the partial alone."""
from __future__ import annotations

from flask import Blueprint
from flask import redirect
from flask import url_for

bp = Blueprint("pages", __name__)


@bp.get("/")
def index():
    """Send visitors to the history page."""
    return redirect(url_for("pages.history"))


# ---- History (issue 3: the page helper owns this section) -----------------------------------------

@bp.get("/admin/history")
def history():
    """The history page: header with LIVE indicator, toolbar, job list."""
    return "history page: to be built", 200


# ---- Queue (issue 4: the executor helper owns this section) ---------------------------------------

@bp.get("/admin/queue")
def queue():
    """Queued and running jobs, live."""
    return "queue page: to be built", 200


# ---- Assets (issue 3: the media helper owns this section) -----------------------------------------

@bp.get("/admin/assets")
def assets():
    """The files of one job's folder, with previews and sizes."""
    return "assets page: to be built", 200
