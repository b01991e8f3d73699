"""Output and input files, and their cached thumbnails, served only from inside their folders.

Every path is resolved by history.files; a name that would leave its folder is a 404 before anything
is opened. Only plain media types are served inline: everything else (HTML, SVG, scripts, unknown)
goes out as an ``application/octet-stream`` attachment, so nothing a workflow wrote runs as a page.
"""
from __future__ import annotations

import datetime
import mimetypes
import os
import stat
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

from flask import Blueprint
from flask import abort
from flask import current_app
from flask import request
from flask import send_file
from flask import url_for

from history import files
from history import thumbnails
from history.models import is_video

bp = Blueprint("media", __name__)

# Types a browser shows without running anything; the rest are downloads.
INLINE_TYPES = frozenset({
    "image/png", "image/jpeg", "image/webp", "image/gif", "image/avif", "image/bmp",
    "video/mp4", "video/webm", "video/quicktime", "video/x-matroska",
    "audio/mpeg", "audio/wav", "audio/x-wav", "audio/ogg", "audio/flac",
    "text/plain",
})
# Registries differ between systems; these are the ones ComfyUI writes, whatever /etc/mime.types says.
KNOWN_TYPES = {".webp": "image/webp", ".avif": "image/avif", ".webm": "video/webm", ".mp4": "video/mp4"}
# Media responses are never documents: a file opened in its own tab runs nothing and loads nothing.
MEDIA_CSP = "default-src 'none'; img-src 'self'; media-src 'self'; style-src 'unsafe-inline'; sandbox"
YEAR = 31536000
PLACEHOLDER = "placeholder-thumb.svg"
PLACEHOLDER_MAX_AGE = 60


def _settings():
    return current_app.config["STUDIO"]


def _media_type(name: str) -> str | None:
    suffix = os.path.splitext(name)[1].lower()
    return KNOWN_TYPES.get(suffix) or mimetypes.guess_type(name, strict=False)[0]


def _regular_file(path: Path) -> os.stat_result | None:
    """The stat of ``path`` when it is a regular file, else None."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def _output_root() -> Path:
    """The output folder a media URL names: a ComfyUI server's own (``?server=<position>``), else the shared one."""
    settings = _settings()
    position = request.args.get("server")
    if position is None:
        return settings.output_dir
    root = settings.output_roots.at(position) if position.isdigit() else None
    if root is None:
        abort(404, f"no ComfyUI server at position {position[:8]!r} has its own output folder")
    return root


def _resolve(kind: str, path: str) -> Path:
    """The file that ``path`` names under the ``kind`` folder; abort 404 when unsafe or not a file."""
    settings = _settings()
    try:
        if kind == "output":
            subfolder, _, filename = path.rpartition("/")
            root = _output_root()
            source = files.output_file(root, {"filename": filename, "subfolder": subfolder})
        elif kind == "input":
            root = settings.input_dir
            source = files.input_file(root, path)
        else:
            abort(404)
    except files.UnsafePath:
        abort(404)
    if files.is_private(source, root, settings.data_dir):
        abort(404)
    return source


def _cache_scope() -> str:
    """``private`` behind a login (no shared cache may keep what needs a password), else ``public``."""
    settings = _settings()
    return "private" if settings.admin_password or settings.api_token else "public"


def _harden(response):
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = MEDIA_CSP
    return response


def _send_media(source: Path):
    """Send a file with ETag, Last-Modified and Range support; risky types as a download."""
    if _regular_file(source) is None:
        abort(404)
    media_type = _media_type(source.name)
    inline = media_type in INLINE_TYPES
    response = send_file(
        source,
        mimetype=media_type if inline else "application/octet-stream",
        as_attachment=not inline,
        download_name=source.name,
        conditional=True,
        etag=True,
        max_age=None,  # no-cache: revalidate by ETag, since an output file may be rewritten
    )
    return _harden(response)


@bp.get("/media/output/<path:path>")
def output(path: str):
    """Serve a file under the output folder."""
    return _send_media(_resolve("output", path))


@bp.get("/media/input/<path:name>")
def input(name: str):  # noqa: A001 - the endpoint is media.input, like its URL
    """Serve a file in the input folder."""
    return _send_media(_resolve("input", name))


@bp.get("/media/thumb/<any(output, input):kind>/<path:path>")
def thumbnail(kind: str, path: str):
    """Serve the cached 120x120 WebP of a file, immutable when ``v`` names its current version; else the placeholder."""
    return _send_rendition(kind, path, "card")


@bp.get("/media/preview/<any(output, input):kind>/<path:path>")
def preview(kind: str, path: str):
    """Serve the cached preview of a file (aspect kept, within 720x720) for the overlay; else the placeholder."""
    return _send_rendition(kind, path, thumbnails.PREVIEW)


def _send_rendition(kind: str, path: str, recipe: str):
    """A cached WebP rendition of a file, immutable when ``v`` names its current version; else the placeholder."""
    source = _resolve(kind, path)
    settings = _settings()
    made = thumbnails.make_thumbnail(source, settings.thumbnail_dir, recipe) if thumbnails.can_thumbnail(source.name) else None
    if made is None:
        return placeholder_response()
    current = thumbnails.file_version(source)
    fresh = current is not None and request.args.get("v") == current
    response = send_file(
        made, mimetype="image/webp", download_name=f"{source.stem}.webp", conditional=True, etag=True, max_age=None
    )
    # A versioned URL never changes content (a new source version is a new URL); any other is revalidated.
    response.headers["Cache-Control"] = f"{_cache_scope()}, max-age={YEAR}, immutable" if fresh else "no-cache"
    response.headers.pop("Expires", None)
    return _harden(response)


def placeholder_response():
    """The placeholder image for a file that has no thumbnail, cached only briefly."""
    response = send_file(
        Path(current_app.static_folder) / PLACEHOLDER,
        mimetype="image/svg+xml",
        conditional=True,
        etag=True,
        max_age=PLACEHOLDER_MAX_AGE,
    )
    response.headers["Cache-Control"] = f"{_cache_scope()}, max-age={PLACEHOLDER_MAX_AGE}"
    response.headers["X-Thumbnail"] = "placeholder"
    return _harden(response)


# ---- Media URLs: every media URL a page shows is built here (history.web.templating registers them) --------------------------------

def _locate(ref, server: str | None = None) -> tuple[str, str, Path] | None:
    """(kind, path in the URL, file) for an output reference of a job run on ``server``, or None (files.locate_ref)."""
    settings = _settings()
    return files.locate_ref(ref, settings.output_roots.of(server), settings.input_dir, settings.data_dir)


def _server_args(kind: str, server: str | None) -> dict:
    """The query that names the output folder of a job's ComfyUI server, when that server has its own."""
    position = _settings().output_roots.position(server) if kind == "output" else None
    return {} if position is None else {"server": position}


def output_url(ref, server: str | None = None) -> str | None:
    """The URL of an output reference's file (of a job run on ComfyUI ``server``), or None when unsafe or missing."""
    located = _locate(ref, server)
    if located is None or _regular_file(located[2]) is None:
        return None
    kind, relative, _source = located
    if kind == "input":
        return url_for("media.input", name=relative)
    return url_for("media.output", path=relative, **_server_args(kind, server))


def input_url(name) -> str | None:
    """The URL of a file in the input folder, or None when it is unsafe or missing."""
    return output_url(_input_ref(name))


def _rendition_url(ref, endpoint: str, server: str | None = None) -> str | None:
    """The versioned URL of a cached rendition of an output reference, or None (unsafe, missing, not an image)."""
    located = _locate(ref, server)
    if located is None or not thumbnails.can_thumbnail(located[1]):
        return None
    kind, relative, source = located
    version = thumbnails.file_version(source)
    if version is None:
        return None
    return url_for(endpoint, kind=kind, path=relative, v=version, **_server_args(kind, server))


def thumbnail_url(ref, server: str | None = None) -> str | None:
    """The versioned thumbnail URL of an output reference, or None (unsafe, missing, or not an image Pillow reads)."""
    return _rendition_url(ref, "media.thumbnail", server)


def preview_url(ref, server: str | None = None) -> str | None:
    """The versioned preview URL of an output reference (the thumbnail's larger, uncropped sibling), or None."""
    return _rendition_url(ref, "media.preview", server)


def input_thumbnail_url(name) -> str | None:
    """The versioned thumbnail URL of an input image, or None when it is unsafe, missing or not an image."""
    return thumbnail_url(_input_ref(name))


# Files a <video> element plays; an animated WebP, PNG or GIF plays in an <img> of its own.
PLAYABLE_VIDEO = (".mp4", ".webm", ".mov", ".m4v", ".mkv")
ANIMATED_IMAGE = (".webp", ".png", ".apng", ".gif")


@dataclass
class OutputView:
    """One output file as the overlay and its viewer show it."""

    index: int
    filename: str
    kind: str  # video, animated, image, file or missing
    url: str | None  # the file itself
    src: str | None  # what the overlay draws: the preview of a still, the file itself otherwise
    media_type: str | None = None
    width: int | None = None  # of what is drawn, so the box keeps the aspect before it loads
    height: int | None = None


def _drawn_size(source: Path, kind: str) -> tuple[int | None, int | None]:
    """The pixel size the overlay draws a file at: a still's preview is scaled within PREVIEW_SIZE."""
    size = thumbnails.image_size(source) if kind in ("image", "animated") else None
    if size is None:
        return None, None
    width, height = size
    if kind == "image":
        scale = min(1.0, thumbnails.PREVIEW_SIZE[0] / width, thumbnails.PREVIEW_SIZE[1] / height)
        width, height = max(1, round(width * scale)), max(1, round(height * scale))
    return width, height


def output_views(job) -> list[OutputView]:
    """A job's saved output files (temp previews only when nothing was saved), in node order, ready to draw."""
    refs = [ref for ref in (job.outputs or []) if isinstance(ref, dict)]
    saved = [ref for ref in refs if ref.get("type", "output") == "output"]
    views = []
    for index, ref in enumerate(saved or refs):
        filename = str(ref.get("filename", ""))
        located = _locate(ref, job.comfyui_server)
        url = output_url(ref, job.comfyui_server)
        if located is None or url is None:
            views.append(OutputView(index, filename, "missing", None, None))
            continue
        name = filename.lower()
        if name.endswith(PLAYABLE_VIDEO):
            kind, src = "video", url
        elif name.endswith(".gif") or (ref.get("animated") and name.endswith(ANIMATED_IMAGE)):
            kind, src = "animated", url
        elif thumbnails.can_thumbnail(name):
            kind, src = "image", preview_url(ref, job.comfyui_server) or url
        else:
            kind, src = "file", None
        width, height = _drawn_size(located[2], kind)
        views.append(OutputView(index, filename, kind, url, src, _media_type(filename), width, height))
    return views


def _input_ref(name) -> dict | None:
    """An input file name (ComfyUI allows sub-folders: ``pasted/image.png``) as a reference."""
    if not isinstance(name, str) or not name:
        return None
    subfolder, _, filename = name.rpartition("/")
    return {"filename": filename, "subfolder": subfolder, "type": "input"}


# ---- Listings for the assets page ----------------------------------------------------------------

@dataclass
class Asset:
    """One file of a job folder as the assets page shows it."""

    name: str
    size: int
    modified: datetime.datetime
    kind: str  # image, video or file
    url: str | None
    thumbnail_url: str | None
    width: int | None = None
    height: int | None = None


@dataclass
class FolderListing:
    """A job folder's files (``exists`` is False when the folder is missing)."""

    output_dir: str
    exists: bool
    assets: list[Asset] = field(default_factory=list)
    total_size: int = 0
    more: int = 0


# Header reads for dimensions stay cheap up to this many files; a bigger folder lists the rest unmeasured.
MAX_MEASURED = 200
MAX_LISTED = 1000


def folder_listing(output_dir: str) -> FolderListing:
    """List one job folder's files with URLs, thumbnails, sizes and (for images) dimensions; raise UnsafePath."""
    roots = _settings().output_roots
    # The folder is in the output folder of the ComfyUI server that wrote it: the shared one, or a server's own.
    for server in (None, *roots.own):
        folder = files.job_folder(roots.of(server), output_dir)
        if folder.is_dir():
            break
    else:
        return FolderListing(output_dir=output_dir, exists=False)
    paths = files.job_files(folder)
    listing = FolderListing(output_dir=output_dir, exists=True, more=max(0, len(paths) - MAX_LISTED))
    subfolder = f"{files.STUDIO_FOLDER}/{output_dir}"
    for index, path in enumerate(paths[:MAX_LISTED]):
        st = _regular_file(path)
        if st is None:
            continue
        ref = {"filename": path.name, "subfolder": subfolder, "type": "output"}
        kind = "video" if is_video(ref) and not thumbnails.can_thumbnail(path.name) else (
            "image" if thumbnails.can_thumbnail(path.name) else "file"
        )
        size = thumbnails.image_size(path) if kind == "image" and index < MAX_MEASURED else None
        listing.assets.append(Asset(
            name=path.name,
            size=st.st_size,
            modified=datetime.datetime.fromtimestamp(st.st_mtime, datetime.timezone.utc),
            kind=kind,
            url=output_url(ref, server),
            thumbnail_url=thumbnail_url(ref, server) if kind == "image" else None,
            width=size[0] if size else None,
            height=size[1] if size else None,
        ))
        listing.total_size += st.st_size
    return listing


@dataclass
class FolderSummary:
    """One job folder in the list of recent folders."""

    output_dir: str
    files: int
    size: int


def recent_folders(limit: int = 100) -> list[FolderSummary]:
    """The newest job folders (by name) with their file counts and sizes, from every output folder."""
    summaries = []
    every = [folder for root in _settings().output_roots.every() for folder in files.recent_job_folders(root, limit)]
    for folder in sorted(every, key=lambda folder: folder.name, reverse=True)[:limit]:
        count, size = files.folder_usage(folder)
        summaries.append(FolderSummary(output_dir=folder.name, files=count, size=size))
    return summaries
