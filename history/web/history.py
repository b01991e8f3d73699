"""The history page and its fragments (list, card, overlay): one view serves a page and, for htmx, the partial alone."""
from __future__ import annotations

import collections
import datetime
import hashlib
import logging
import threading
import time

from flask import Blueprint
from flask import abort
from flask import current_app
from flask import make_response
from flask import redirect
from flask import render_template
from flask import request
from flask import url_for
from peewee import DatabaseError

from history import changes
from history import jobs
from history.db import database
from history.db import is_sqlite
from history.events import LIST_EVENTS
from history.models import card_images
from history.studio import studio
from history.web import cards
from history.web import charts
from history.web import guard
from history.web import poll_answers
from history.web import media
from history.web.api import get_job_or_404
from history.web.api import matching_fields
from history.web.api import read_bulk_form
from history.web.api import retry_jobs
from history.web import templating
from history.web.compare import compare_rows

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
STORE_ERROR = "The job store cannot be read right now. Reload the page in a moment; nothing has been lost."


def _events_url() -> str | None:
    """The websocket's path for the events that change the list, when the websocket blueprint is installed."""
    endpoint = templating.endpoint_for("/ws")
    # Only what refreshes the list: a thousand open pages are sent one frame per finished job, not six.
    return url_for(endpoint, events=",".join(LIST_EVENTS)) if endpoint else None


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
    return hashlib.blake2b(f"{raw}|{templating.tz_name()}|{version}".encode(), digest_size=12).hexdigest()


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
        # More jobs match than the list holds: say how many, for "Select all N matching".
        "matching_count": _shown_matching_count(history_filter) if page.next_cursor and not compact else 0,
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
        "tz_name": templating.tz_name(),
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
    """Render the history page: header with LIVE indicator, toolbar, job list."""
    return _render_page()


@bp.get("/admin/history/list")
def history_list():
    """Render the job list fragment with its ETag (204 to the poller and 304 to If-None-Match when unchanged); with ``before``, one further page."""
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
        etags = _list_etags()
        token = etags.changes.token()  # before the ETag: a write from here on moves the token past it
        etag_key = (history_filter, limit, since)
        raw = etags.get(etag_key, lambda: jobs.list_etag(history_filter, limit, since=since))
        etag = _poll_etag(raw)
    except jobs.InvalidQuery as error:
        body = render_template("list_error.html", message=str(error))
        return _fragment_headers(make_response(body, 400))
    if request.htmx and request.headers.get(LIST_ETAG_HEADER) == etag:
        return _unchanged(204, etag, etags, etag_key, token)
    if request.if_none_match.contains(etag):
        return _unchanged(304, etag, etags, etag_key, token)
    # Every open page asks for the same list after a change: render it once per process, not once per reader.
    key = (request.host, request.full_path, request.headers.get("Origin"), templating.tz_name())

    def render() -> tuple[str, str]:
        # Let what is already waiting go first: on a gevent worker a change's websocket events are queued to
        # a thousand sockets just before the first poll that sees it, and this render (tens of ms) would
        # otherwise hold the one event loop, and every one of those sends, until it is done.
        time.sleep(0)
        context = list_context(history_filter, since, compact)
        return context["list_etag"], render_template("job_list.html", **context)

    etag, body = _rendered_lists().get_or_render(key, etag, render)
    _may_repeat(200, etags, etag_key, token)
    return _fragment_headers(make_response(body), etag)


def _unchanged(status: int, etag: str, etags: changes.Remembered, etag_key, token):
    """Answer a poll whose list has not changed, without a body."""
    _may_repeat(status, etags, etag_key, token)
    return _fragment_headers(make_response("", status), etag)


def _may_repeat(status: int, etags: changes.Remembered, etag_key, token) -> None:
    """Let web/poll_answers.py give this poll's answer to the same request again while the store stays at
    ``token`` (as long as its ETag is kept) and the guard's decision on the caller holds."""
    counter = studio().metrics.list_polls.labels(str(status))
    poll_answers.allow_repeat(request.environ, etags.changes, token, etags.made_at(etag_key),
                              guard.caller_holds_until(), on_repeat=counter.inc)


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
    """Render a job's detail overlay for htmx; otherwise the history page with that overlay open."""
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
    """Render one job's card."""
    job = get_job_or_404(prompt_id)
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
    try:  # the filter form comes along, so the delete answers the list the reader is looking at
        list_args = jobs.HistoryFilter.from_args(request.form).query_args()
    except jobs.InvalidQuery as error:
        abort(400, str(error))
    matching = matching_fields(request.form)
    if matching is not None:  # "Select all N matching": confirm a delete over the filter instead
        context = bulk_context("delete", "list", read_bulk_form(matching), list_args=list_args)
        if not _wants_fragment():
            return _render_page(**context)
        return _fragment_headers(make_response(render_template("bulk_confirm.html", **context)))
    prompt_ids = _selected_ids()
    usage = jobs.delete_usage(prompt_ids, current_app.config["STUDIO"].output_roots)
    confirm = {
        "prompt_ids": prompt_ids,
        "count": len(prompt_ids),
        "files": usage["files"],
        "bytes": usage["bytes"],
        "delete_url": url_for("history.history_delete", **list_args),
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
    job = get_job_or_404(prompt_id)
    if not job.is_retryable:
        abort(409, f"job {prompt_id[:12]} is {job.status}: only failed and stalled jobs are retried")
    # One retry, guarded as the API's are (a second one within seconds is refused with the retry it made).
    _queued, failed = retry_jobs([prompt_id])
    refusal = failed[0] if failed else {}
    # A retry made seconds ago is no error: the note, from the store, says where it is.
    error = None if refusal.get("retried_as") else refusal.get("error")
    if not request.htmx:
        return redirect(url_for("history.history_job", prompt_id=prompt_id), 303)
    retry = cards.retry_state(job, jobs.latest_retry(prompt_id), error)
    body = "".join(render_template("retry_button.html", retry=retry, place=place, oob=True) for place in ("card", "overlay"))
    return _fragment_headers(make_response(body, refusal.get("status", 200)))


@bp.get("/admin/history/jobs/<prompt_id>/retry")
def history_retry_box(prompt_id: str):
    """Render one Retry box (``place``: card or overlay) as the store says now; the overlay's polls itself while its retry is queued."""
    job = jobs.get_job(prompt_id)
    place = request.args.get("place", "overlay")
    if job is None or not job.is_retryable or place not in ("card", "overlay"):
        abort(404, f"no failed or stalled job with prompt_id {prompt_id[:64]!r}")
    retry = cards.retry_state(job, jobs.latest_retry(prompt_id))
    return _fragment_headers(make_response(render_template("retry_button.html", retry=retry, place=place)))


# ---- Keeping what matters: stars, bulk actions over a filter, Failures, Storage, Compare ---------------

def _star_answer(job, status: int = 200):
    """A star's answer: its box on the card and in the overlay (out of band), so both say the same."""
    body = "".join(render_template("star_button.html", job=job, place=place, oob=True) for place in ("card", "overlay"))
    return _fragment_headers(make_response(body, status))


def _form_flag(name: str) -> bool:
    """A form's 1/0 field; abort 400 when it is neither."""
    value = request.form.get(name, "")
    if value not in ("0", "1"):
        abort(400, f"{name}: send 1 or 0")
    return value == "1"


@bp.post("/admin/history/jobs/<prompt_id>/star")
def history_star(prompt_id: str):
    """Star or unstar one job; answer its star boxes (card and overlay)."""
    starred = _form_flag("starred")
    updated, _not_found = jobs.star_jobs([prompt_id], starred)
    if not updated:
        abort(404, f"no job with prompt_id {prompt_id[:64]!r}")
    if not request.htmx:
        return redirect(url_for("history.history_job", prompt_id=prompt_id), 303)
    return _star_answer(jobs.get_job(prompt_id))


@bp.post("/admin/history/star")
def history_star_selected():
    """Star or unstar the selected jobs; answer the refreshed list."""
    starred = _form_flag("starred")
    jobs.star_jobs(_selected_ids(), starred)
    if not _wants_fragment():
        return redirect(url_for("history.history", **_history_filter().query_args()), 303)
    context = list_context(_history_filter(), request.args.get("since") or None)
    return _fragment_headers(make_response(render_template("job_list.html", **context)))


# The list counts its matches up to here ("1,000+" beyond): an exact count reads every match, which grows with
# the store (a second at a million jobs); choosing "Select all" counts exactly, once.
SHOWN_COUNT_CAP = 1_000


def matching_count(history_filter: jobs.HistoryFilter) -> int:
    """How many jobs a filter matches, exactly."""
    return jobs.filtered(history_filter, paged=False).order_by().count()


def _shown_matching_count(history_filter: jobs.HistoryFilter) -> int | str:
    """The list's "N matching" (only asked when it has more pages): exact up to SHOWN_COUNT_CAP, else "1,000+"."""
    count = jobs.count_up_to(history_filter, SHOWN_COUNT_CAP)
    return f"{SHOWN_COUNT_CAP:,}+" if count > SHOWN_COUNT_CAP else count


def _matching_selection(history_filter: jobs.HistoryFilter) -> dict:
    """"Select all N matching": the filter frozen at this moment (queued_before) and the count it matches."""
    now = datetime.datetime.now(datetime.timezone.utc)
    frozen = history_filter.replace(queued_before=min(now, history_filter.queued_before or now))
    count = matching_count(frozen)
    fields = [(name, value) for name, values in frozen.query_args().items() for value in (values if isinstance(values, list) else [values])]
    return {"count": count, "fields": fields + [("expect", str(count))], "history_filter": frozen}


@bp.get("/admin/history/matching")
def history_matching():
    """Select every job the filter matches (not only the loaded cards): the selection's hidden fields."""
    try:
        matching = _matching_selection(_history_filter()) if request.args.get("clear") != "1" else None
    except jobs.InvalidQuery as error:
        abort(400, str(error))
    if not _wants_fragment():
        return _render_page(matching=matching)
    return _fragment_headers(make_response(render_template("matching_selection.html", matching=matching)))


BULK_ACTIONS = {
    "delete": ("Delete jobs", "Delete", "Delete {count} job(s) and their output files? This cannot be undone."),
    "retry": ("Retry jobs", "Retry", "Retry {count} failed or stalled job(s)? Each gets one new job."),
}


def describe_filter(history_filter: jobs.HistoryFilter) -> str:
    """A filter in words, for a confirm dialog: "status error, stalled; workflow x; queued before ..."."""
    parts = [f"status {', '.join(history_filter.statuses)}"]
    if history_filter.workflow_id:
        parts.append(f"workflow {history_filter.workflow_id}")
    if history_filter.q:
        parts.append(f"search “{history_filter.q}”")
    if history_filter.starred is not None:
        parts.append("starred" if history_filter.starred else "not starred")
    if history_filter.cause:
        parts.append("one failure cause")
    if history_filter.queued_after:
        parts.append(f"queued from {templating.local_time(history_filter.queued_after, 'full')}")
    if history_filter.queued_before:
        parts.append(f"queued before {templating.local_time(history_filter.queued_before, 'full')}")
    return "; ".join(parts)


def _bulk_from_form():
    """The bulk action a form posts: what (delete or retry), which answer (list or failures), and its filter."""
    action = request.form.get("action", "delete")
    if action not in BULK_ACTIONS:
        abort(400, f"action: {action[:20]!r}; send delete or retry")
    answer = request.form.get("answer", "list")
    if answer not in ("list", "failures"):
        abort(400, "answer: send list or failures")
    return action, answer, read_bulk_form(request.form)


def bulk_context(action: str, answer: str, bulk, error: str | None = None, list_args: dict | None = None) -> dict:
    """The bulk confirm dialog's view-model: the question, what it takes, and the fields its Confirm posts."""
    title, verb, question = BULK_ACTIONS[action]
    history_filter = bulk.history_filter
    if action == "delete":
        usage = jobs.removal_usage(history_filter, bulk.include_starred)
        starred = usage["starred"]
    else:
        usage, starred = {"bytes": 0}, 0
    fields = [(name, value) for name, values in history_filter.query_args().items()
              for value in (values if isinstance(values, list) else [values])]
    fields += [("expect", str(bulk.expect)), ("action", action), ("answer", answer)]
    if bulk.include_starred:
        fields.append(("include_starred", "1"))
    target = "#failure-groups" if answer == "failures" else "#job-list"
    return {"bulk": {
        "action": action, "title": title, "verb": verb, "count": bulk.expect,
        "question": question.format(count=bulk.expect), "description": describe_filter(history_filter),
        "bytes": usage["bytes"], "starred": starred, "include_starred": bulk.include_starred, "error": error,
        "fields": fields, "target": target,
        "url": url_for("history.bulk_apply", **(list_args or {})),
    }}


@bp.post("/admin/history/bulk/confirm")
def bulk_confirm():
    """Ask to confirm a delete or retry of every job a filter matched when the reader chose them."""
    action, answer, bulk = _bulk_from_form()
    context = bulk_context(action, answer, bulk)
    if not _wants_fragment():
        return _render_bulk_page(answer, **context)
    return _fragment_headers(make_response(render_template("bulk_confirm.html", **context)))


def _render_bulk_page(answer: str, status: int = 200, **shown):
    """The page a bulk action came from (History or Failures), with its dialog or notice, for a browser without scripts."""
    if answer == "failures":
        return make_response(render_template("failures.html", **_failures_context(), **shown), status)
    return _render_page(status=status, **shown)


def _retry_notice(queued: list, failed: list) -> str:
    """What a Retry all did, in words."""
    words = f"Queued {len(queued)} retr{'y' if len(queued) == 1 else 'ies'}"
    if failed:
        words += f"; {len(failed)} not retried ({failed[0]['error']}{' …' if len(failed) > 1 else ''})"
    return words + "."


@bp.post("/admin/history/bulk")
def bulk_apply():
    """Delete or retry what the filter matches now, if it is still the confirmed count; else the dialog again with the new count (409)."""
    action, answer, bulk = _bulk_from_form()
    the_studio = studio()
    try:
        if action == "delete":
            output_root = current_app.config["STUDIO"].output_roots
            report = the_studio.delete(lambda: jobs.delete_matching(bulk.history_filter, output_root, bulk.expect, bulk.include_starred))
            notice = report
        else:
            queued, failed = retry_jobs(jobs.matching_ids(jobs.retryable(bulk.history_filter), bulk.expect))
            notice = _retry_notice(queued, failed)
    except jobs.CountChanged as changed:
        message = f"The filter now matches {changed.count} jobs, not {changed.expect}: nothing was changed. Confirm again for {changed.count}."
        fresh = type(bulk)(bulk.history_filter, changed.count, bulk.include_starred)
        context = bulk_context(action, answer, fresh, error=message, list_args=request.args.to_dict(flat=False))
        if not _wants_fragment():
            return _render_bulk_page(answer, status=409, **context)
        response = make_response(render_template("bulk_confirm.html", **context), 409)
        response.headers["HX-Retarget"] = "#confirm-dialog"
        response.headers["HX-Reswap"] = "outerHTML"
        return _fragment_headers(response)
    if not _wants_fragment():
        if answer == "failures":
            return _render_bulk_page(answer, notice=notice if isinstance(notice, str) else _deleted_words(notice))
        return _render_page(notice=notice) if action == "delete" else _render_page()
    closed = render_template("confirm_dialog.html", oob=True) + render_template("matching_selection.html", matching=None, oob=True)
    if answer == "failures":
        words = notice if isinstance(notice, str) else _deleted_words(notice)
        body = render_template("failure_groups.html", **_failures_context(), notice=words)
    elif action == "delete":
        context = list_context(_history_filter(), request.args.get("since") or None)
        body = render_template("delete_answer.html", **context, notice=notice, checked_ids=[])
    else:
        context = list_context(_history_filter(), request.args.get("since") or None)
        body = render_template("job_list.html", **context)
    return _fragment_headers(make_response(body + closed))


def _deleted_words(report) -> str:
    """What a Delete all did, in words."""
    words = f"Deleted {len(report.deleted)} job{'' if len(report.deleted) == 1 else 's'}"
    return words + (f"; {len(report.failed)} could not be deleted." if report.failed else ".")


def _failures_context() -> dict:
    """The Failures view's groups, each with its links and the fields its Retry all and Delete all post."""
    now = datetime.datetime.now(datetime.timezone.utc)
    groups = []
    for group in jobs.failure_groups():
        history_filter = group.history_filter
        group.list_url = url_for("history.history", **history_filter.query_args())
        group.workflow_urls = {
            workflow_id: url_for("history.history", **history_filter.replace(workflow_id=workflow_id).query_args())
            for workflow_id in group.workflows
        }
        frozen = history_filter.replace(queued_before=now)
        group.fields = [(name, value) for name, values in frozen.query_args().items()
                        for value in (values if isinstance(values, list) else [values])]
        group.fields.append(("expect", str(group.count)))
        groups.append(group)
    return {"groups": groups, "tz_name": templating.tz_name()}


@bp.get("/admin/history/failures")
def history_failures():
    """Show failed and stalled jobs grouped by cause (the Failures view), each group with Retry all and Delete all."""
    return make_response(render_template("failures.html", **_failures_context()))


def _link(history_filter: jobs.HistoryFilter) -> str:
    """The History page filtered to ``history_filter``."""
    return url_for("history.history", **history_filter.query_args())


@bp.get("/admin/history/storage")
def history_storage():
    """Show the Storage panel: counts and bytes by status, by day and by workflow, as SVG whose bars link to their filters."""
    storage = charts.storage_panel(jobs.storage_stats(), _link)
    if not _wants_fragment():
        return _render_page(storage=storage)
    return _fragment_headers(make_response(render_template("storage_panel.html", storage=storage)))


@bp.get("/admin/history/compare")
def history_compare():
    """Two jobs side by side, every differing value marked (``a`` and ``b``, or the selection's two prompt_ids)."""
    chosen = request.args.getlist("prompt_ids")
    if chosen:
        if len(chosen) != 2:
            abort(400, f"select exactly two jobs to compare ({len(chosen)} selected)")
        found = [job for job in map(jobs.get_job, chosen) if job is not None]
        if len(found) == 2:  # the older one first: a job, then its retry
            chosen = [job.prompt_id for job in sorted(found, key=lambda job: (job.queued_at, job.prompt_id))]
        return redirect(url_for("history.history_compare", a=chosen[0], b=chosen[1]), 303)
    pair = []
    for name in ("a", "b"):
        job = jobs.get_job(request.args.get(name, ""))
        if job is None:
            abort(404, f"{name}: no job with prompt_id {request.args.get(name, '')[:64]!r}")
        pair.append(job)
    a, b = pair
    rows = compare_rows(a, b)
    sections = [(section, [row for row in rows if row.section == section]) for section in dict.fromkeys(row.section for row in rows)]
    thumbs = [[media.thumbnail_url(ref, job.comfyui_server) for ref in card_images(job.outputs)] for job in pair]
    return render_template(
        "compare.html", a=a, b=b, rows=rows, sections=sections, differing=sum(row.differs for row in rows),
        a_thumbs=thumbs[0], b_thumbs=thumbs[1],
    )


@bp.get("/admin/history/jobs/<prompt_id>/outputs/<int:index>")
def history_output(prompt_id: str, index: int):
    """Show one output of a job in the viewer (htmx swaps it in, previous and next included); otherwise send the file itself."""
    job = get_job_or_404(prompt_id)
    views = media.output_views(job)
    if not 0 <= index < len(views):
        abort(404, f"job {prompt_id[:12]} has {len(views)} output(s)")
    if not _wants_fragment():
        if views[index].url is None:
            abort(404, f"{views[index].filename} is missing")
        return redirect(views[index].url)
    body = render_template("output_viewer.html", job=job, views=views, index=index)
    return _fragment_headers(make_response(body))
