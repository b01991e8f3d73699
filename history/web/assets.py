"""The assets page: the files of one job's folder, or the newest job folders."""
from __future__ import annotations

from flask import Blueprint
from flask import render_template
from flask import request

from history import files
from history.web import media

bp = Blueprint("assets", __name__)


@bp.get("/admin/assets")
def assets():
    """Show the files of one job's folder, with previews and sizes; without ``dir``, the newest job folders."""
    output_dir = request.args.get("dir")
    if not output_dir:
        return render_template("assets.html", folders=media.recent_folders())
    try:
        listing = media.folder_listing(output_dir)
    except files.UnsafePath as error:
        return render_template("assets.html", output_dir=output_dir, error=str(error)), 400
    return render_template("assets.html", output_dir=output_dir, listing=listing), 200 if listing.exists else 404
