"""Queries and writes on jobs: the history page (keyset), one job, the list's ETag, delete, import/export.

Views pick, paginate and render; this module owns every query, so the HTML and the JSON of a page are
two renderings of one result. No Flask import.
"""
from __future__ import annotations

import collections
import dataclasses
import datetime
import functools
import hashlib
import json
import logging
import operator
import re
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

from peewee import SQL
from peewee import DatabaseError
from peewee import fn

from history import files
from history import search
from history import text
from history.db import connection
from history.db import database
from history.db import is_busy
from history.db import is_sqlite
from history.models import ACTIVE_STATUSES
from history.models import COMPLETED
from history.models import HISTORY_STATUSES
from history.models import QUEUED
from history.models import RETRYABLE_STATUSES
from history.models import STALLED
from history.models import iso
from history.models import known_status
from history.models import STATUSES
from history.models import Job
from history.models import JobDeleted
from history.models import JobGraph
from history.models import JobTally
from history.models import best_output
from history.models import clean_ref

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 200
MAX_LIMIT = 1000
MAX_DELETE_IDS = 10_000
MAX_QUERY_LENGTH = 200
PROMPT_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
WORKFLOW_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
CURSOR_SEPARATOR = "~"


class InvalidQuery(ValueError):
    """A filter or cursor a person can fix; the message says how."""


@dataclass(frozen=True)
class HistoryFilter:
    """What narrows the history list: statuses, a workflow, a text search, stars, a time window, a failure cause."""

    statuses: tuple[str, ...] = HISTORY_STATUSES
    workflow_id: str | None = None
    q: str | None = None
    starred: bool | None = None
    # A half-open window [queued_after, queued_before): a selection's moment, or one day of the Storage panel.
    queued_before: datetime.datetime | None = None
    queued_after: datetime.datetime | None = None
    cause: str | None = None

    @classmethod
    def parse(
        cls, statuses=None, workflow_id=None, q=None, starred=None, queued_before=None, queued_after=None, cause=None
    ) -> "HistoryFilter":
        """Validate raw query values (lists of strings) into a filter; raise InvalidQuery."""
        return cls(
            parse_statuses(statuses) or HISTORY_STATUSES,
            parse_workflow_id(workflow_id),
            parse_search(q),
            parse_starred(starred),
            parse_instant(queued_before, "queued_before"),
            parse_instant(queued_after, "queued_after"),
            parse_cause(cause),
        )

    @classmethod
    def from_args(cls, args) -> "HistoryFilter":
        """The filter of a query string (a MultiDict); raise InvalidQuery."""
        return cls.parse(
            args.getlist("status"), args.get("workflow_id"), args.get("q"), args.get("starred"),
            args.get("queued_before"), args.get("queued_after"), args.get("cause"),
        )

    @classmethod
    def from_json(cls, payload) -> "HistoryFilter":
        """The ``filter`` object of a bulk request; raise InvalidQuery naming the field."""
        if not isinstance(payload, dict):
            raise InvalidQuery("must be an object like {\"status\": [\"error\"], \"queued_before\": \"...\"}")
        unknown = sorted(set(payload) - set(FILTER_FIELDS))
        if unknown:
            raise InvalidQuery(f"unknown field {unknown[0]!r}; use {', '.join(FILTER_FIELDS)}")
        return cls.parse(*(payload.get(name) for name in FILTER_FIELDS))

    def query_args(self) -> dict:
        """The filter as query-string arguments (defaults left out)."""
        args = {}
        if self.statuses != HISTORY_STATUSES:
            args["status"] = list(self.statuses)
        if self.workflow_id:
            args["workflow_id"] = self.workflow_id
        if self.q:
            args["q"] = self.q
        if self.starred is not None:
            args["starred"] = "1" if self.starred else "0"
        if self.queued_before is not None:
            args["queued_before"] = iso_z(self.queued_before)
        if self.queued_after is not None:
            args["queued_after"] = iso_z(self.queued_after)
        if self.cause:
            args["cause"] = self.cause
        return args

    def to_json(self) -> dict:
        """The filter in the shape of a bulk request's ``filter``."""
        args = self.query_args()
        args["status"] = list(self.statuses)
        if "starred" in args:
            args["starred"] = self.starred
        return args

    def replace(self, **changes) -> "HistoryFilter":
        """The same filter with some fields changed."""
        return dataclasses.replace(self, **changes)

    @property
    def is_default(self) -> bool:
        """Whether nothing narrows the list."""
        return not self.query_args()


# The fields of a bulk request's filter, in HistoryFilter.parse's order.
FILTER_FIELDS = ("status", "workflow_id", "q", "starred", "queued_before", "queued_after", "cause")
CAUSE_PATTERN = re.compile(r"^[0-9a-f]{12}$")


def parse_statuses(statuses) -> tuple[str, ...]:
    """Statuses given as a list of (comma-separated) names, in the vocabulary's order; raise InvalidQuery."""
    if isinstance(statuses, str):
        statuses = [statuses]
    if statuses is not None and not isinstance(statuses, (list, tuple)):
        raise InvalidQuery("status must be a status or a list of statuses")
    chosen = []
    for raw in statuses or []:
        if not isinstance(raw, str):
            raise InvalidQuery("status must be a status or a list of statuses")
        for given in filter(None, (part.strip() for part in raw.split(","))):
            status = known_status(given)
            if status is None:
                raise InvalidQuery(f"unknown status {given!r}; use one of {', '.join(STATUSES)}")
            if status not in chosen:
                chosen.append(status)
    return tuple(sorted(chosen, key=STATUSES.index))


def parse_workflow_id(workflow_id) -> str | None:
    """A workflow id, or None when blank; raise InvalidQuery."""
    if workflow_id in ("", None):
        return None
    if not isinstance(workflow_id, str) or not WORKFLOW_ID_PATTERN.match(workflow_id):
        raise InvalidQuery(f"workflow_id {workflow_id!r} is not a workflow id")
    return workflow_id


def parse_search(q) -> str | None:
    """The search text, trimmed, or None when blank; raise InvalidQuery."""
    if q is not None and not isinstance(q, str):
        raise InvalidQuery("q must be a string")
    q = (q or "").strip() or None
    if q is not None and len(q) > MAX_QUERY_LENGTH:
        raise InvalidQuery(f"q is longer than {MAX_QUERY_LENGTH} characters")
    if q is not None and "\x00" in q:
        raise InvalidQuery("q contains a NUL byte")
    return q


def parse_cause(cause) -> str | None:
    """A failure cause id (the Failures view's), or None when blank; raise InvalidQuery."""
    if cause in ("", None):
        return None
    if not isinstance(cause, str) or not CAUSE_PATTERN.match(cause):
        raise InvalidQuery("cause must be a cause id from the Failures view")
    return cause


def parse_starred(raw) -> bool | None:
    """``starred`` of a filter: true, false or absent (1/0, true/false, on in a form); raise InvalidQuery."""
    if raw is None or raw == "" or isinstance(raw, bool):
        return None if raw == "" else raw
    if isinstance(raw, str) and raw.lower() in ("1", "true", "on", "yes"):
        return True
    if isinstance(raw, str) and raw.lower() in ("0", "false", "off", "no"):
        return False
    raise InvalidQuery("starred must be 1 or 0 (true or false)")


def parse_instant(raw, name: str) -> datetime.datetime | None:
    """An ISO 8601 time of a filter (naive means UTC) as aware UTC, or None; raise InvalidQuery."""
    if raw in (None, ""):
        return None
    if not isinstance(raw, str) or len(raw) > 40:
        raise InvalidQuery(f"{name} must be an ISO 8601 time such as 2026-11-28T12:00:00Z")
    try:
        parsed = datetime.datetime.fromisoformat(raw.replace("Z", "+00:00").replace(" ", "+"))
    except ValueError:
        raise InvalidQuery(f"{name} must be an ISO 8601 time such as 2026-11-28T12:00:00Z") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    return parsed.astimezone(datetime.timezone.utc)


def iso_z(value: datetime.datetime) -> str:
    """A UTC time as ISO 8601 with a Z (short in a URL)."""
    return value.astimezone(datetime.timezone.utc).isoformat().replace("+00:00", "Z")


def encode_cursor(job: Job) -> str:
    """The cursor that continues the list after ``job``."""
    stamp = job.queued_at.astimezone(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"{stamp}{CURSOR_SEPARATOR}{job.prompt_id}"


def decode_cursor(cursor: str) -> tuple[datetime.datetime, str]:
    """Parse a cursor made by encode_cursor; raise InvalidQuery."""
    stamp, separator, prompt_id = (cursor or "").partition(CURSOR_SEPARATOR)
    try:
        queued_at = datetime.datetime.strptime(stamp, "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        raise InvalidQuery("before must be a cursor from a previous page's Link header") from None
    if not separator or not PROMPT_ID_PATTERN.match(prompt_id):
        raise InvalidQuery("before must be a cursor from a previous page's Link header")
    return queued_at, prompt_id


def filtered(history_filter: HistoryFilter, search_text: bool = True, paged: bool = True):
    """Jobs matching a filter (its search too, unless ``search_text`` is false), newest first (ties broken by prompt_id), as a chainable query.

    ``paged=False`` is for counting and bulk work, which read every match: the status index then serves.
    """
    searched = bool(history_filter.q and search_text)
    by_search_index = searched and search_leads(history_filter)
    status = Job.status
    if by_search_index or (paged and len(history_filter.statuses) > 1 and COMPLETED in history_filter.statuses and is_sqlite()):
        # With several statuses, completed among them, an index on status would find most of the store and
        # sort it (time grows with the store); status || '' keeps SQLite's planner on the (queued_at, prompt_id)
        # index, read newest first until the page is full: constant time, since most jobs match. A filter of
        # rarer statuses (error, stalled) keeps the status index, which reads only those. PostgreSQL's planner
        # knows from its statistics how many jobs each status holds; the expression would hide that from it
        # (it then guessed a few matches and sorted the whole table to find the 20,000th newest).
        status = unindexed(Job.status)
    query = Job.select().where(status.in_(history_filter.statuses))
    if history_filter.workflow_id:
        workflow_id = unindexed(Job.workflow_id) if by_search_index else Job.workflow_id
        query = query.where(workflow_id == history_filter.workflow_id)
    if searched:
        query = query.where(text_matches(history_filter.q))
    if history_filter.starred is not None:
        starred = unindexed(Job.starred) if by_search_index else Job.starred
        query = query.where(starred == history_filter.starred)
    if history_filter.queued_before is not None:
        query = query.where(Job.queued_at < history_filter.queued_before)
    if history_filter.queued_after is not None:
        query = query.where(Job.queued_at >= history_filter.queued_after)
    if history_filter.cause:
        query = query.where(Job.error.in_(cause_messages(history_filter.cause)))
    return query.order_by(Job.queued_at.desc(), Job.prompt_id.desc())


def search_leads(history_filter: HistoryFilter) -> bool:
    """Whether SQLite's search index should find a filter's rows (it has a needle the index serves).

    SQLite's planner (no statistics) prefers an index on any equality to the search index's matches: it
    would read every job of a status, a workflow, or every unstarred one (nearly all of a million), and
    look each up among the matches. Such a filter writes those columns as expressions (``unindexed``).
    """
    return bool(history_filter.q) and is_sqlite() and search.uses_index(history_filter.q)


def unindexed(column):
    """The same values as ``column``, as an expression that no index of the job table serves."""
    return column + 0 if column is Job.starred else column.concat("")


def count_up_to(history_filter: HistoryFilter, cap: int) -> int:
    """How many jobs a filter matches, counted to ``cap + 1`` at most (reading at most the newest 20 x cap jobs of a search)."""
    needle = history_filter.q
    if needle and search.uses_index(needle) and (not is_sqlite() or search.fts_query(needle)[1]):
        # A count needs no order: the index's matches (PostgreSQL's trigram bitmap; SQLite's candidates of a
        # needle of repeated trigrams, each checked) read until cap + 1.
        return filtered(history_filter, paged=False).select(SQL("1")).order_by().limit(cap + 1).count()
    if search_leads(history_filter):
        # A count needs no order: the search index's matches, streamed, each looked up by rowid, stop at cap + 1.
        return (
            filtered(history_filter, search_text=False)
            .select(SQL("1"))
            .order_by()
            .from_(SQL("job_search CROSS JOIN job AS t1"))
            .where(SQL("job_search MATCH ? AND job_search.rowid = t1.rowid", [search.fts_phrase(needle)]))
            .limit(cap + 1)
            .count()
        )
    return len(page_rows(history_filter, cap, None, None, Job.prompt_id, probe_rows=20 * cap))


# A search first reads the newest jobs of its filter one by one: a common word fills the page from them
# without asking the index for its every match (100,000s at a million jobs); a rare one then takes the index.
SEARCH_PROBE_ROWS = 2000


def page_rows(history_filter: HistoryFilter, limit: int, before: str | None, since: str | None, *columns, tuples=True,
              probe_rows: int | None = None) -> list:
    """The first ``limit + 1`` jobs (or ``columns`` tuples, unless ``tuples`` is false) of a filter's window, newest first.

    A search whose needle the index matches in fewer than ``probe_rows`` (SEARCH_PROBE_ROWS) jobs in all
    asks the index at once; a commoner one reads the newest ``probe_rows`` jobs one by one first.
    """
    def shaped(query):
        query = window(query, before, since)
        if columns:
            query = query.select(*columns)
            query = query.tuples() if tuples else query
        return query

    needle = history_filter.q
    query = shaped(filtered(history_filter, search_text=False))
    if not needle:
        return list(query.limit(limit + 1))
    probe_rows = probe_rows or SEARCH_PROBE_ROWS
    recent = _recent_matches(needle)
    if recent is not None and not _fewer_matches(needle, probe_rows):
        cutoff = query.select(Job.queued_at).tuples().limit(1).offset(probe_rows).scalar()
        probe = query.where(recent)
        if cutoff is not None:
            probe = probe.where(Job.queued_at >= cutoff)
        rows = list(probe.limit(limit + 1))
        # Every job older than the cutoff is older than each of these, so they are the window's newest matches.
        if cutoff is None or len(rows) > limit:
            return rows
    return list(shaped(filtered(history_filter)).limit(limit + 1))


def _fewer_matches(needle: str, bound: int) -> bool:
    """Whether SQLite's search index matches ``needle`` in fewer than ``bound`` jobs in all (streamed, stopped at ``bound``)."""
    if not (is_sqlite() and search.uses_index(needle)):
        return False
    found = database.execute_sql(
        "SELECT COUNT(*) FROM (SELECT rowid FROM job_search WHERE job_search MATCH ? LIMIT ?)", (search.fts_query(needle)[0], bound)
    ).fetchone()[0]
    return found < bound


def text_matches(needle: str):
    """Jobs whose workflow name, prompt id, prompts or scene prompts contain ``needle`` (any case), by the search index."""
    if not search.uses_index(needle):
        return _document_like(needle)
    if is_sqlite():
        return _index_match(needle, "rowid IN (SELECT rowid FROM job_search WHERE job_search MATCH ?)")
    # contains() is ILIKE with % and _ escaped; the pg_trgm index is on exactly this expression.
    return _search_text().contains(needle)


def _index_match(needle: str, sql: str):
    """``sql`` (whose one parameter is an FTS5 query) matching ``needle`` by SQLite's search index, checked by LIKE where the query finds more."""
    query, check = search.fts_query(needle)
    return SQL(sql, [query]) & _document_like(needle) if check else SQL(sql, [query])


def _search_text():
    """The text the PostgreSQL search index holds, for the row a query reads."""
    return fn.job_search_text(Job.workflow_name, Job.prompt_id, Job.params)


def _recent_matches(needle: str):
    """The same match as text_matches, read row by row (cheap over the newest rows only), or None if it could differ."""
    if is_sqlite() and not search.sqlite_like_agrees(needle):
        return None
    return _document_like(needle)


def _document_like(needle: str):
    """A case-insensitive LIKE over the text the index holds, row by row (and for needles the index cannot serve)."""
    if search.SEPARATOR in needle:
        return _text_like(needle)
    if not is_sqlite():
        return _search_text().contains(needle)
    pattern = "%" + needle.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    like = "LIKE ? ESCAPE '\\'"
    prompts = f"({search.SQLITE_PROMPTS}) {like}"
    if '"' not in needle and "\\" not in needle and needle.isprintable():
        # Such a needle appears verbatim in the params' JSON text wherever it is in a prompt: a cheap
        # LIKE on that text spares the JSON parse of every other row.
        prompts = f"(params {like} AND {prompts})"
        return SQL(f"(workflow_name {like} OR prompt_id {like} OR {prompts})", [pattern] * 4)
    return SQL(f"(workflow_name {like} OR prompt_id {like} OR {prompts})", [pattern] * 3)


def _text_like(needle: str):
    """A case-insensitive LIKE over each stored field (scenes as their JSON text), for a needle holding the separator."""
    # contains() is a case-insensitive LIKE that escapes % and _ itself.
    return (
        Job.workflow_name.contains(needle)
        | Job.prompt_id.contains(needle)
        | Job.params["positive_prompt"].as_text().contains(needle)
        | Job.params["negative_prompt"].as_text().contains(needle)
        | Job.params["scenes"].as_text().contains(needle)
    )


@dataclass
class Page:
    """One page of the history list, the cursor to the next, and the list_etag of what it shows."""

    jobs: list[Job]
    next_cursor: str | None
    history_filter: HistoryFilter
    etag: str


def since_cursor(query, since: str):
    """Narrow a history query to the jobs at or above a cursor (the part of the list a page already shows)."""
    queued_at, prompt_id = decode_cursor(since)
    return query.where((Job.queued_at > queued_at) | ((Job.queued_at == queued_at) & (Job.prompt_id >= prompt_id)))


def window(query, before: str | None, since: str | None):
    """Narrow a newest-first query to the jobs after the ``before`` cursor and at or above ``since``."""
    if since:
        query = since_cursor(query, since)
    if before:
        queued_at, prompt_id = decode_cursor(before)
        query = query.where(
            (Job.queued_at < queued_at) | ((Job.queued_at == queued_at) & (Job.prompt_id < prompt_id))
        )
    return query


def latest_retry_key():
    """A column: the newest retry of each row's job as ``prompt_id status`` (NULL when it has none).

    A card says what became of its job's retry, so the list's ETag covers it: one probe of the
    retry_of index per listed job.
    """
    retry = Job.alias()
    return (
        retry.select(retry.prompt_id.concat(" ").concat(retry.status))
        .where(retry.retry_of == Job.prompt_id)
        .order_by(retry.queued_at.desc(), retry.prompt_id.desc())
        .limit(1)
    )


def history_page(
    history_filter: HistoryFilter, limit: int = DEFAULT_LIMIT, before: str | None = None, since: str | None = None
) -> Page:
    """Fetch one page of the history list (keyset paging: no OFFSET, no COUNT); ``since`` keeps jobs at or above a cursor."""
    jobs = page_rows(history_filter, limit, before, since, Job, latest_retry_key().alias("latest_retry"), tuples=False)
    next_cursor = encode_cursor(jobs[limit - 1]) if len(jobs) > limit else None
    rows = ((job.prompt_id, job.status, job.starred, job.latest_retry) for job in jobs)
    etag = _etag((history_filter, limit, before, since), rows)
    return Page(jobs[:limit], next_cursor, history_filter, etag)


def list_etag(history_filter: HistoryFilter, limit: int, before: str | None = None, since: str | None = None) -> str:
    """The ETag of a shown page: its ordered (prompt_id, status, starred, newest retry) rows, whether more follow, and the filter.

    One narrow query over the index that serves the list, and no template rendering; a status change (or
    a star) of a listed job, or of its newest retry, changes it as surely as a new job does. Equal to the
    ``etag`` of the same history_page.
    """
    rows = page_rows(history_filter, limit, before, since, Job.prompt_id, Job.status, Job.starred, latest_retry_key())
    return _etag((history_filter, limit, before, since), rows)


def _etag(request: tuple, rows) -> str:
    """A digest of what a list request asked for and the (prompt_id, status, starred, latest retry) rows it found."""
    digest = hashlib.blake2b(digest_size=12)
    digest.update(repr(request).encode())
    for prompt_id, status, starred, retry in rows:
        digest.update(f"{prompt_id}\x1f{status}\x1f{int(bool(starred))}\x1f{retry or ''}\x1e".encode())
    return digest.hexdigest()


# The distinct workflow ids by a "skip scan" of the (workflow_id, queued_at, prompt_id) index: one index
# probe per workflow instead of a scan of every job (1 ms rather than 50 ms at 100,000 jobs, on SQLite).
WORKFLOW_IDS_SQL = """
WITH RECURSIVE workflow(id) AS (
    SELECT MIN(workflow_id) FROM job
    UNION ALL
    SELECT (SELECT MIN(workflow_id) FROM job WHERE workflow_id > workflow.id) FROM workflow WHERE workflow.id IS NOT NULL
)
SELECT id FROM workflow WHERE id IS NOT NULL
"""


def workflow_choices() -> list[tuple[str, str]]:
    """(workflow_id, latest workflow_name) of every workflow with history, for the page's filter."""
    ids = [row[0] for row in database.execute_sql(WORKFLOW_IDS_SQL).fetchall()]
    choices = []
    for workflow_id in ids:
        name = (
            Job.select(Job.workflow_name)
            .where(Job.workflow_id == workflow_id)
            .order_by(Job.queued_at.desc())
            .limit(1)
            .scalar()
        )
        choices.append((workflow_id, name or workflow_id))
    return choices


def get_job(prompt_id: str) -> Job | None:
    """One job by its id, or None."""
    if not isinstance(prompt_id, str) or not PROMPT_ID_PATTERN.match(prompt_id):
        return None
    return Job.get_or_none(Job.prompt_id == prompt_id)


def active_jobs():
    """Queued and running jobs, oldest first (the queue page)."""
    return Job.select().where(Job.status.in_(ACTIVE_STATUSES)).order_by(Job.queued_at, Job.prompt_id)


def retries_of(prompt_id: str):
    """Jobs that retried ``prompt_id``, newest first."""
    return Job.select().where(Job.retry_of == prompt_id).order_by(Job.queued_at.desc(), Job.prompt_id.desc())


def latest_retry(prompt_id: str) -> str | None:
    """The newest retry of one job as ``prompt_id status`` (the history page's ``latest_retry``), or None."""
    retry = retries_of(prompt_id).first()
    return f"{retry.prompt_id} {retry.status}" if retry else None


# ---- the lifecycle: writes of the runner and the Studio, each on a connection held only for it -------

def record_queued(**values) -> Job:
    """Store a new job as queued and return it."""
    with connection(), database.atomic():
        Job.insert(status=QUEUED, **values).execute()
        return Job.get_by_id(values["prompt_id"])


def discard_queued(prompt_id: str) -> None:
    """Remove a job the executor never took (only while it is still queued)."""
    with connection(), database.atomic():
        Job.delete().where((Job.prompt_id == prompt_id) & (Job.status == QUEUED)).execute()


def update_active(prompt_id: str, change, after_stall: bool = False) -> Job | None:
    """Apply ``change(job)`` (the values to write) to a queued or running job in one transaction.

    None when the job is not active: it ended or was deleted meanwhile, and is never brought back
    (``UPDATE ... WHERE status IN (queued, running)``). ``after_stall`` lets a job marked stalled take its
    real end (the executor reported it after all); a completed, failed or deleted job stays as it is.
    """
    statuses = ACTIVE_STATUSES + ((STALLED,) if after_stall else ())
    with connection(), database.atomic():
        job = Job.get_or_none(Job.prompt_id == prompt_id)
        if job is None or job.status not in statuses:
            return None
        updated = (
            Job.update(**change(job))
            .where((Job.prompt_id == prompt_id) & (Job.status.in_(statuses)))
            .execute()
        )
        return Job.get_or_none(Job.prompt_id == prompt_id) if updated else None


def servers_of(prompt_ids: list[str]) -> dict[str, str | None]:
    """The ComfyUI server each of these jobs was handed to (None when no server is recorded), by prompt_id."""
    found: dict[str, str | None] = {}
    ids = job_ids(prompt_ids)
    with connection():
        for start in range(0, len(ids), DELETE_BATCH):
            chunk = ids[start:start + DELETE_BATCH]
            found.update(Job.select(Job.prompt_id, Job.comfyui_server).where(Job.prompt_id.in_(chunk)).tuples())
    return found


def store_is_empty() -> bool:
    """Whether the store holds no job at all."""
    with connection():
        return not Job.select().exists()


def job_record(prompt_id: str) -> dict | None:
    """A job's API dict read from the store (for events that reach this process by id), or None."""
    with connection():
        job = Job.get_or_none(Job.prompt_id == prompt_id)
        return job.to_dict() if job is not None else None


# ---- delete -------------------------------------------------------------------------------------

class StoreBusy(Exception):
    """Another process holds the store's write lock past the busy timeout; ``report`` says what was done
    before (each job in it is whole or gone, and nothing of the job that met the lock was touched)."""

    def __init__(self, report: "DeleteReport"):
        super().__init__("the job store is busy with another writer; try again in a moment")
        self.report = report


@dataclass
class DeleteReport:
    """What a batch delete did, in the API's shape."""

    deleted: list[str] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    files_removed: int = 0
    bytes_freed: int = 0
    pending: list[dict] = field(default_factory=list)
    deleted_jobs: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        """The report as the API answers it."""
        return {
            "deleted": self.deleted,
            "not_found": self.not_found,
            "failed": self.failed,
            "files_removed": self.files_removed,
            "bytes_freed": self.bytes_freed,
            "pending": self.pending,
        }


def fold_ids(prompt_ids: list[str]) -> list[str]:
    """Drop repeated ids, keeping the first occurrence's order."""
    return list(dict.fromkeys(prompt_ids))


def job_ids(prompt_ids: list[str]) -> list[str]:
    """The ids among ``prompt_ids`` that can name a job (the rest match none, and never reach a query)."""
    return [prompt_id for prompt_id in fold_ids(prompt_ids) if isinstance(prompt_id, str) and PROMPT_ID_PATTERN.match(prompt_id)]


def delete_usage(prompt_ids: list[str], output_root) -> dict:
    """Count the jobs, files and bytes a delete of these ids would remove (for the confirm dialog).

    ``output_root`` is the output folder or files.OutputRoots (each job's files are in its server's folder).
    """
    every_job = [job for job in Job.select().where(Job.prompt_id.in_(job_ids(prompt_ids))) if job.status not in ACTIVE_STATUSES]
    usage = {"jobs": len(every_job), "files": 0, "bytes": 0}
    by_root: dict[Path, list[Job]] = {}
    for job in every_job:
        by_root.setdefault(files.root_of(output_root, job.comfyui_server), []).append(job)
    for root, jobs in by_root.items():
        _add_usage(usage, jobs, root)
    return usage


def _add_usage(usage: dict, jobs: list[Job], output_root: Path) -> None:
    """Add the files and bytes that deleting ``jobs`` (all keeping their files under ``output_root``) removes."""
    plan = _plan_folders(jobs, output_root)
    for paths in listed_files(jobs, output_root).values():
        for path in paths:
            try:
                size = path.lstat().st_size
            except OSError:
                continue
            usage["files"] += 1
            usage["bytes"] += size
    for entry in dict.fromkeys(where for where in plan.values() if isinstance(where, Path)):
        if not entry.is_symlink():
            count, size = files.folder_usage(entry)
            usage["files"] += count
            usage["bytes"] += size


DELETE_BATCH = 500


def delete_jobs(
    prompt_ids: list[str], output_root, keep_starred: bool = False, batch: int | None = None
) -> DeleteReport:
    """Delete jobs and their output folders: records and folders leave together, files are removed after.

    Per batch of ``batch`` jobs (one query to read them): one transaction takes what it needs to remove
    the records first (SQLite's write lock at BEGIN IMMEDIATE, waiting up to the busy timeout; the rows on
    PostgreSQL), then moves each folder into its tombstone (one rename each), deletes the records and
    commits; only then are the tombstones' files removed. So a job is whole (record and folder) until the
    commit, and deleted after it. A store that stays locked raises StoreBusy with what earlier batches did,
    before this batch has touched anything. A folder that cannot be moved keeps its job whole (``failed``);
    files that cannot be removed afterwards (a read-only subfolder) stay in the tombstone, are listed in
    ``pending`` and are removed by the start-up sweep (finish_interrupted_deletes), which also finishes what
    a process killed at any step left. Queued and running jobs are refused (and starred ones, with
    ``keep_starred``). A folder that another record names too, directly or through a link, stays until
    its last record goes; a job folder that is a link is removed as the link, never followed.

    ``output_root`` is the output folder or files.OutputRoots: with ComfyUI servers that each have their
    own folder, a batch is deleted per folder (each job's files are in the folder of its server).
    """
    report = DeleteReport()
    ids = fold_ids(prompt_ids)
    batch = batch or DELETE_BATCH
    for start in range(0, len(ids), batch):
        try:
            for root, some in _ids_by_root(ids[start:start + batch], output_root):
                _delete_batch(some, root, keep_starred, report)
        except DatabaseError as error:
            if is_busy(error):
                raise StoreBusy(report) from error
            raise
    return report


def _ids_by_root(prompt_ids: list[str], output_root) -> list[tuple[Path, list[str]]]:
    """The ids grouped by the output folder their jobs keep files in (one group when there is one folder)."""
    if not isinstance(output_root, files.OutputRoots) or len(output_root.every()) == 1:
        return [(files.root_of(output_root, None), prompt_ids)]
    servers = servers_of(prompt_ids)
    groups: dict[Path, list[str]] = {}
    for prompt_id in prompt_ids:
        groups.setdefault(output_root.of(servers.get(prompt_id)), []).append(prompt_id)
    return list(groups.items())


def _plan_folders(doomed: list[Job], output_root: Path) -> dict[str, object]:
    """prompt_id -> the folder entry its delete removes, None (the record only) or a refusal entry.

    The entry is the folder's own name under ``comfyui-studio/`` (resolved once per batch), never followed:
    a link is removed as a link. A folder goes with its last record: imports can make two records name one
    folder, or a link name another record's folder.
    """
    entries = files.job_folders(output_root, {job.output_dir for job in doomed if job.output_dir})
    names: dict[str, set[str]] = {}
    plan: dict[str, object] = {}
    for job in doomed:
        entry = entries.get(job.output_dir) if job.output_dir else None
        try:
            if isinstance(entry, files.UnsafePath):
                raise entry
            target = files.link_target(entry) if entry is not None else None
        except files.UnsafePath as error:
            plan[job.prompt_id] = {"prompt_id": job.prompt_id, "error": f"refused: {error}", "status": 400}
            continue
        plan[job.prompt_id] = entry
        if entry is not None:
            names[job.prompt_id] = {job.output_dir} | ({target.name} if target is not None else set())
    every_name = sorted(set().union(*names.values())) if names else []
    holders = collections.Counter()
    for start in range(0, len(every_name), DELETE_BATCH):
        holders.update(dict(
            Job.select(Job.output_dir, fn.COUNT(SQL("*")))
            .where(Job.output_dir.in_(every_name[start:start + DELETE_BATCH]))
            .group_by(Job.output_dir)
            .tuples()
        ))
    going = collections.Counter(job.output_dir for job in doomed if job.prompt_id in names)
    for prompt_id, known_as in names.items():
        if any(holders[name] > going[name] for name in known_as):
            plan[prompt_id] = None
    return plan


def _delete_batch(prompt_ids: list[str], output_root: Path, keep_starred: bool, report: DeleteReport) -> None:
    """Delete one batch of jobs (see delete_jobs), adding to ``report`` in the order of the ids."""
    doomed = _deletable(prompt_ids, keep_starred, report)
    if not doomed:
        return
    plan = _plan_folders(doomed, output_root)
    # Jobs with no folder of their own (other ComfyUI clients' prompts) lose exactly their listed files.
    listed = listed_files(doomed, output_root)
    moved: list[Path] = []
    refused: dict[str, dict] = {}
    gone: list[str] = []
    try:
        with database.atomic():
            # What the records' removal needs, before any file is touched: SQLite's write lock came with
            # BEGIN IMMEDIATE; on PostgreSQL the rows are locked here, and a status that changed is seen.
            query = Job.select(Job.prompt_id).where(Job.prompt_id.in_([job.prompt_id for job in doomed]) & Job.status.not_in(ACTIVE_STATUSES))
            held = {prompt_id for (prompt_id,) in (query if is_sqlite() else query.for_update()).tuples()}
            for job in doomed:
                where = plan[job.prompt_id]
                if job.prompt_id not in held:
                    continue
                if isinstance(where, dict):
                    refused[job.prompt_id] = where
                    continue
                if isinstance(where, Path) and where not in moved:
                    try:
                        if files.move_to_tombstone(where):
                            moved.append(where)
                    except (OSError, files.UnsafePath) as error:
                        refused[job.prompt_id] = _move_refusal(job.prompt_id, error)
                        continue
                gone.append(job.prompt_id)
            for start in range(0, len(gone), DELETE_BATCH):
                Job.delete().where(Job.prompt_id.in_(gone[start:start + DELETE_BATCH])).execute()
                JobGraph.delete().where(JobGraph.prompt_id.in_(gone[start:start + DELETE_BATCH])).execute()
            remember_deleted(gone)
    except BaseException:
        for entry in moved:
            files.put_back(entry)  # nothing was committed: every job stays whole
        raise
    gone_ids = set(gone)
    _remove_listed(listed, gone_ids, output_root, report)
    _clear_tombstones(moved, doomed, plan, report)
    for job in doomed:
        if job.prompt_id in gone_ids:
            report.deleted.append(job.prompt_id)
            report.deleted_jobs.append(job.to_dict())
        elif job.prompt_id in refused:
            report.failed.append(refused[job.prompt_id])
        else:
            report.not_found.append(job.prompt_id)  # deleted (or started again) by someone else meanwhile


def _deletable(prompt_ids: list[str], keep_starred: bool, report: DeleteReport) -> list[Job]:
    """The jobs of ``prompt_ids`` that may go; the others go into ``report`` (not found, running, starred)."""
    found = {job.prompt_id: job for job in Job.select().where(Job.prompt_id.in_(job_ids(prompt_ids)))}
    doomed = []
    for prompt_id in prompt_ids:
        job = found.get(prompt_id)
        if job is None:
            report.not_found.append(prompt_id)
        elif job.status in ACTIVE_STATUSES:
            report.failed.append({"prompt_id": prompt_id, "error": f"job is {job.status}; wait until it ends", "status": 409})
        elif keep_starred and job.starred:
            report.failed.append({"prompt_id": prompt_id, "error": "job is starred; unstar it or include starred jobs", "status": 409})
        else:
            doomed.append(job)
    return doomed


def _remove_listed(listed: dict[str, list[Path]], gone_ids: set[str], output_root: Path, report: DeleteReport) -> None:
    """After the commit: remove the listed files of the folderless jobs that went; what stays is pending."""
    for prompt_id, paths in listed.items():
        if prompt_id not in gone_ids:
            continue
        try:
            count, size = files.remove_listed_files(paths, output_root)
        except (OSError, files.UnsafePath) as error:
            log.warning("delete of %s left its listed files: %s", prompt_id, error)
            report.pending.append({"prompt_id": prompt_id, "files": [path.name for path in paths[:20]], "count": len(paths)})
            continue
        report.files_removed += count
        report.bytes_freed += size


def _clear_tombstones(moved: list[Path], doomed: list[Job], plan: dict, report: DeleteReport) -> None:
    """After the commit: empty the folders moved aside; what a clear leaves is pending for the start-up sweep."""
    for entry in dict.fromkeys(moved):
        cleared = files.clear_tombstone(entry)
        report.files_removed += cleared.files
        report.bytes_freed += cleared.bytes
        if cleared.pending:
            owner = next(job.prompt_id for job in doomed if plan[job.prompt_id] == entry)
            log.warning("delete of %s left %d files for the start-up sweep", owner, len(cleared.pending))
            report.pending.append({"prompt_id": owner, "files": cleared.pending[:20], "count": len(cleared.pending)})


def _move_refusal(prompt_id: str, error: Exception) -> dict:
    """The ``failed`` entry of a job whose folder could not be moved aside (it is whole, its record kept)."""
    if isinstance(error, files.UnsafePath):
        return {"prompt_id": prompt_id, "error": f"refused: {error}", "status": 400}
    log.warning("could not move the files of %s aside: %s", prompt_id, error)
    return {"prompt_id": prompt_id, "error": f"could not delete its files: {error.strerror or error}", "status": 500}


def listed_files(doomed: list[Job], output_root: Path) -> dict[str, list[Path]]:
    """The files each folderless job of ``doomed`` lists that are its alone, by prompt_id.

    Never a file that a record outside ``doomed`` lists too (a cached re-run lists the files of the run it
    replays), never one inside another job's folder, never one outside the output folder.
    """
    folderless = [job for job in doomed if not job.output_dir and job.outputs]
    if not folderless:
        return {}
    wanted = _listed_refs(folderless, output_root)
    names = sorted({key[1] for entries in wanted.values() for key, _ in entries})
    kept = _refs_listed_elsewhere(names, [job.prompt_id for job in doomed])
    owned_folders = _job_folders_among(wanted)
    studio_folder = files.STUDIO_FOLDER + "/"
    found = {}
    for prompt_id, entries in wanted.items():
        paths = []
        for key, path in entries:
            in_job_folder = key[0].startswith(studio_folder) and key[0][len(studio_folder):].split("/")[0] in owned_folders
            if key not in kept and not in_job_folder and path not in paths:
                paths.append(path)
        found[prompt_id] = paths
    return found


def _ref_key(ref: dict) -> tuple[str, str]:
    """(subfolder, filename) of an output reference, as records list it."""
    return (str(ref.get("subfolder") or "").strip("/"), ref.get("filename"))


def _listed_refs(folderless: list[Job], output_root: Path) -> dict[str, list[tuple[tuple, Path]]]:
    """Each job's saved outputs that resolve safely inside the output folder: (reference key, path), by prompt_id."""
    wanted: dict[str, list[tuple[tuple, Path]]] = {}
    for job in folderless:
        for ref in job.outputs or []:
            if not isinstance(ref, dict) or ref.get("type", "output") != "output":
                continue
            try:
                path = files.output_file(output_root, ref)
            except files.UnsafePath:
                continue
            wanted.setdefault(job.prompt_id, []).append((_ref_key(ref), path))
    return wanted


def _refs_listed_elsewhere(names: list[str], doomed_ids: list[str]) -> set[tuple[str, str]]:
    """The reference keys that records outside ``doomed_ids`` list, among files of these names."""
    kept = set()
    for start in range(0, len(names), 100):
        chunk = names[start:start + 100]
        # A narrow LIKE first (JSON text of either store), then the exact references in Python.
        text = Job.outputs.cast("text")
        matches = [text.contains(name) for name in chunk] + [text.contains(json.dumps(name)[1:-1]) for name in chunk]
        others = (
            Job.select(Job.outputs)
            .where(Job.prompt_id.not_in(doomed_ids) & functools.reduce(operator.or_, matches))
            .tuples()
        )
        for (outputs,) in others:
            kept.update(_ref_key(ref) for ref in outputs or [] if isinstance(ref, dict))
    return kept


def _job_folders_among(wanted: dict[str, list[tuple[tuple, Path]]]) -> set[str]:
    """The job folders (comfyui-studio/<output_dir>) that these references point into and a record owns."""
    studio_folder = files.STUDIO_FOLDER + "/"
    folders = {key[0][len(studio_folder):].split("/")[0] for entries in wanted.values() for key, _ in entries
               if key[0].startswith(studio_folder)}
    if not folders:
        return set()
    return {row[0] for row in Job.select(Job.output_dir).where(Job.output_dir.in_(sorted(folders))).tuples()}


def finish_interrupted_deletes(output_root: Path) -> int:
    """Finish the deletes a killed process (or a permission) left in tombstones; return how many were found.

    A tombstone beside its job's whole folder never got the folder moved in: it is dropped and the job
    stays whole. Otherwise the folder was moved in, so the delete goes on: its records go, then the files
    (what still cannot be removed stays for the next start).
    """
    finished = 0
    studio = Path(output_root) / files.STUDIO_FOLDER
    for _folder, name in files.interrupted_deletes(output_root):
        try:
            with database.atomic():
                ended = (Job.output_dir == name) & Job.status.not_in(ACTIVE_STATUSES)
                remember_deleted([prompt_id for (prompt_id,) in Job.select(Job.prompt_id).where(ended).tuples()])
                Job.delete().where(ended).execute()
        except DatabaseError as error:
            log.warning("could not finish the interrupted delete of %s: %s", name, error)
            continue
        cleared = files.clear_tombstone(studio / name)
        if cleared.pending:
            log.warning("the interrupted delete of %s still has %d files it cannot remove", name, len(cleared.pending))
        finished += 1
    return finished


# ---- import / export ----------------------------------------------------------------------------

RECORD_FIELDS = (
    "prompt_id", "workflow_id", "workflow_name", "status", "queued_at", "started_at", "finished_at",
    "duration", "params", "seeds", "input_image", "output", "outputs", "starred", "bytes", "output_dir", "error",
    "retry_of", "source", "comfyui_server",
)


class InvalidRecord(ValueError):
    """A record that cannot be imported; the message names the field."""


def parse_time(value, name: str) -> datetime.datetime | None:
    """An ISO 8601 timestamp (naive means UTC) as an aware UTC datetime; raise InvalidRecord."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRecord(f"{name} must be an ISO 8601 string")
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRecord(f"{name} is not an ISO 8601 timestamp: {value[:40]!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    return parsed.astimezone(datetime.timezone.utc)


def _check_ref(ref, name: str, output_root: Path | None) -> dict:
    if not isinstance(ref, dict) or not isinstance(ref.get("filename"), str):
        raise InvalidRecord(f"{name} must be an object with a filename")
    if output_root is not None:
        try:
            files.output_file(output_root, ref)
        except files.UnsafePath as error:
            raise InvalidRecord(f"{name}: {error}") from None
    return clean_ref(ref)


def validate_record(record, output_root: Path | None = None) -> dict:
    """Check one record in the API's shape and return the model's field values; raise InvalidRecord."""
    if not isinstance(record, dict):
        raise InvalidRecord("a record must be a JSON object")
    problem = text.find_invalid(record)
    if problem is not None:
        raise InvalidRecord(str(problem))
    unknown = set(record) - set(RECORD_FIELDS)
    if unknown:
        raise InvalidRecord(f"unknown fields: {', '.join(sorted(unknown))}")
    values = _record_identity(record)
    values.update(_record_times(record))
    values.update(_record_inputs(record))
    # Its files are in its ComfyUI server's folder (output_root may be files.OutputRoots).
    root = files.root_of(output_root, values["comfyui_server"]) if output_root is not None else None
    values.update(_record_files(record, root))
    values["starred"] = _record_starred(record)
    values["bytes"] = _record_bytes(record, values, root)
    return values


def _record_identity(record: dict) -> dict:
    """prompt_id, workflow_id, workflow_name and status of a record."""
    prompt_id = record.get("prompt_id")
    if not isinstance(prompt_id, str) or not PROMPT_ID_PATTERN.match(prompt_id):
        raise InvalidRecord("prompt_id must be 1-64 letters, digits, '_', '-', '.' or ':'")
    workflow_id = record.get("workflow_id")
    if not isinstance(workflow_id, str) or not WORKFLOW_ID_PATTERN.match(workflow_id):
        raise InvalidRecord("workflow_id must be a workflow id")
    status = known_status(record.get("status"))
    if status is None:
        raise InvalidRecord(f"status must be one of {', '.join(STATUSES)}")
    name = record.get("workflow_name", "")
    if name is not None and not isinstance(name, str):
        raise InvalidRecord("workflow_name must be a string")
    return {"prompt_id": prompt_id, "workflow_id": workflow_id, "status": status, "workflow_name": name or ""}


def _record_times(record: dict) -> dict:
    """queued_at (required), started_at, finished_at and duration of a record."""
    queued_at = parse_time(record.get("queued_at"), "queued_at")
    if queued_at is None:
        raise InvalidRecord("queued_at is required")
    times = {
        "queued_at": queued_at,
        "started_at": parse_time(record.get("started_at"), "started_at"),
        "finished_at": parse_time(record.get("finished_at"), "finished_at"),
    }
    duration = record.get("duration")
    if duration is not None and (isinstance(duration, bool) or not isinstance(duration, (int, float)) or duration < 0):
        raise InvalidRecord("duration must be a number of seconds")
    times["duration"] = float(duration) if duration is not None else None
    return times


def _is_file_name(name: str) -> bool:
    """Whether ``name`` is a bare file name (no folder, no NUL, not . or ..)."""
    return not any(part in name for part in ("/", "\\", "\x00")) and name not in (".", "..")


def _record_inputs(record: dict) -> dict:
    """params and seeds (objects); input_image, error, retry_of, source and comfyui_server (strings or null)."""
    inputs = {}
    for key in ("params", "seeds"):
        value = {} if record.get(key) is None else record.get(key)
        if not isinstance(value, dict):
            raise InvalidRecord(f"{key} must be an object")
        inputs[key] = value
    for key in ("input_image", "error", "retry_of", "source", "comfyui_server"):
        value = record.get(key)
        if value is not None and not isinstance(value, str):
            raise InvalidRecord(f"{key} must be a string or null")
        inputs[key] = value
    if inputs["input_image"] is not None and not _is_file_name(inputs["input_image"]):
        raise InvalidRecord("input_image must be a file name in the input folder")
    if inputs["retry_of"] is not None and not PROMPT_ID_PATTERN.match(inputs["retry_of"]):
        raise InvalidRecord("retry_of must be a prompt id")
    return inputs


def _record_files(record: dict, output_root: Path | None) -> dict:
    """output_dir, outputs and output of a record, each reference checked (and found safe under ``output_root``)."""
    output_dir = record.get("output_dir")
    if output_dir is not None:
        try:
            files.check_output_dir(output_dir)
        except files.UnsafePath as error:
            raise InvalidRecord(str(error)) from None
    outputs = [] if record.get("outputs") is None else record.get("outputs")
    if not isinstance(outputs, list):
        raise InvalidRecord("outputs must be an array")
    checked = [_check_ref(ref, "outputs[%d]" % index, output_root) for index, ref in enumerate(outputs)]
    output = record.get("output")
    best = _check_ref(output, "output", output_root) if output is not None else best_output(checked)
    return {"output_dir": output_dir, "outputs": checked, "output": best}


def _record_starred(record: dict) -> bool:
    """Whether a record is starred (false when it does not say)."""
    starred = record.get("starred", False)
    if not isinstance(starred, bool):
        raise InvalidRecord("starred must be true or false")
    return starred


def _record_bytes(record: dict, values: dict, output_root: Path | None) -> int | None:
    """The size of a record's files: measured on this disk when they are here, else the size it came with."""
    size = record.get("bytes")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise InvalidRecord("bytes must be a whole number of bytes or null")
    if output_root is not None and values["status"] not in ACTIVE_STATUSES:
        # Measured here, on this disk; a record whose files are not (yet) here keeps the size it came with.
        size = files.job_bytes(output_root, values["output_dir"], values["outputs"]) or size or 0
    return size


@dataclass
class ImportReport:
    """What an import took and refused."""

    created: int = 0
    updated: int = 0
    refused: list[dict] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the CLI."""
        return f"imported {self.created + self.updated} ({self.created} new, {self.updated} updated), refused {len(self.refused)}"


IMPORT_BATCH = 500  # rows per INSERT ... ON CONFLICT (well under SQLite's 32,766 bound parameters)


def import_records(records, output_root: Path | None = None) -> ImportReport:
    """Upsert records in the API's shape by prompt_id, validating each one on its own.

    Only ended jobs are imported: a queued or running record names work that no executor of this store
    holds (it would stay queued, undeletable, until a restart marked it stalled), so it is refused.
    """
    report = ImportReport()
    if not isinstance(records, list):
        raise InvalidRecord("an import must be a JSON array of records")
    accepted: dict[str, dict] = {}
    order: list[str] = []
    for index, record in enumerate(records):
        try:
            values = validate_record(record, output_root)
            if values["status"] in ACTIVE_STATUSES:
                raise InvalidRecord(
                    f"status {values['status']}: only ended jobs ({', '.join(HISTORY_STATUSES)}) are imported; "
                    "export it again once it has ended"
                )
        except InvalidRecord as error:
            ident = record.get("prompt_id") if isinstance(record, dict) else None
            report.refused.append({"index": index, "prompt_id": ident, "error": str(error)})
            continue
        accepted[values["prompt_id"]] = values  # a later record of an id wins, as if written one after the other
        order.append(values["prompt_id"])
    with database.atomic():
        known = _stored_ids(list(accepted))  # for the report only: the upsert itself needs no look first
        for prompt_id in order:
            if prompt_id in known:
                report.updated += 1
            else:
                report.created += 1
                known.add(prompt_id)
        rows = list(accepted.values())
        for start in range(0, len(rows), IMPORT_BATCH):
            _upsert(rows[start:start + IMPORT_BATCH])
    return report


def _stored_ids(prompt_ids: list[str]) -> set[str]:
    """Which of these ids the store holds."""
    stored = set()
    for start in range(0, len(prompt_ids), IMPORT_BATCH):
        chunk = prompt_ids[start:start + IMPORT_BATCH]
        stored.update(prompt_id for (prompt_id,) in Job.select(Job.prompt_id).where(Job.prompt_id.in_(chunk)).tuples())
    return stored


def _upsert(rows: list[dict]) -> None:
    """One INSERT ... ON CONFLICT (prompt_id) DO UPDATE for these records (SQLite and PostgreSQL alike)."""
    if not rows:
        return
    (
        Job.insert_many(rows)
        .on_conflict(conflict_target=[Job.prompt_id], preserve=[f for f in Job._meta.sorted_fields if f is not Job.prompt_id])
        .execute()
    )


def export_records(
    statuses: tuple[str, ...] | None = None, prompt_ids: list[str] | None = None, history_filter: HistoryFilter | None = None
):
    """Every record (optionally of some statuses, these ids, or a filter), newest first, in the API's shape."""
    query = filtered(history_filter) if history_filter is not None else Job.select()
    query = query.order_by(Job.queued_at.desc(), Job.prompt_id.desc())
    if statuses:
        query = query.where(Job.status.in_(statuses))
    if prompt_ids is not None:
        query = query.where(Job.prompt_id.in_(job_ids(prompt_ids)))
    for job in query.iterator():
        yield job.to_dict()


# ---- stars and bulk actions over a filter ---------------------------------------------------------

def star_jobs(prompt_ids: list[str], starred: bool) -> tuple[list[str], list[str]]:
    """Star or unstar jobs; return (updated, not_found) in the order of the ids."""
    ids = fold_ids(prompt_ids)
    found: set[str] = set()
    with database.atomic():
        for start in range(0, len(ids), DELETE_BATCH):
            chunk = ids[start:start + DELETE_BATCH]
            found.update(row[0] for row in Job.select(Job.prompt_id).where(Job.prompt_id.in_(chunk)).tuples())
            Job.update(starred=bool(starred)).where(Job.prompt_id.in_(chunk)).execute()
    return [prompt_id for prompt_id in ids if prompt_id in found], [prompt_id for prompt_id in ids if prompt_id not in found]


# The largest count a person can have seen (a form's expect is at most 9 digits too): a bigger one is refused,
# never handed to the store as a LIMIT it cannot hold.
MAX_EXPECT = 999_999_999


class CountChanged(Exception):
    """A bulk action's filter no longer matches the number of jobs the person confirmed."""

    def __init__(self, count: int, expect: int):
        super().__init__(f"the filter now matches {count} jobs, not {expect}; nothing was changed")
        self.count = count
        self.expect = expect


def removable(history_filter: HistoryFilter, include_starred: bool = False):
    """The jobs a delete over a filter takes: ended ones, starred ones only when asked."""
    status, starred = (unindexed(Job.status), unindexed(Job.starred)) if search_leads(history_filter) else (Job.status, Job.starred)
    query = filtered(history_filter, paged=False).where(status.not_in(ACTIVE_STATUSES))
    if not include_starred:
        query = query.where(starred == False)  # noqa: E712 (a SQL comparison, not a Python one)
    return query


def retryable(history_filter: HistoryFilter):
    """The jobs a retry over a filter takes: its error and stalled ones."""
    statuses = tuple(status for status in history_filter.statuses if status in RETRYABLE_STATUSES)
    return filtered(history_filter.replace(statuses=statuses), paged=False)  # none of them: matches nothing


def matching_ids(query, expect: int | None) -> list[str]:
    """The ids a bulk query matches now, newest first; raise CountChanged when they are not ``expect``."""
    query = query.select(Job.prompt_id).tuples()
    # Read one more than expected, not every match: the exact number is counted only to say it changed.
    ids = [row[0] for row in (query if expect is None else query.limit(expect + 1))]
    if expect is not None and len(ids) != expect:
        raise CountChanged(len(ids) if len(ids) < expect else query.order_by().count(), expect)
    return ids


def removal_usage(history_filter: HistoryFilter, include_starred: bool = False) -> dict:
    """What a delete over a filter would take, from the store (no disk walk): jobs, bytes, and its stars.

    All matches less the starred ones: the first sum reads the (status, queued_at, bytes) index when the
    filter is statuses and times, the second only the few starred jobs (by their index).
    """
    def count_and_bytes(query) -> tuple[int, int]:
        count, size = query.select(fn.COUNT(SQL("*")), fn.SUM(Job.bytes)).order_by().tuples().get()
        return count, int(size or 0)

    ended = (unindexed(Job.status) if search_leads(history_filter) else Job.status).not_in(ACTIVE_STATUSES)
    total = count_and_bytes(filtered(history_filter, paged=False).where(ended))
    starred = (0, 0) if history_filter.starred is False else count_and_bytes(
        filtered(history_filter.replace(starred=True), paged=False).where(ended)
    )
    taken = total if include_starred else (total[0] - starred[0], total[1] - starred[1])
    return {"jobs": taken[0], "bytes": taken[1], "starred": starred[0], "include_starred": include_starred}


def delete_matching(
    history_filter: HistoryFilter, output_root: Path, expect: int | None = None, include_starred: bool = False
) -> DeleteReport:
    """Delete what a filter matches now, if that is ``expect`` jobs (else CountChanged and nothing changes)."""
    ids = matching_ids(removable(history_filter, include_starred), expect)
    return delete_jobs(ids, output_root, keep_starred=not include_starred)


# ---- failures grouped by cause --------------------------------------------------------------------

# What varies between two reports of one failure: ids, paths, numbers. Replaced in this order.
CAUSE_NOISE = (
    (re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"), "<id>"),
    (re.compile(r"\b(?=[0-9a-fA-F]*[0-9])(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{8,}\b"), "<id>"),
    (re.compile(r"(?:[A-Za-z]:)?[\w.~-]*(?:[\\/][\w.~-]+)+[\\/]?"), "<path>"),
    (re.compile(r"\d+(?:[.,]\d+)*"), "N"),
    (re.compile(r"\s+"), " "),
)
NODE_PATTERN = re.compile(r"^node (?P<node>.+?) \(#[^)]*\): (?:(?P<exception>[A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit|Warning|Fault)):)?")
NO_MESSAGE = "(no message)"


def failure_cause(message: str | None) -> str:
    """The cause of a failure: its message with numbers, paths and ids normalised away."""
    text = (message or "").strip() or NO_MESSAGE
    for pattern, replacement in CAUSE_NOISE:
        text = pattern.sub(replacement, text)
    return text.strip()[:500]


def cause_id(cause: str) -> str:
    """A short stable id for a cause, for URLs and forms."""
    return hashlib.blake2b(cause.encode(), digest_size=6).hexdigest()


def cause_messages(cause: str) -> list[str]:
    """Every stored error message of failed and stalled jobs that has this cause id."""
    rows = (
        Job.select(Job.error)
        .where(Job.status.in_(RETRYABLE_STATUSES))
        .distinct()
        .tuples()
    )
    return [message for (message,) in rows if message is not None and cause_id(failure_cause(message)) == cause]


@dataclass
class FailureGroup:
    """Failed and stalled jobs of one cause: how many, when, which workflows."""

    cause: str
    text: str
    node: str | None
    exception: str | None
    example: str
    count: int = 0
    newest: datetime.datetime | None = None
    oldest: datetime.datetime | None = None
    workflows: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)

    @property
    def history_filter(self) -> HistoryFilter:
        """The filter that lists this group's jobs."""
        return HistoryFilter(statuses=RETRYABLE_STATUSES, cause=self.cause)

    def to_dict(self) -> dict:
        """The group in the API's shape."""
        return {
            "cause": self.cause, "text": self.text, "node": self.node, "exception": self.exception,
            "example": self.example, "count": self.count, "newest": iso(self.newest), "oldest": iso(self.oldest),
            "workflows": self.workflows, "statuses": self.statuses,
        }


def failure_groups() -> list[FailureGroup]:
    """Failed and stalled jobs grouped by cause, the largest group first.

    One grouped query by exact message (the store does the counting); messages that differ only in
    numbers, paths or ids then fold into one cause here.
    """
    rows = (
        Job.select(
            Job.error, Job.workflow_id, Job.status, fn.COUNT(SQL("*")),
            fn.MIN(Job.queued_at), fn.MAX(Job.queued_at),
        )
        .where(Job.status.in_(RETRYABLE_STATUSES))
        .group_by(Job.error, Job.workflow_id, Job.status)
        .tuples()
    )
    groups: dict[str, FailureGroup] = {}
    for message, workflow_id, status, count, oldest, newest in rows:
        oldest, newest = Job.queued_at.python_value(oldest), Job.queued_at.python_value(newest)
        text = failure_cause(message)
        key = cause_id(text)
        group = groups.get(key)
        if group is None:
            parsed = NODE_PATTERN.match(message or "")
            group = groups[key] = FailureGroup(
                key, text, parsed and parsed["node"], parsed and parsed["exception"], message or NO_MESSAGE,
            )
        group.count += count
        group.workflows[workflow_id] = group.workflows.get(workflow_id, 0) + count
        group.statuses[status] = group.statuses.get(status, 0) + count
        if group.newest is None or newest > group.newest:
            group.newest, group.example = newest, message or NO_MESSAGE
        if group.oldest is None or oldest < group.oldest:
            group.oldest = oldest
    return sorted(groups.values(), key=lambda group: (-group.count, -group.newest.timestamp()))


# ---- storage at a glance --------------------------------------------------------------------------

STATS_DAYS = 30


def storage_stats(now: datetime.datetime | None = None, days: int = STATS_DAYS) -> dict:
    """Counts and bytes by status, by workflow and by day (the last ``days`` UTC days), and the oldest job.

    Bytes are the ones each record keeps (measured when it ended or was imported): sums over the store,
    never a walk of the disk. Read from the tallies the store keeps by day, status and workflow
    (history/tallies.py: a few thousand rows at a million jobs), and one probe of the queued_at index.
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    by_status: dict[str, dict] = {}
    by_workflow: dict[str, dict] = {}
    total = {"jobs": 0, "bytes": 0}
    unmeasured = 0
    for status, workflow_id, count, size, measured in _tallied((JobTally.status, JobTally.workflow_id), (fn.SUM(JobTally.measured),)):
        if status not in ACTIVE_STATUSES:
            unmeasured += count - int(measured)
        for bucket, key, label in ((by_status, status, "status"), (by_workflow, workflow_id, "workflow_id")):
            entry = bucket.setdefault(key, {label: key, "jobs": 0, "bytes": 0})
            entry["jobs"] += count
            entry["bytes"] += size
        total["jobs"] += count
        total["bytes"] += size
    names = dict(workflow_choices()) if by_workflow else {}
    for workflow_id, entry in by_workflow.items():
        entry["workflow_name"] = names.get(workflow_id, workflow_id)
    first_day = (now.astimezone(datetime.timezone.utc) - datetime.timedelta(days=days - 1)).date()
    by_day = {
        (first_day + datetime.timedelta(days=offset)).isoformat(): {
            "day": (first_day + datetime.timedelta(days=offset)).isoformat(), "jobs": {}, "bytes": 0,
        }
        for offset in range(days)
    }
    for stamp, status, count, size in _tallied((JobTally.day, JobTally.status), where=JobTally.day >= first_day):
        entry = by_day.get(str(stamp)[:10])
        if entry is not None:
            entry["jobs"][status] = entry["jobs"].get(status, 0) + count
            entry["bytes"] += size
    oldest = Job.select(Job.prompt_id, Job.queued_at).order_by(Job.queued_at, Job.prompt_id).first()
    return {
        "total": {**total, "unmeasured": unmeasured},
        "by_status": sorted(by_status.values(), key=lambda entry: STATUSES.index(entry["status"]) if entry["status"] in STATUSES else 99),
        "by_workflow": sorted(by_workflow.values(), key=lambda entry: (-entry["bytes"], -entry["jobs"], entry["workflow_id"])),
        "by_day": list(by_day.values()),
        "oldest": {"prompt_id": oldest.prompt_id, "queued_at": iso(oldest.queued_at)} if oldest else None,
    }


def _tallied(keys: tuple, extra: tuple = (), where=None) -> list[tuple]:
    """(keys..., jobs, bytes, extra...) of the tallies grouped by ``keys``; groups that hold no job are left out."""
    query = (
        JobTally.select(*keys, fn.SUM(JobTally.jobs), fn.SUM(JobTally.bytes), *extra)
        .group_by(*keys)
        .having(fn.SUM(JobTally.jobs) > 0)
        .tuples()
    )
    if where is not None:
        query = query.where(where)
    width = len(keys)
    return [(*row[:width], int(row[width]), int(row[width + 1] or 0), *row[width + 2:]) for row in query]


def count_by_status() -> dict[str, int]:
    """How many jobs the store holds in each status (for /metrics)."""
    return {status: count for status, count, _size in _tallied((JobTally.status,))}


# ---- prompts other clients queued on ComfyUI ------------------------------------------------------

def unknown_ids(prompt_ids: list[str]) -> list[str]:
    """The ids (in the order given) that no record has."""
    ids = [prompt_id for prompt_id in dict.fromkeys(prompt_ids) if isinstance(prompt_id, str) and PROMPT_ID_PATTERN.match(prompt_id)]
    known = set()
    with connection():
        for start in range(0, len(ids), DELETE_BATCH):
            known.update(Job.select(Job.prompt_id).where(Job.prompt_id.in_(ids[start:start + DELETE_BATCH])).tuples())
        known = {row[0] for row in known}
        for start in range(0, len(ids), DELETE_BATCH):
            chunk = ids[start:start + DELETE_BATCH]
            known.update(row[0] for row in JobDeleted.select(JobDeleted.prompt_id).where(JobDeleted.prompt_id.in_(chunk)).tuples())
    return [prompt_id for prompt_id in ids if prompt_id not in known]


def _observed_values(record: dict, output_root) -> tuple[dict, dict]:
    """The job's and its graph's field values of an observed ComfyUI prompt; raise InvalidRecord.

    ``output_root`` (a folder or files.OutputRoots, or None not to check the files) resolves its outputs
    in the folder of the server it ran on.
    """
    prompt_id = record.get("prompt_id")
    if not isinstance(prompt_id, str) or not PROMPT_ID_PATTERN.match(prompt_id):
        raise InvalidRecord("prompt_id must be 1-64 letters, digits, '_', '-', '.' or ':'")
    output_root = files.root_of(output_root, record.get("comfyui_server")) if output_root is not None else None
    outputs = [_check_ref(ref, "outputs[%d]" % index, output_root) for index, ref in enumerate(record.get("outputs") or [])]
    started_at, finished_at = record.get("started_at"), record.get("finished_at")
    values = {
        "prompt_id": prompt_id,
        "workflow_id": record["workflow_id"],
        "workflow_name": str(record.get("workflow_name") or "")[:200],
        "queued_at": record.get("queued_at") or started_at or finished_at or datetime.datetime.now(datetime.timezone.utc),
        "started_at": started_at,
        "finished_at": finished_at,
        "duration": max(0.0, (finished_at - started_at).total_seconds()) if started_at and finished_at else None,
        "params": record.get("params") or {},
        "seeds": record.get("seeds") or {},
        "outputs": outputs,
        "output": best_output(outputs),
        "output_dir": None,
        "error": record.get("error"),
        "source": record.get("source"),
        "comfyui_server": record.get("comfyui_server"),
    }
    graph = {"prompt_id": prompt_id, "graph": record.get("graph"), "ui_workflow": record.get("ui_workflow")}
    return values, graph


def insert_observed(record: dict, status: str, owner: str | None = None) -> Job | None:
    """Record a prompt another client queued (queued or running), held by ``owner`` (the worker that follows
    it), unless a record has its id; None then."""
    try:
        values, graph = _observed_values(record, None)
    except InvalidRecord as error:
        log.warning("not recording ComfyUI prompt %r: %s", record.get("prompt_id"), error)
        return None
    values["status"] = status
    values["owner"] = owner
    if status == "running":
        values["started_at"] = values["started_at"] or values["queued_at"]
    with connection(), database.atomic():
        if Job.select().where(Job.prompt_id == values["prompt_id"]).exists():
            return None
        Job.insert(**values).execute()
        save_graph(**graph)
        return Job.get_by_id(values["prompt_id"])


def insert_finished(records: list[dict], output_root) -> tuple[list[Job], list[dict]]:
    """Store finished prompts of other clients that no record has; answer (the jobs made, the refused).

    One transaction per call (a page of ComfyUI's history), rows inserted together: an import of
    thousands of entries takes seconds, not minutes.
    """
    prepared, refused = [], []
    for record in records:
        try:
            values, graph = _observed_values(record, output_root)
            status = known_status(record.get("status"))
            if status not in HISTORY_STATUSES:
                raise InvalidRecord(f"status {record.get('status')!r} is not an end")
        except InvalidRecord as error:
            refused.append({"prompt_id": record.get("prompt_id"), "error": str(error)})
            continue
        values["status"] = status
        # Measured once, as it is taken, like a job that ends here.
        values["bytes"] = files.job_bytes(files.root_of(output_root, values["comfyui_server"]), None, values["outputs"])
        prepared.append((values, graph))
    if not prepared:
        return [], refused
    ids = [values["prompt_id"] for values, _ in prepared]
    with connection(), database.atomic():
        existing = {prompt_id for (prompt_id,) in Job.select(Job.prompt_id).where(Job.prompt_id.in_(ids)).tuples()}
        fresh = list({values["prompt_id"]: (values, graph) for values, graph in prepared if values["prompt_id"] not in existing}.values())
        for start in range(0, len(fresh), 100):
            chunk = fresh[start:start + 100]
            Job.insert_many([values for values, _ in chunk]).execute()
            JobGraph.delete().where(JobGraph.prompt_id.in_([graph["prompt_id"] for _, graph in chunk])).execute()
            JobGraph.insert_many([graph for _, graph in chunk]).execute()
    return [Job(starred=False, **values) for values, _ in fresh], refused


def remember_deleted(prompt_ids: list[str]) -> None:
    """Note deleted ids (inside the caller's transaction) so that ComfyUI's history never brings them back."""
    now = datetime.datetime.now(datetime.timezone.utc)
    for start in range(0, len(prompt_ids), DELETE_BATCH):
        rows = [{"prompt_id": prompt_id, "deleted_at": now} for prompt_id in prompt_ids[start:start + DELETE_BATCH]]
        if rows:
            JobDeleted.insert_many(rows).on_conflict_ignore().execute()


def save_graph(prompt_id: str, graph: dict | None, ui_workflow: dict | None = None) -> None:
    """Keep a job's API-format graph (and UI workflow) for prompt.json, workflow.json and Retry."""
    with connection(), database.atomic():
        (
            JobGraph.insert(prompt_id=prompt_id, graph=graph, ui_workflow=ui_workflow)
            .on_conflict(conflict_target=[JobGraph.prompt_id], update={JobGraph.graph: graph, JobGraph.ui_workflow: ui_workflow})
            .execute()
        )


def graph_of(prompt_id: str) -> JobGraph | None:
    """A job's kept graph and UI workflow, or None (jobs recorded before graphs were kept)."""
    if not isinstance(prompt_id, str) or not PROMPT_ID_PATTERN.match(prompt_id):
        return None
    with connection():
        return JobGraph.get_or_none(JobGraph.prompt_id == prompt_id)
