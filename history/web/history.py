"""Pages and their fragments: one view serves a page and, for htmx, the partial alone."""
from __future__ import annotations

import collections
import datetime
import hashlib
import json
import logging
import threading
from zoneinfo import ZoneInfo

from flask import Blueprint
from flask import abort
from flask import current_app
from flask import g
from flask import make_response
from flask import redirect
from flask import render_template
from flask import request
from flask import url_for
from htmx_flask import Htmx
from peewee import DatabaseError

from history import jobs
from history import models
from history.events import LIST_EVENTS
from history.models import is_video

bp = Blueprint("pages", __name__)
log = logging.getLogger(__name__)


@bp.get("/")
def index():
    """Send visitors to the history page."""
    return redirect(url_for("pages.history"))


# ---- History (issue 3: the page helper owns this section) -----------------------------------------
# The page, its list fragment (the poller), one card, and a job's overlay. One data function,
# list_context(), feeds the page and the fragment; the JSON API reads the same jobs.history_page().


# Bump when the markup of a card or the list changes, so an open page re-renders on its next poll.
LIST_MARKUP_VERSION = "1"
# The poller sends the ETag it shows in this header; a match answers 204, which htmx never swaps.
# (A browser's own revalidation would hide a 304 from fetch and hand htmx the cached 200 to swap.)
LIST_ETAG_HEADER = "X-List-ETag"
TZ_COOKIE = "studio_tz"
STORE_ERROR = "The job store cannot be read right now. Reload the page in a moment; nothing has been lost."
PROMPT_KEYS = ("positive_prompt", "negative_prompt", "prompt")


@bp.record_once
def _init_htmx(state):
    # request.htmx reads HX-Request; the extension swaps in its request class once per app.
    if "htmx" not in state.app.extensions:
        Htmx(state.app)


def _timezone():
    """The reader's time zone (the cookie history.js sets from the browser), UTC until it is known."""
    if "history_tz" not in g:
        name = request.cookies.get(TZ_COOKIE, "")
        zone = datetime.timezone.utc
        if name and len(name) < 64:
            try:
                zone = ZoneInfo(name)
            except (ValueError, OSError, KeyError):
                zone = datetime.timezone.utc
        g.history_tz = zone
    return g.history_tz


def _tz_name() -> str:
    zone = _timezone()
    return getattr(zone, "key", "UTC")


@bp.app_template_filter("local_time")
def local_time(value, style: str = "time") -> str:
    """A UTC timestamp in the reader's zone: ``time`` (14:03:12), ``date`` (Nov 28) or ``full``."""
    if value is None:
        return ""
    local = value.astimezone(_timezone())
    if style == "date":
        return f"{local:%b} {local.day}"
    if style == "full":
        offset = local.strftime("%z")
        if offset == "+0000" and local.tzname() in ("UTC", "GMT"):
            return f"{local:%Y-%m-%d %H:%M:%S} UTC"
        return f"{local:%Y-%m-%d %H:%M:%S} {local.tzname()} (UTC{offset[:3]}:{offset[3:]})"
    return f"{local:%H:%M:%S}"


@bp.app_template_filter("same_local_day")
def same_local_day(first, second) -> bool:
    """Whether two timestamps fall on the same day in the reader's zone."""
    if first is None or second is None:
        return True
    zone = _timezone()
    return first.astimezone(zone).date() == second.astimezone(zone).date()


@bp.app_template_filter("duration")
def format_duration(seconds) -> str:
    """Seconds as a person reads them: 350ms, 42s, 3m 12s, 1h 4m (never "0s" for a job that ran)."""
    if seconds is None:
        return ""
    if float(seconds) < 0.9995:
        milliseconds = int(round(float(seconds) * 1000))
        return f"{milliseconds}ms" if milliseconds >= 1 else "<1ms"
    total = int(round(float(seconds)))
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m {total % 60}s"
    return f"{total // 3600}h {total % 3600 // 60}m"


@bp.app_template_filter("pretty_json")
def pretty_json(value) -> str:
    """Arrays and objects as indented JSON (plain text: the template escapes it)."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)


@bp.app_template_global()
def card_images(job) -> list[dict]:
    """A job's output images for its thumbnail: saved files first, temp previews only when nothing is saved."""
    return models.card_images(job.outputs)


@bp.app_template_global()
def output_videos(job) -> list[dict]:
    """A job's output videos, in node order."""
    return [ref for ref in (job.outputs or []) if isinstance(ref, dict) and is_video(ref)]


@bp.app_template_global()
def param_kind(job, key: str, value) -> str:
    """How the overlay shows a parameter: prompt, scenes, image, seed, json or text."""
    if key in PROMPT_KEYS and isinstance(value, str):
        return "prompt"
    if key == "scenes" and isinstance(value, list) and all(isinstance(scene, dict) for scene in value):
        return "scenes"
    if isinstance(value, str) and value and value == job.input_image:
        return "image"
    if isinstance(value, (dict, list)):
        return "json"
    if key in (job.seeds or {}) and not isinstance(value, bool):
        return "seed"
    return "text"


@bp.app_template_global()
def used_seed(job, key: str, value, scene_index: int | None = None):
    """The seed a job actually used for a parameter when it differs from the submitted one (a -1), else None."""
    used = (job.seeds or {}).get(key)
    if scene_index is not None:
        used = used[scene_index] if isinstance(used, list) and scene_index < len(used) else None
    if used is None or isinstance(used, (dict, list)) or used == value:
        return None
    return used


def _endpoint_for(rule_suffix: str) -> str | None:
    """The endpoint registered for a URL rule ending in ``rule_suffix`` (another blueprint's), or None."""
    for rule in current_app.url_map.iter_rules():
        if rule.rule.endswith(rule_suffix):
            return rule.endpoint
    return None


@bp.app_template_global()
def retry_url(job) -> str | None:
    """The execute endpoint a Retry posts to, when the executor's API is installed."""
    endpoint = _endpoint_for("/api/run/<workflow_id>/execute")
    return url_for(endpoint, workflow_id=job.workflow_id) if endpoint else None


@bp.app_template_global()
def retry_plan(job):
    """What Retry would run for a failed job now, or why it cannot (its workflow is not installed)."""
    from history.runner import studio

    return studio().retry_plan(job)


def _events_url() -> str | None:
    """The websocket's path, when the websocket blueprint is installed."""
    endpoint = _endpoint_for("/ws")
    return url_for(endpoint) if endpoint else None


def _history_filter() -> jobs.HistoryFilter:
    """The filter in the query string; raise InvalidQuery."""
    args = request.args
    return jobs.HistoryFilter.parse(args.getlist("status"), args.get("workflow_id"), args.get("q"))


def _list_url(history_filter: jobs.HistoryFilter, compact: bool, **extra) -> str:
    """The list fragment's URL for a filter, keeping ``compact`` (and ``since`` or ``before`` when given)."""
    return url_for("pages.history_list", **history_filter.query_args(), **({"compact": 1} if compact else {}), **extra)


def _head_limit(since: str | None) -> int:
    """How many jobs the list head holds: a page, or (polling ``since``) every job at or above the cursor."""
    return jobs.MAX_LIMIT if since else current_app.config["STUDIO"].page_size


def _poll_etag(raw: str) -> str:
    """The ETag of the list head a poll guards: its jobs.list_etag, the reader's zone and the markup version."""
    return hashlib.blake2b(f"{raw}|{_tz_name()}|{LIST_MARKUP_VERSION}".encode(), digest_size=12).hexdigest()


def list_context(history_filter: jobs.HistoryFilter, since: str | None = None, compact: bool = False) -> dict:
    """Everything the list renders: its head, where further pages start, and the poll URL and ETag.

    The head is the newest page; once the reader has scrolled further pages in, history.js polls with
    ``since`` (the cursor those pages start below) and the head is every job at or above it: it grows with
    new jobs instead of pushing one into the gap above the loaded pages. The poll guards the head only.
    ``compact`` (thumbnail, name, status: for a sidebar or another site, issue 8) stays in its URLs.
    """
    settings = current_app.config["STUDIO"]
    page = jobs.history_page(history_filter, _head_limit(since), since=since)
    boundary = since or page.next_cursor
    return {
        "compact": compact,
        "page": page,
        "history_filter": history_filter,
        "boundary": boundary,
        "since": since,
        "poll_url": _list_url(history_filter, compact, **({"since": since} if since else {})),
        "more_url": _list_url(history_filter, compact, before=boundary) if boundary else None,
        # Made from the rows rendered, so it names what the reader shows even if a job landed meanwhile.
        "list_etag": _poll_etag(page.etag),
        "poll_seconds": settings.poll_seconds,
    }


def _fragment_headers(response, etag: str | None = None, vary: str = "HX-Request, Cookie"):
    """Fragments are never cached (the poll decides freshness); they vary on HX-Request."""
    response.headers["Cache-Control"] = "no-store"
    response.headers["Vary"] = vary
    if etag:
        response.set_etag(etag)
    return response


def _page_context(history_filter: jobs.HistoryFilter | None, error: str | None = None, workflows=None) -> dict:
    """The full page's context: the list (unless the filter is invalid) and the filter choices."""
    context = {
        "workflows": jobs.workflow_choices() if workflows is None else workflows,
        "all_statuses": jobs.HISTORY_STATUSES,
        "events_url": _events_url(),
        "refresh_events": " ".join(LIST_EVENTS),
        "tz_name": _tz_name(),
        "poll_seconds": current_app.config["STUDIO"].poll_seconds,
        "list_error": error,
        "history_filter": history_filter or jobs.HistoryFilter(),
        "filter_args": (history_filter or jobs.HistoryFilter()).query_args(),
    }
    if history_filter is not None and error is None:
        context.update(list_context(history_filter))
    return context


def _render_page(overlay_job=None, status: int = 200, missing_message: str | None = None):
    """Render the history page, with a job's overlay (or a "job not found" one) open when given."""
    try:
        history_filter = _history_filter()
        context = _page_context(history_filter)
    except jobs.InvalidQuery as error:
        context = _page_context(None, str(error))
        status = 400
    except DatabaseError:
        # The page still renders (header, filters, an error state); its poll shows the failure and retries.
        log.exception("history page: the job store cannot be read")
        context = _page_context(None, STORE_ERROR, workflows=[])
        status = 503
    if overlay_job is not None:
        context.update(_overlay_context(overlay_job))
    context["missing_message"] = missing_message
    response = make_response(render_template("history.html", **context), status)
    response.headers["Vary"] = "HX-Request, Cookie"
    return response


@bp.get("/admin/history")
def history():
    """The history page: header with LIVE indicator, toolbar, job list."""
    return _render_page()


@bp.get("/admin/history/list")
def history_list():
    """The job list fragment with its ETag (204 to the poller and 304 to If-None-Match when unchanged); with ``before``, one further page."""
    try:
        history_filter = _history_filter()
        compact = request.args.get("compact") == "1"
        before = request.args.get("before") or None
        since = request.args.get("since") or None
        if before:
            settings = current_app.config["STUDIO"]
            page = jobs.history_page(history_filter, settings.page_size, before=before)
            more_url = _list_url(history_filter, compact, before=page.next_cursor) if page.next_cursor else None
            body = render_template("job_page.html", page=page, more_url=more_url, compact=compact)
            return _fragment_headers(make_response(body))
        etag = _poll_etag(jobs.list_etag(history_filter, _head_limit(since), since=since))
    except jobs.InvalidQuery as error:
        body = render_template("list_error.html", message=str(error))
        return _fragment_headers(make_response(body, 400))
    if request.htmx and request.headers.get(LIST_ETAG_HEADER) == etag:
        return _fragment_headers(make_response("", 204), etag)
    if request.if_none_match.contains(etag):
        return _fragment_headers(make_response("", 304), etag)
    # Every open page asks for the same list after a change: render it once per process, not once per reader.
    key = (request.host, request.full_path, request.headers.get("Origin"), _tz_name())

    def render() -> tuple[str, str]:
        context = list_context(history_filter, since, compact)
        return context["list_etag"], render_template("job_list.html", **context)

    etag, body = _rendered_lists().get_or_render(key, etag, render)
    return _fragment_headers(make_response(body), etag)


class RenderedLists:
    """The last list fragments rendered, by request and ETag (the ETag fixes every card's content).

    Readers asking at once for a list not rendered yet wait for the first one's render instead of
    rendering it too (after a change, every open page polls within one interval).
    """

    def __init__(self, size: int = 64):
        self.size = size
        self._bodies: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()
        self._rendering: dict = {}

    def get_or_render(self, key, etag: str, render) -> tuple[str, str]:
        """The (etag, body) cached for ``key`` at ``etag``, else ``render()``'s, rendered once at a time."""
        while True:
            with self._lock:
                entry = self._bodies.get(key)
                if entry is not None and entry[0] == etag:
                    self._bodies.move_to_end(key)
                    return entry
                busy = self._rendering.get(key)
                if busy is None:
                    busy = self._rendering[key] = threading.Event()
                    break
            busy.wait(timeout=10)
            etag = None if busy.is_set() else etag  # after a wait, take what was just rendered
            with self._lock:
                entry = self._bodies.get(key)
                if entry is not None and etag is None:
                    return entry
        try:
            entry = render()
            with self._lock:
                self._bodies[key] = entry
                self._bodies.move_to_end(key)
                while len(self._bodies) > self.size:
                    self._bodies.popitem(last=False)
            return entry
        finally:
            with self._lock:
                self._rendering.pop(key, None)
            busy.set()


def _rendered_lists() -> RenderedLists:
    """This app's cache of rendered lists."""
    return current_app.extensions.setdefault("history.rendered_lists", RenderedLists())


def _overlay_context(job) -> dict:
    """What the overlay shows beside the record: the retries of this job."""
    return {"overlay_job": job, "retried_as": list(jobs.retries_of(job.prompt_id))}


def _wants_fragment() -> bool:
    """An htmx request for a part of the page (a history restore asks for the whole page)."""
    return bool(request.htmx) and not request.htmx.history_restore_request


@bp.get("/admin/history/jobs/<prompt_id>")
def history_job(prompt_id: str):
    """A job's detail overlay for htmx; otherwise the history page with that overlay open."""
    job = jobs.get_job(prompt_id)
    if job is None:
        message = f"No job with id {prompt_id[:64]}: it may have been deleted."
        if _wants_fragment():
            body = render_template("job_overlay.html", overlay_job=None, missing_message=message)
            return _fragment_headers(make_response(body, 404))
        return _render_page(missing_message=message, status=404)
    if _wants_fragment():
        body = render_template("job_overlay.html", **_overlay_context(job))
        return _fragment_headers(make_response(body))
    return _render_page(overlay_job=job)


@bp.get("/admin/history/jobs/<prompt_id>/card")
def history_card(prompt_id: str):
    """One job's card."""
    job = jobs.get_job(prompt_id)
    if job is None:
        abort(404, f"no job with prompt_id {prompt_id[:64]!r}")
    compact = request.args.get("compact") == "1"
    return _fragment_headers(make_response(render_template("job_card.html", job=job, compact=compact)))


# ---- Queue (issue 4: the executor helper owns this section) ---------------------------------------

@bp.get("/admin/queue")
def queue():
    """Queued and running jobs with their progress, live: the page, or (for htmx) its list alone."""
    from history.runner import studio

    progress = studio().runner.progress_snapshot()
    context = {"entries": [{"job": job, "progress": progress.get(job.prompt_id)} for job in jobs.active_jobs()]}
    # The list polls itself with hx-get on this URL; htmx says so with HX-Request.
    template = "queue_list.html" if request.htmx else "queue.html"
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
