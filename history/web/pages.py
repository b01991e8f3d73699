"""Pages and their fragments: one view serves a page and, for htmx, the partial alone."""
from __future__ import annotations

from flask import Blueprint
from flask import make_response
from flask import redirect
from flask import render_template
from flask import request
from flask import url_for

from history import jobs

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
    """Queued and running jobs with their progress, live: the page, or (for htmx) its list alone."""
    from history.runner import studio

    progress = studio().runner.progress_snapshot()
    context = {"entries": [{"job": job, "progress": progress.get(job.prompt_id)} for job in jobs.active_jobs()]}
    # The list polls itself with hx-get on this URL; htmx says so with HX-Request.
    template = "queue_list.html" if request.headers.get("HX-Request") == "true" else "queue.html"
    response = make_response(render_template(template, **context))
    response.headers["Vary"] = "HX-Request"
    response.headers["Cache-Control"] = "no-store"
    return response


# ---- Assets (issue 3: the media helper owns this section) -----------------------------------------

@bp.get("/admin/assets")
def assets():
    """The files of one job's folder, with previews and sizes; without ``dir``, the newest job folders."""
    # Imported here so this section stays self-contained beside the others in this module.
    from flask import render_template
    from flask import request

    from history import files
    from history.web import media

    output_dir = request.args.get("dir")
    if not output_dir:
        return render_template("assets.html", folders=media.recent_folders())
    try:
        listing = media.folder_listing(output_dir)
    except files.UnsafePath as error:
        return render_template("assets.html", output_dir=output_dir, error=str(error)), 400
    return render_template("assets.html", output_dir=output_dir, listing=listing), 200 if listing.exists else 404
