"""Queries and writes on jobs: the history page (keyset), one job, the list's ETag, delete, import/export.

Views pick, paginate and render; this module owns every query, so the HTML and the JSON of a page are
two renderings of one result. No Flask import.
"""
from __future__ import annotations

import datetime
import hashlib
import logging
import re
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path


from peewee import SQL
from peewee import fn

from history import files
from history import search
from history.db import database
from history.db import is_sqlite
from history.models import ACTIVE_STATUSES
from history.models import COMPLETED
from history.models import HISTORY_STATUSES
from history.models import known_status
from history.models import STATUSES
from history.models import Job
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
    """What narrows the history list: statuses, a workflow, a text search."""

    statuses: tuple[str, ...] = HISTORY_STATUSES
    workflow_id: str | None = None
    q: str | None = None

    @classmethod
    def parse(cls, statuses=None, workflow_id=None, q=None) -> "HistoryFilter":
        """Validate raw query values (lists of strings) into a filter; raise InvalidQuery."""
        chosen = []
        for raw in statuses or []:
            for given in str(raw).split(","):
                given = given.strip()
                if not given:
                    continue
                status = known_status(given)
                if status is None:
                    raise InvalidQuery(f"unknown status {given!r}; use one of {', '.join(STATUSES)}")
                if status not in chosen:
                    chosen.append(status)
        if workflow_id in ("", None):
            workflow_id = None
        elif not WORKFLOW_ID_PATTERN.match(workflow_id):
            raise InvalidQuery(f"workflow_id {workflow_id!r} is not a workflow id")
        q = (q or "").strip() or None
        if q is not None and len(q) > MAX_QUERY_LENGTH:
            raise InvalidQuery(f"q is longer than {MAX_QUERY_LENGTH} characters")
        if q is not None and "\x00" in q:
            raise InvalidQuery("q contains a NUL byte")
        return cls(tuple(sorted(chosen, key=STATUSES.index)) or HISTORY_STATUSES, workflow_id, q)

    def query_args(self) -> dict:
        """The filter as query-string arguments (defaults left out)."""
        args = {}
        if self.statuses != HISTORY_STATUSES:
            args["status"] = list(self.statuses)
        if self.workflow_id:
            args["workflow_id"] = self.workflow_id
        if self.q:
            args["q"] = self.q
        return args

    @property
    def is_default(self) -> bool:
        """Whether nothing narrows the list."""
        return not self.query_args()


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


def filtered(history_filter: HistoryFilter, search_text: bool = True):
    """Jobs matching a filter (its search too, unless ``search_text`` is false), newest first (ties broken by prompt_id), as a chainable query."""
    status = Job.status
    if len(history_filter.statuses) > 1 and COMPLETED in history_filter.statuses:
        # With several statuses, completed among them, an index on status would find most of the store and
        # sort it (time grows with the store); status || '' keeps the planner on the (queued_at, prompt_id)
        # index, read newest first until the page is full: constant time, since most jobs match. A filter of
        # rarer statuses (error, stalled) keeps the status index, which reads only those.
        status = Job.status.concat("")
    query = Job.select().where(status.in_(history_filter.statuses))
    if history_filter.workflow_id:
        query = query.where(Job.workflow_id == history_filter.workflow_id)
    if history_filter.q and search_text:
        query = query.where(text_matches(history_filter.q))
    return query.order_by(Job.queued_at.desc(), Job.prompt_id.desc())


# A search first reads the newest jobs of its filter one by one: a common word fills the page from them
# without asking the index for its every match (100,000s at a million jobs); a rare one then takes the index.
SEARCH_PROBE_ROWS = 2000


def page_rows(history_filter: HistoryFilter, limit: int, before: str | None, since: str | None, *columns) -> list:
    """The first ``limit + 1`` jobs (or ``columns`` tuples) of a filter's window, newest first."""
    query = window(filtered(history_filter, search_text=False), before, since)
    if columns:
        query = query.select(*columns).tuples()
    needle = history_filter.q
    if not needle:
        return list(query.limit(limit + 1))
    recent = _recent_matches(needle)
    if recent is not None:
        cutoff = query.select(Job.queued_at).tuples().limit(1).offset(SEARCH_PROBE_ROWS).scalar()
        probe = query.where(recent)
        if cutoff is not None:
            probe = probe.where(Job.queued_at >= cutoff)
        rows = list(probe.limit(limit + 1))
        # Every job older than the cutoff is older than each of these, so they are the window's newest matches.
        if cutoff is None or len(rows) > limit:
            return rows
    return list(query.where(text_matches(needle)).limit(limit + 1))


def text_matches(needle: str):
    """Jobs whose workflow name, prompt id, prompts or scene prompts contain ``needle`` (any case), by the search index."""
    if not search.uses_index(needle):
        return _document_like(needle)
    if is_sqlite():
        return SQL("rowid IN (SELECT rowid FROM job_search WHERE job_search MATCH ?)", [search.fts_phrase(needle)])
    # contains() is ILIKE with % and _ escaped; the pg_trgm index is on exactly this expression.
    return _search_text().contains(needle)


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


def history_page(
    history_filter: HistoryFilter, limit: int = DEFAULT_LIMIT, before: str | None = None, since: str | None = None
) -> Page:
    """Fetch one page of the history list (keyset paging: no OFFSET, no COUNT); ``since`` keeps jobs at or above a cursor."""
    jobs = page_rows(history_filter, limit, before, since)
    next_cursor = encode_cursor(jobs[limit - 1]) if len(jobs) > limit else None
    etag = _etag((history_filter, limit, before, since), ((job.prompt_id, job.status) for job in jobs))
    return Page(jobs[:limit], next_cursor, history_filter, etag)


def list_etag(history_filter: HistoryFilter, limit: int, before: str | None = None, since: str | None = None) -> str:
    """The ETag of a shown page: its ordered (prompt_id, status) pairs, whether more follow, and the filter.

    One narrow query over the index that serves the list, and no template rendering; a status change of
    a listed job changes it as surely as a new job does. Equal to the ``etag`` of the same history_page.
    """
    pairs = page_rows(history_filter, limit, before, since, Job.prompt_id, Job.status)
    return _etag((history_filter, limit, before, since), pairs)


def _etag(request: tuple, pairs) -> str:
    """A digest of what a list request asked for and the (prompt_id, status) rows it found."""
    digest = hashlib.blake2b(digest_size=12)
    digest.update(repr(request).encode())
    for prompt_id, status in pairs:
        digest.update(f"{prompt_id}\x1f{status}\x1e".encode())
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
    return Job.select().where(Job.retry_of == prompt_id).order_by(Job.queued_at.desc())


# ---- delete -------------------------------------------------------------------------------------

@dataclass
class DeleteReport:
    """What a batch delete did, in the API's shape."""

    deleted: list[str] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    files_removed: int = 0
    bytes_freed: int = 0
    deleted_jobs: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        """The report as the API answers it."""
        return {
            "deleted": self.deleted,
            "not_found": self.not_found,
            "failed": self.failed,
            "files_removed": self.files_removed,
            "bytes_freed": self.bytes_freed,
        }


def fold_ids(prompt_ids: list[str]) -> list[str]:
    """Drop repeated ids, keeping the first occurrence's order."""
    return list(dict.fromkeys(prompt_ids))


def delete_usage(prompt_ids: list[str], output_root: Path) -> dict:
    """Count the jobs, files and bytes a delete of these ids would remove (for the confirm dialog)."""
    jobs = list(Job.select().where(Job.prompt_id.in_(fold_ids(prompt_ids))))
    usage = {"jobs": 0, "files": 0, "bytes": 0}
    for job in jobs:
        if job.status in ACTIVE_STATUSES:
            continue
        usage["jobs"] += 1
        if job.output_dir:
            try:
                count, size = files.folder_usage(files.job_folder(output_root, job.output_dir))
            except files.UnsafePath:
                continue
            usage["files"] += count
            usage["bytes"] += size
    return usage


def delete_jobs(prompt_ids: list[str], output_root: Path) -> DeleteReport:
    """Delete jobs and their output folders: the files first, the record only once they are gone.

    A job whose folder cannot be removed keeps its record and is reported in ``failed`` with the reason;
    queued and running jobs are refused. Another job's record that names the same folder keeps it.
    A process killed mid-way leaves each job whole or in its tombstone (files.remove_folder), and a later
    delete of the same id, or finish_interrupted_deletes at start-up, completes it.
    """
    report = DeleteReport()
    for prompt_id in fold_ids(prompt_ids):
        job = get_job(prompt_id)
        if job is None:
            report.not_found.append(prompt_id)
            continue
        if job.status in ACTIVE_STATUSES:
            report.failed.append({"prompt_id": prompt_id, "error": f"job is {job.status}; wait until it ends", "status": 409})
            continue

        def remove_record(prompt_id=prompt_id):
            with database.atomic():
                Job.delete().where(Job.prompt_id == prompt_id).execute()

        try:
            if job.output_dir and not _folder_shared(job):
                folder = files.job_folder(output_root, job.output_dir)
                count, size = files.remove_folder(folder, then=remove_record)
                report.files_removed += count
                report.bytes_freed += size
            else:
                remove_record()
        except files.UnsafePath as error:
            report.failed.append({"prompt_id": prompt_id, "error": f"refused: {error}", "status": 400})
            continue
        except OSError as error:
            log.warning("could not delete files of %s: %s", prompt_id, error)
            report.failed.append({"prompt_id": prompt_id, "error": f"could not delete its files: {error.strerror or error}", "status": 500})
            continue
        report.deleted.append(prompt_id)
        report.deleted_jobs.append(job.to_dict())
    return report


def finish_interrupted_deletes(output_root: Path) -> int:
    """Finish the deletes a killed process left in tombstones; return how many jobs' deletes were finished.

    A tombstone beside its job's folder never got the folder moved in: it is dropped and the job stays whole.
    Otherwise the folder is (partly) removed already, so its records go and the tombstone after them.
    """
    finished = 0
    for folder, name in files.interrupted_deletes(output_root):

        def remove_records(name=name):
            with database.atomic():
                Job.delete().where((Job.output_dir == name) & Job.status.not_in(ACTIVE_STATUSES)).execute()

        try:
            files.remove_folder(folder, then=remove_records)
        except (OSError, files.UnsafePath) as error:
            log.warning("could not finish the interrupted delete of %s: %s", name, error)
            continue
        finished += 1
    return finished


def _folder_shared(job: Job) -> bool:
    """Whether another record names the same output folder (imports can make that happen)."""
    return (
        Job.select(Job.prompt_id)
        .where((Job.output_dir == job.output_dir) & (Job.prompt_id != job.prompt_id))
        .exists()
    )


# ---- import / export ----------------------------------------------------------------------------

RECORD_FIELDS = (
    "prompt_id", "workflow_id", "workflow_name", "status", "queued_at", "started_at", "finished_at",
    "duration", "params", "seeds", "input_image", "output", "outputs", "output_dir", "error", "retry_of",
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
    unknown = set(record) - set(RECORD_FIELDS)
    if unknown:
        raise InvalidRecord(f"unknown fields: {', '.join(sorted(unknown))}")
    prompt_id = record.get("prompt_id")
    if not isinstance(prompt_id, str) or not PROMPT_ID_PATTERN.match(prompt_id):
        raise InvalidRecord("prompt_id must be 1-64 letters, digits, '_', '-', '.' or ':'")
    workflow_id = record.get("workflow_id")
    if not isinstance(workflow_id, str) or not WORKFLOW_ID_PATTERN.match(workflow_id):
        raise InvalidRecord("workflow_id must be a workflow id")
    status = known_status(record.get("status"))
    if status is None:
        raise InvalidRecord(f"status must be one of {', '.join(STATUSES)}")
    values = {"prompt_id": prompt_id, "workflow_id": workflow_id, "status": status}
    name = record.get("workflow_name", "")
    if name is not None and not isinstance(name, str):
        raise InvalidRecord("workflow_name must be a string")
    values["workflow_name"] = name or ""
    values["queued_at"] = parse_time(record.get("queued_at"), "queued_at")
    if values["queued_at"] is None:
        raise InvalidRecord("queued_at is required")
    values["started_at"] = parse_time(record.get("started_at"), "started_at")
    values["finished_at"] = parse_time(record.get("finished_at"), "finished_at")
    duration = record.get("duration")
    if duration is not None and (isinstance(duration, bool) or not isinstance(duration, (int, float)) or duration < 0):
        raise InvalidRecord("duration must be a number of seconds")
    values["duration"] = float(duration) if duration is not None else None
    for key in ("params", "seeds"):
        value = record.get(key)
        value = {} if value is None else value
        if not isinstance(value, dict):
            raise InvalidRecord(f"{key} must be an object")
        values[key] = value
    for key in ("input_image", "error", "retry_of"):
        value = record.get(key)
        if value is not None and not isinstance(value, str):
            raise InvalidRecord(f"{key} must be a string or null")
        values[key] = value
    if values["input_image"] is not None:
        if "/" in values["input_image"] or "\x00" in values["input_image"] or "\\" in values["input_image"] or values["input_image"] in (".", ".."):
            raise InvalidRecord("input_image must be a file name in the input folder")
    if values["retry_of"] is not None and not PROMPT_ID_PATTERN.match(values["retry_of"]):
        raise InvalidRecord("retry_of must be a prompt id")
    output_dir = record.get("output_dir")
    if output_dir is not None:
        try:
            files.check_output_dir(output_dir)
        except files.UnsafePath as error:
            raise InvalidRecord(str(error)) from None
    values["output_dir"] = output_dir
    outputs = record.get("outputs")
    outputs = [] if outputs is None else outputs
    if not isinstance(outputs, list):
        raise InvalidRecord("outputs must be an array")
    values["outputs"] = [_check_ref(ref, "outputs[%d]" % index, output_root) for index, ref in enumerate(outputs)]
    output = record.get("output")
    values["output"] = _check_ref(output, "output", output_root) if output is not None else best_output(values["outputs"])
    return values


@dataclass
class ImportReport:
    """What an import took and refused."""

    created: int = 0
    updated: int = 0
    refused: list[dict] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the CLI."""
        return f"imported {self.created + self.updated} ({self.created} new, {self.updated} updated), refused {len(self.refused)}"


def import_records(records, output_root: Path | None = None) -> ImportReport:
    """Upsert records in the API's shape by prompt_id, validating each one on its own."""
    report = ImportReport()
    if not isinstance(records, list):
        raise InvalidRecord("an import must be a JSON array of records")
    for index, record in enumerate(records):
        try:
            values = validate_record(record, output_root)
        except InvalidRecord as error:
            ident = record.get("prompt_id") if isinstance(record, dict) else None
            report.refused.append({"index": index, "prompt_id": ident, "error": str(error)})
            continue
        with database.atomic():
            exists = Job.select().where(Job.prompt_id == values["prompt_id"]).exists()
            if exists:
                Job.update(**values).where(Job.prompt_id == values["prompt_id"]).execute()
                report.updated += 1
            else:
                Job.insert(**values).execute()
                report.created += 1
    return report


def export_records(statuses: tuple[str, ...] | None = None, prompt_ids: list[str] | None = None):
    """Every record (optionally of some statuses, or of these ids), newest first, in the API's shape."""
    query = Job.select().order_by(Job.queued_at.desc(), Job.prompt_id.desc())
    if statuses:
        query = query.where(Job.status.in_(statuses))
    if prompt_ids is not None:
        query = query.where(Job.prompt_id.in_(prompt_ids))
    for job in query.iterator():
        yield job.to_dict()
