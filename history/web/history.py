"""The history page and its fragments (list, card, overlay): one view serves a page and, for htmx, the partial alone."""
from __future__ import annotations

import collections
import datetime
import hashlib
import logging
import threading

from flask import Blueprint
from flask import abort
from flask import current_app
from flask import g
from flask import make_response
from flask import redirect
from flask import render_template
from flask import request
from flask import url_for
from peewee import DatabaseError
from zoneinfo import ZoneInfo

from history import changes
from history import jobs
from history.db import database
from history.db import is_sqlite
from history.studio import studio
from history.events import LIST_EVENTS
from history.executors.base import ExecutorRejected
from history.executors.base import ExecutorUnavailable
from history.studio import UnknownWorkflow
from history.studio import studio
from history.web import cards
from history.workflows import ValidationError

bp = Blueprint("history", __name__)
log = logging.getLogger(__name__)


@bp.record_once
def _take_markup_version(state):
    state.app.extensions[MARKUP_VERSION] = markup_version(state.app)


def markup_version(app) -> str:
    """A digest of every template's source, taken once at start-up: a changed template changes the list's ETag."""
    loader = app.jinja_loader
    digest = hashlib.blake2b(digest_size=8)
    for name in sorted(loader.list_templates()):
        source, _filename, _uptodate = loader.get_source(app.jinja_env, name)
        digest.update(name.encode() + b"\0" + source.encode() + b"\0")
    return digest.hexdigest()


@bp.get("/")
def index():
    """Send visitors to the history page."""
    return redirect(url_for("history.history"))


# One data function, list_context(), feeds the page and the fragment; the JSON API reads the same
# jobs.history_page().


# Where the templates' digest is kept (markup_version): an open page re-renders on its next poll after a deploy.
MARKUP_VERSION = "history.markup_version"
# The poller sends the ETag it shows in this header; a match answers 204, which htmx never swaps.
# (A browser's own revalidation would hide a 304 from fetch and hand htmx the cached 200 to swap.)
LIST_ETAG_HEADER = "X-List-ETag"
TZ_COOKIE = "studio_tz"
STORE_ERROR = "The job store cannot be read right now. Reload the page in a moment; nothing has been lost."


def reader_timezone():
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


def tz_name() -> str:
    """The name of the reader's time zone (``UTC`` until the browser has said)."""
    return getattr(reader_timezone(), "key", "UTC")


def endpoint_for(rule_suffix: str) -> str | None:
    """The endpoint registered for a URL rule ending in ``rule_suffix`` (another blueprint's), or None."""
    for rule in current_app.url_map.iter_rules():
        if rule.rule.endswith(rule_suffix):
            return rule.endpoint
    return None


def _events_url() -> str | None:
    """The websocket's path, when the websocket blueprint is installed."""
    endpoint = endpoint_for("/ws")
    return url_for(endpoint) if endpoint else None


def _history_filter() -> jobs.HistoryFilter:
    """The filter in the query string; raise InvalidQuery."""
    args = request.args
    return jobs.HistoryFilter.from_args(args)


def _list_url(history_filter: jobs.HistoryFilter, compact: bool, **extra) -> str:
    """The list fragment's URL for a filter, keeping ``compact`` (and ``since`` or ``before`` when given)."""
    return url_for("history.history_list", **history_filter.query_args(), **({"compact": 1} if compact else {}), **extra)


def _head_limit(since: str | None) -> int:
    """How many jobs the list head holds: a page, or (polling ``since``) every job at or above the cursor."""
    return jobs.MAX_LIMIT if since else current_app.config["STUDIO"].page_size


def _poll_etag(raw: str) -> str:
    """The ETag of the list head a poll guards: its jobs.list_etag, the reader's zone and the templates' version."""
    version = current_app.extensions[MARKUP_VERSION]
    return hashlib.blake2b(f"{raw}|{tz_name()}|{version}".encode(), digest_size=12).hexdigest()


def list_context(history_filter: jobs.HistoryFilter, since: str | None = None, compact: bool = False) -> dict:
    """Everything the list renders: its head, where further pages start, and the poll URL and ETag.

    The head is the newest page; once the reader has scrolled further pages in, history.js polls with
    ``since`` (the cursor those pages start below) and the head is every job at or above it: it grows with
    new jobs instead of pushing one into the gap above the loaded pages. The poll guards the head only.
    ``compact`` (thumbnail, name, status: for a sidebar or another site) stays in its URLs.
    """
    settings = current_app.config["STUDIO"]
    page = jobs.history_page(history_filter, _head_limit(since), since=since)
    boundary = since or page.next_cursor
    return {
        "compact": compact,
        "page": page,
        "cards": cards.job_cards(page.jobs, compact),
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
        "tz_name": tz_name(),
        "poll_seconds": current_app.config["STUDIO"].poll_seconds,
        "list_error": error,
        "history_filter": history_filter or jobs.HistoryFilter(),
        "filter_args": (history_filter or jobs.HistoryFilter()).query_args(),
    }
    if history_filter is not None and error is None:
        context.update(list_context(history_filter))
    return context


def _render_page(overlay_job=None, status: int = 200, missing_message: str | None = None, **shown):
    """Render the history page, with a job's overlay (or a "job not found" one) open when given.

    ``shown`` adds what an action without scripts answers on the page: ``confirm`` (the delete dialog),
    ``notice`` (a delete's report) and ``checked_ids`` (jobs still selected).
    """
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
    context.update(shown)
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
            body = render_template("job_page.html", cards=cards.job_cards(page.jobs, compact), more_url=more_url, compact=compact)
            return _fragment_headers(make_response(body))
        limit = _head_limit(since)
        raw = _list_etags().get((history_filter, limit, since), lambda: jobs.list_etag(history_filter, limit, since=since))
        etag = _poll_etag(raw)
    except jobs.InvalidQuery as error:
        body = render_template("list_error.html", message=str(error))
        return _fragment_headers(make_response(body, 400))
    if request.htmx and request.headers.get(LIST_ETAG_HEADER) == etag:
        return _fragment_headers(make_response("", 204), etag)
    if request.if_none_match.contains(etag):
        return _fragment_headers(make_response("", 304), etag)
    # Every open page asks for the same list after a change: render it once per process, not once per reader.
    key = (request.host, request.full_path, request.headers.get("Origin"), tz_name())

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


def _list_etags() -> changes.Remembered:
    """This app's list ETags, each kept until the store changes: an idle poll then costs no query."""
    remembered = current_app.extensions.get("history.list_etags")
    if remembered is None:
        sqlite_path = database.obj.database if is_sqlite() else None
        store_changes = changes.StoreChanges(sqlite_path, bus=studio().bus, writes=changes.count_writes(database.obj))
        remembered = current_app.extensions.setdefault("history.list_etags", changes.Remembered(store_changes))
    return remembered


@bp.record_once
def _note_writes(state):
    # A state-changing request may have written: the next poll of this process looks again at once
    # (on PostgreSQL the NOTIFY of the write can arrive a moment after the answer).
    @state.app.teardown_request
    def _bump_after_a_write(exc):
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            remembered = current_app.extensions.get("history.list_etags")
            if remembered is not None:
                remembered.changes.bump()


def _rendered_lists() -> RenderedLists:
    """This app's cache of rendered lists."""
    return current_app.extensions.setdefault("history.rendered_lists", RenderedLists())


def _overlay_context(job) -> dict:
    """The overlay's view-model (cards.job_detail)."""
    return {"overlay": cards.job_detail(job)}


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
            body = render_template("job_overlay.html", overlay=None, missing_message=message)
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
    body = render_template("job_card.html", card=cards.card_of(job, compact), compact=compact)
    return _fragment_headers(make_response(body))


# ---- Actions: a batch delete through a confirm step, and Retry; each answers HTML -------------------

def _selected_ids() -> list[str]:
    """The selection form's prompt_ids; abort 400/413 when one is not a job id or there are too many."""
    prompt_ids = request.form.getlist("prompt_ids")
    if len(prompt_ids) > jobs.MAX_DELETE_IDS:
        abort(413, f"at most {jobs.MAX_DELETE_IDS} jobs at once")
    for prompt_id in prompt_ids:
        if not jobs.PROMPT_ID_PATTERN.match(prompt_id):
            abort(400, f"prompt_ids: {prompt_id[:64]!r} is not a job id")
    return jobs.fold_ids(prompt_ids)


@bp.post("/admin/history/delete/confirm")
def history_delete_confirm():
    """Ask to confirm a batch delete: the dialog naming the selected jobs with the files and bytes they hold."""
    prompt_ids = _selected_ids()
    form = request.form
    try:  # the filter form comes along, so the delete answers the list the reader is looking at
        history_filter = jobs.HistoryFilter.parse(form.getlist("status"), form.get("workflow_id"), form.get("q"))
    except jobs.InvalidQuery as error:
        abort(400, str(error))
    usage = jobs.delete_usage(prompt_ids, current_app.config["STUDIO"].output_dir)
    confirm = {
        "prompt_ids": prompt_ids,
        "count": len(prompt_ids),
        "files": usage["files"],
        "bytes": usage["bytes"],
        "delete_url": url_for("history.history_delete", **history_filter.query_args()),
    }
    if not _wants_fragment():
        return _render_page(confirm=confirm, checked_ids=prompt_ids)  # without scripts: the page, dialog open
    return _fragment_headers(make_response(render_template("confirm_dialog.html", confirm=confirm)))


@bp.post("/admin/history/delete")
def history_delete():
    """Delete the confirmed jobs with their files; answer the refreshed list and, beside it, what was deleted and what was not."""
    report = studio().delete_jobs(_selected_ids())
    failed_ids = [failure["prompt_id"] for failure in report.failed]
    if not _wants_fragment():
        return _render_page(notice=report, checked_ids=failed_ids)
    try:
        context = list_context(_history_filter(), request.args.get("since") or None)
    except jobs.InvalidQuery as error:
        return _fragment_headers(make_response(render_template("list_error.html", message=str(error)), 400))
    body = render_template("delete_answer.html", **context, notice=report, checked_ids=failed_ids)
    return _fragment_headers(make_response(body))


@bp.post("/admin/history/jobs/<prompt_id>/retry")
def history_retry(prompt_id: str):
    """Retry a failed or stalled job with its params and seeds; answer its Retry boxes (card and overlay) with what became of it."""
    job = jobs.get_job(prompt_id)
    if job is None:
        abort(404, f"no job with prompt_id {prompt_id[:64]!r}")
    if not job.is_retryable:
        abort(409, f"job {prompt_id[:12]} is {job.status}: only failed and stalled jobs are retried")
    the_studio = studio()
    error, status = None, 200
    refusal = the_studio.retry_guard.check(prompt_id)
    if refusal is not None:
        # A retry made seconds ago is no error: the note says where it is. One still on its way is.
        error, status = (None if refusal.prompt_id else refusal.message), 409
    else:
        try:
            the_studio.execute(job.workflow_id, None, None, retry_of=prompt_id)
        except (UnknownWorkflow, ValidationError, ExecutorRejected) as failure:
            error, status = str(failure), 400
        except ExecutorUnavailable as failure:
            error, status = str(failure), 503
        if error is not None:
            the_studio.retry_guard.release(prompt_id)
    if not request.htmx:
        return redirect(url_for("history.history_job", prompt_id=prompt_id), 303)
    retry = cards.retry_state(job, jobs.latest_retry(prompt_id), error)
    body = "".join(render_template("retry_button.html", retry=retry, place=place, oob=True) for place in ("card", "overlay"))
    return _fragment_headers(make_response(body, status))
