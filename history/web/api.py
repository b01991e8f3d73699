"""The JSON API: the original studio's contract, kept."""
from __future__ import annotations

import datetime
import functools
import json
import zipfile
from dataclasses import dataclass

from flask import Blueprint
from flask import Response
from flask import abort
from flask import current_app
from flask import jsonify
from flask import make_response
from flask import request
from flask import stream_with_context
from flask import url_for
from werkzeug.datastructures import MultiDict

from history import files
from history import jobs
from history import openapi
from history import text
from history.executors.base import ExecutorRejected
from history.executors.base import ExecutorUnavailable
from history.executors.comfyui_graph import COMFYUI_WORKFLOW_ID
from history.studio import UnknownWorkflow
from history.studio import studio
from history.workflows import MAX_UPLOAD_BYTES
from history.workflows import ValidationError
from history.workflows import check_upload

bp = Blueprint("api", __name__)


def json_error(message: str, status: int, **extra):
    """A JSON error answer."""
    response = jsonify(error=message, **extra)
    response.status_code = status
    return response


def parse_limit(raw: str | None, default: int) -> int:
    """The ``limit`` query value: an integer from 1 to MAX_LIMIT; raise InvalidQuery."""
    if raw in (None, ""):
        return default
    limit = text.whole_number(raw)
    if limit is None or not 1 <= limit <= jobs.MAX_LIMIT:
        raise jobs.InvalidQuery(f"limit must be a whole number from 1 to {jobs.MAX_LIMIT}")
    return limit


def page_from_request(default_limit: int = jobs.DEFAULT_LIMIT) -> jobs.Page:
    """Read filters, limit and cursor from the query string and fetch that page; abort 400 when invalid."""
    args = request.args
    try:
        history_filter = jobs.HistoryFilter.from_args(args)
        limit = parse_limit(args.get("limit"), default_limit)
        return jobs.history_page(history_filter, limit, args.get("before") or None)
    except jobs.InvalidQuery as error:
        abort(400, str(error))


def get_job_or_404(prompt_id: str):
    """Return the job, or abort with a 404 that says which id is unknown (cut to 64 characters)."""
    job = jobs.get_job(prompt_id)
    if job is None:
        abort(404, f"no job with prompt_id {prompt_id[:64]!r}")
    return job


@bp.get("/api/openapi.json")
def openapi_document():
    """Describe every /api/ route as OpenAPI 3.1 (history/openapi.py)."""
    settings = current_app.config["STUDIO"]
    return jsonify(openapi.document(settings.url_prefix, login_required=bool(settings.admin_password)))


@bp.get("/api/admin/history")
def history_list():
    """List past jobs, newest first, with a Link header to the next page."""
    page = page_from_request()
    response = jsonify([job.to_dict() for job in page.jobs])
    if page.next_cursor:
        args = {**page.history_filter.query_args(), "before": page.next_cursor}
        if request.args.get("limit"):
            args["limit"] = request.args["limit"]
        response.headers["Link"] = f'<{url_for("api.history_list", _external=False, **args)}>; rel="next"'
    return response


@bp.get("/api/admin/history/<prompt_id>")
def history_detail(prompt_id: str):
    """Return one job's record."""
    return jsonify(get_job_or_404(prompt_id).to_dict())


def read_prompt_ids(payload) -> list[str]:
    """The ``prompt_ids`` list of a delete request; abort 400/413 when it is not a list of strings."""
    if not isinstance(payload, dict) or "prompt_ids" not in payload:
        abort(400, 'body must be a JSON object {"prompt_ids": [...]}')
    prompt_ids = payload["prompt_ids"]
    if not isinstance(prompt_ids, list) or not all(isinstance(item, str) for item in prompt_ids):
        abort(400, "prompt_ids must be a list of strings")
    if len(prompt_ids) > jobs.MAX_DELETE_IDS:
        abort(413, f"at most {jobs.MAX_DELETE_IDS} prompt_ids per request")
    if any(len(item) > 256 for item in prompt_ids):
        abort(400, "a prompt_id is longer than 256 characters")
    if any("\x00" in item for item in prompt_ids):
        abort(400, "a prompt_id contains a NUL byte")  # PostgreSQL text cannot hold one: no job has it
    return jobs.fold_ids(prompt_ids)


@dataclass(frozen=True)
class Bulk:
    """A bulk action over a filter: what it matches, how many the person saw, whether stars go too."""

    history_filter: jobs.HistoryFilter
    expect: int | None
    include_starred: bool = False


BULK_FIELDS = ("filter", "expect", "include_starred")


def is_bulk(payload) -> bool:
    """Whether a request body asks for a bulk action over a filter (rather than naming prompt_ids)."""
    return isinstance(payload, dict) and "filter" in payload


def read_bulk(payload, need_expect: bool = True) -> Bulk:
    """The ``{"filter", "expect", "include_starred"}`` of a bulk request; abort 400 naming the field."""
    unknown = sorted(set(payload) - set(BULK_FIELDS))
    if unknown:
        abort(400, f"{unknown[0]}: unknown field; send filter, expect and include_starred")
    try:
        history_filter = jobs.HistoryFilter.from_json(payload["filter"])
    except jobs.InvalidQuery as error:
        abort(400, f"filter: {error}")
    expect = payload.get("expect")
    if isinstance(expect, float) and expect.is_integer() and expect >= 0:
        expect = int(expect)  # JSON has one number type: 310.0 is the whole number 310 (JSON Schema's "integer" too)
    if (expect is None and need_expect) or (expect is not None and (isinstance(expect, bool) or not isinstance(expect, int)
                                                                    or not 0 <= expect <= jobs.MAX_EXPECT)):
        abort(400, "expect: the number of jobs the filter matched when you chose them (a whole number)")
    include_starred = payload.get("include_starred", False)
    if not isinstance(include_starred, bool):
        abort(400, "include_starred: must be true or false")
    return Bulk(history_filter, expect, include_starred)


MATCHING_PREFIX = "all_"  # "Select all N matching" names its fields apart from the filter form's (matching_selection.html)


def matching_fields(form):
    """The fields of "Select all N matching" in a selection form, without their prefix (None when not chosen)."""
    if MATCHING_PREFIX + "expect" not in form:
        return None
    return MultiDict([(key[len(MATCHING_PREFIX):], value) for key, value in form.items(multi=True) if key.startswith(MATCHING_PREFIX)])


def read_bulk_form(form, need_expect: bool = True) -> Bulk:
    """A bulk action posted by a form (the filter in hidden fields, with the count the reader saw as expect)."""
    try:
        history_filter = jobs.HistoryFilter.from_args(form)
    except jobs.InvalidQuery as error:
        abort(400, f"filter: {error}")
    raw = (form.get("expect") or "").strip()
    expect = text.whole_number(raw) if raw else None
    if (not raw and need_expect) or (raw and expect is None):
        abort(400, "expect: the number of jobs the filter matched when you chose them (a whole number)")
    return Bulk(history_filter, expect, form.get("include_starred") in ("1", "true", "on"))


def count_changed(error: jobs.CountChanged):
    """The 409 of a bulk action whose filter matches another number of jobs now (nothing was changed)."""
    return json_error(str(error), 409, count=error.count, expect=error.expect)


def timed_delete(delete) -> jobs.DeleteReport:
    """Run ``delete()`` (a jobs.delete_* call), count and time it, and publish job.deleted for each job gone."""
    return studio().delete(delete)


def delete_and_announce(prompt_ids: list[str]) -> jobs.DeleteReport:
    """Delete jobs with their files and publish job.deleted for each one gone."""
    return studio().delete_jobs(prompt_ids)


def delete_bulk_and_announce(bulk: Bulk) -> jobs.DeleteReport:
    """Delete what a bulk filter matches now (raise jobs.CountChanged if not ``expect`` jobs) and announce it."""
    output_root = current_app.config["STUDIO"].output_roots
    return timed_delete(lambda: jobs.delete_matching(bulk.history_filter, output_root, bulk.expect, bulk.include_starred))


@bp.post("/api/admin/history/delete")
def history_delete():
    """Delete jobs and their output folders, named or matched by a filter; answer what was deleted and what was not."""
    payload = request.get_json(silent=True)
    if is_bulk(payload):
        try:
            report = delete_bulk_and_announce(read_bulk(payload))
        except jobs.CountChanged as error:
            return count_changed(error)
    else:
        report = delete_and_announce(read_prompt_ids(payload))
    return jsonify(report.to_dict())


@bp.post("/api/admin/history/usage")
def history_usage():
    """Count the jobs, files and bytes a delete of these ids (or of a filter, with its stars) would free."""
    payload = request.get_json(silent=True)
    if is_bulk(payload):
        bulk = read_bulk(payload, need_expect=False)
        return jsonify(jobs.removal_usage(bulk.history_filter, bulk.include_starred))
    prompt_ids = read_prompt_ids(payload)
    return jsonify(jobs.delete_usage(prompt_ids, current_app.config["STUDIO"].output_roots))


@bp.post("/api/admin/history/star")
def history_star():
    """Star or unstar jobs (a star keeps a job from retention and from bulk deletes over a filter)."""
    payload = request.get_json(silent=True)
    prompt_ids = read_prompt_ids(payload)
    starred = payload.get("starred")
    if not isinstance(starred, bool):
        abort(400, "starred: must be true or false")
    unknown = sorted(set(payload) - {"prompt_ids", "starred"})
    if unknown:
        abort(400, f"{unknown[0]}: unknown field; send prompt_ids and starred")
    updated, not_found = jobs.star_jobs(prompt_ids, starred)
    return jsonify(updated=updated, not_found=not_found)


@bp.post("/api/admin/history/retry")
def history_retry():
    """Retry failed and stalled jobs, named or matched by a filter: one new job each, with retry_of."""
    payload = request.get_json(silent=True)
    if is_bulk(payload):
        bulk = read_bulk(payload)
        try:
            prompt_ids = jobs.matching_ids(jobs.retryable(bulk.history_filter), bulk.expect)
        except jobs.CountChanged as error:
            return count_changed(error)
        if len(prompt_ids) > jobs.MAX_DELETE_IDS:
            abort(413, f"at most {jobs.MAX_DELETE_IDS} jobs per retry; narrow the filter")
    else:
        prompt_ids = read_prompt_ids(payload)
    queued, failed = retry_jobs(prompt_ids)
    return jsonify(queued=queued, failed=failed)


@bp.get("/api/admin/history/stats")
def history_stats():
    """Counts and bytes by status, by workflow and by day for the last 30 days, and the oldest job."""
    return jsonify(jobs.storage_stats())


@bp.get("/api/admin/history/failures")
def history_failures():
    """Failed and stalled jobs grouped by cause, the largest group first."""
    return jsonify([group.to_dict() for group in jobs.failure_groups()])


# ---- running workflows --------------------------------------------------------------------------

@bp.get("/api/workflows")
def workflow_list():
    """List the workflows this studio can run, with their declared inputs."""
    workflows = studio().workflows
    return jsonify([workflows[key].to_dict() for key in sorted(workflows)])


def read_execute_request() -> tuple[object, object, object]:
    """(params, input_image, retry_of) of an execute request, JSON or a form; an upload is checked
    with Pillow and stored in the input folder first. Abort 400/413/415 naming the field."""
    if request.mimetype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        return _read_execute_form()
    return _read_execute_json()


def _read_execute_form() -> tuple[object, object, object]:
    """(params, input_image, retry_of) of a form post; ``params`` is JSON text, ``input_image`` a name or an upload."""
    if request.content_length is not None and request.content_length > MAX_UPLOAD_BYTES + 1024 * 1024:
        abort(413, f"input_image: larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MB")
    raw_params = request.form.get("params")
    params = None
    if raw_params not in (None, ""):
        try:
            params = json.loads(raw_params)
        except ValueError:
            abort(400, "params: not valid JSON")
    retry_of = request.form.get("retry_of") or None
    input_image = _store_upload(request.files.get("input_image")) or request.form.get("input_image") or None
    return params, input_image, retry_of


def _store_upload(upload) -> str | None:
    """Check an uploaded input image with Pillow and store it in the input folder; its name there, or None."""
    if upload is None or not upload.filename:
        return None
    data = upload.stream.read(MAX_UPLOAD_BYTES + 1)
    try:
        extension = check_upload(data)
    except ValidationError as error:
        abort(413 if len(data) > MAX_UPLOAD_BYTES else 400, str(error))
    return files.store_input_image(current_app.config["STUDIO"].input_dir, upload.filename, extension, data)


def _read_execute_json() -> tuple[object, object, object]:
    """(params, input_image, retry_of) of a JSON body ``{"params": {...}, "input_image"?, "retry_of"?}``."""
    if request.mimetype not in ("application/json", "") and not request.is_json:
        abort(415, "send JSON {\"params\": {...}} or multipart/form-data")
    payload = request.get_json(silent=True)
    if payload is None and request.get_data():
        abort(400, "body: not valid JSON")
    payload = payload if payload is not None else {}
    if not isinstance(payload, dict):
        abort(400, 'body: must be a JSON object {"params": {...}}')
    unknown = sorted(set(payload) - {"params", "input_image", "retry_of"})
    if unknown:
        abort(400, f"{unknown[0]}: unknown field; send params, input_image and retry_of")
    for name in ("input_image", "retry_of"):
        if payload.get(name) is not None and not isinstance(payload[name], str):
            abort(400, f"{name}: must be a string")
    return payload.get("params"), payload.get("input_image"), payload.get("retry_of")


def refuse_repeated_retry(view):
    """Answer 409 to a second retry of the same job within the guard's seconds (in this process or, by the
    store, any); release the claim when the retry was not made, so a corrected retry goes through at once."""

    @functools.wraps(view)
    def guarded(*args, **kwargs):
        retry_of = _retry_of_in_request()
        if retry_of is None:
            return view(*args, **kwargs)
        refusal = claim_retry(retry_of)
        if refusal is not None:
            return json_error(refusal.pop("error"), 409, **refusal)
        try:
            response = make_response(view(*args, **kwargs))
        except Exception:
            retry_guard().release(retry_of)
            raise
        if response.status_code != 202:
            retry_guard().release(retry_of)
        return response

    return guarded


@bp.post("/api/run/<workflow_id>/execute")
@refuse_repeated_retry
def execute(workflow_id: str):
    """Run a workflow: validate, record as queued, hand to the executor; answer 202 with the prompt id."""
    the_studio = studio()
    # "comfyui" is the workflow of prompts other ComfyUI clients queued: only a retry of one runs it.
    if workflow_id not in the_studio.workflows and workflow_id != COMFYUI_WORKFLOW_ID:
        abort(404, f"no workflow {workflow_id!r}: it is not installed in this studio")
    params, input_image, retry_of = read_execute_request()
    try:
        job = the_studio.execute(workflow_id, params, input_image, retry_of)
    except UnknownWorkflow as error:
        abort(404, str(error))
    except ValidationError as error:
        return json_error(str(error), 400, field=error.field)
    except ExecutorRejected as error:
        return json_error(str(error), 400, node_errors=error.details.get("node_errors", error.details))
    except ExecutorUnavailable as error:
        response = json_error(str(error), 503)
        response.headers["Retry-After"] = "10"
        return response
    answer = {"prompt_id": job.prompt_id, "status": job.status, "retry_of": job.retry_of}
    if job.retry_of is not None:
        # What the retry fitted to the workflow as installed now (a field left out, an image mapped).
        answer["notes"] = getattr(job, "retry_notes", [])
    response = jsonify(answer)
    response.status_code = 202
    response.headers["Location"] = url_for("api.history_detail", prompt_id=job.prompt_id)
    return response


# ---- export and retry guard -----------------------------------------------------------------------

PACKAGE_CHUNK_BYTES = 1024 * 1024
# Formats that are compressed already: stored as they are, so a package costs no CPU to make.
STORED_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".mp4", ".webm", ".mov", ".mkv", ".avi", ".zip")


class _ZipStream:
    """A write-only, unseekable file for zipfile whose bytes are handed out as they are written."""

    def __init__(self):
        self.chunks: list[bytes] = []

    def write(self, data) -> int:
        self.chunks.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data, self.chunks = b"".join(self.chunks), []
        return data


def package_members(job) -> list[tuple[str, object]]:
    """What a job's package holds, as (name in the zip, bytes or a Path): job.json, the input image, the folder's files.

    Every path comes through history.files (the input folder and the job folder, each checked); a file
    that cannot be resolved safely is left out.
    """
    settings = current_app.config["STUDIO"]
    output_root = settings.output_roots.of(job.comfyui_server)  # the folder of the ComfyUI server that ran it
    members: list[tuple[str, object]] = [("job.json", (json.dumps(job.to_dict(), indent=2) + "\n").encode())]
    if job.input_image:
        try:
            path = files.input_file(settings.input_dir, job.input_image)
        except files.UnsafePath:
            path = None
        if path is not None and files.regular_file(path) is not None:
            members.append((f"input/{path.name}", path))
    kept = jobs.graph_of(job.prompt_id)
    # The graph to take back to ComfyUI: prompt.json for /prompt, workflow.json for its page.
    if kept is not None and kept.graph:
        members.append(("prompt.json", (json.dumps(kept.graph, indent=2) + "\n").encode()))
    if kept is not None and kept.ui_workflow:
        members.append(("workflow.json", (json.dumps(kept.ui_workflow, indent=2) + "\n").encode()))
    if job.output_dir:
        try:
            folder = files.job_folder(output_root, job.output_dir)
        except files.UnsafePath:
            folder = None
        if folder is not None:
            for path in files.job_files(folder):
                # A name on disk that is not valid UTF-8 goes into the zip with U+FFFD in its place.
                members.append((f"output/{text.repair_text(path.name)}", path))
    else:
        # A prompt another client queued has no folder: its files are its listed outputs.
        names = set()
        for ref in job.outputs or []:
            try:
                path = files.output_file(output_root, ref)
            except files.UnsafePath:
                continue
            if ref.get("type", "output") == "output" and files.regular_file(path) is not None and path.name not in names:
                names.add(path.name)
                members.append((f"output/{text.repair_text(path.name)}", path))
    return members


def _zip_chunks(members: list[tuple[str, object]]):
    """Yield a zip of ``members`` piece by piece (one chunk of a file at a time, never the whole zip)."""
    stream = _ZipStream()
    with zipfile.ZipFile(stream, mode="w", allowZip64=True) as archive:
        for name, source in members:
            stored = name.lower().endswith(STORED_SUFFIXES)
            info = zipfile.ZipInfo(name, date_time=_zip_time(source))
            info.compress_type = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            try:
                with archive.open(info, mode="w", force_zip64=True) as member:
                    if isinstance(source, bytes):
                        member.write(source)
                    else:
                        with files.open_regular(source) as handle:
                            while chunk := handle.read(PACKAGE_CHUNK_BYTES):
                                member.write(chunk)
                                yield stream.take()
            except OSError as error:  # a file removed while the package streams: leave it out
                current_app.logger.warning("package: could not read %s: %s", name, error)
            yield stream.take()
    yield stream.take()


def _zip_time(source) -> tuple[int, int, int, int, int, int]:
    try:
        stamp = datetime.datetime.fromtimestamp(source.stat().st_mtime) if not isinstance(source, bytes) else None
    except OSError:
        stamp = None
    stamp = stamp or datetime.datetime.now()
    return (max(stamp.year, 1980), stamp.month, stamp.day, stamp.hour, stamp.minute, stamp.second)


def _attachment(filename: str) -> str:
    """A Content-Disposition value for a download: a plain ASCII ``filename`` and, for any other name, the
    exact one in RFC 6266's ``filename*`` (RFC 5987 UTF-8), which every current browser prefers."""
    from urllib.parse import quote

    name = text.repair_text(filename)
    fallback = "".join(char if " " <= char <= "~" and char not in '"\\;%' else "_" for char in name)
    value = f'attachment; filename="{fallback}"'
    if fallback != name:
        value += f"; filename*=UTF-8''{quote(name, safe='')}"
    return value


@bp.get("/api/admin/history/<prompt_id>/package")
def history_package(prompt_id: str):
    """Stream a zip of a job: job.json (its API record), its input image and every file of its output folder."""
    job = get_job_or_404(prompt_id)
    members = package_members(job)
    response = Response(stream_with_context(_zip_chunks(members)), mimetype="application/zip")
    response.headers["Content-Disposition"] = _attachment(f"{job.output_dir or job.prompt_id}.zip")
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/api/admin/history/<prompt_id>/prompt.json")
def history_prompt_json(prompt_id: str):
    """Download a job's API-format graph, what ComfyUI's /prompt takes."""
    return _graph_download(prompt_id, "graph", "prompt")


@bp.get("/api/admin/history/<prompt_id>/workflow.json")
def history_workflow_json(prompt_id: str):
    """Download the UI workflow ComfyUI's page embedded in a job, which its page opens by drag and drop."""
    return _graph_download(prompt_id, "ui_workflow", "workflow")


def _graph_download(prompt_id: str, field_name: str, name: str):
    """A kept graph of a job as a JSON attachment, or a 404 that says why there is none."""
    job = get_job_or_404(prompt_id)
    kept = jobs.graph_of(job.prompt_id)
    value = getattr(kept, field_name, None) if kept is not None else None
    if not value:
        what = "UI workflow (ComfyUI's page did not queue it)" if name == "workflow" else "graph kept"
        abort(404, f"job {job.prompt_id} has no {what}")
    response = current_app.response_class(json.dumps(value, indent=2) + "\n", mimetype="application/json")
    response.headers["Content-Disposition"] = _attachment(f"{job.prompt_id}-{name}.json")
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/api/admin/history/export")
def history_export():
    """Export the chosen jobs as a JSON array download, the shape of `flask history export`; ids not found are left out."""
    bulk = None
    if request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        payload = {"prompt_ids": request.form.getlist("prompt_ids")}
        matching = matching_fields(request.form)  # "Select all N matching": the filter rides in hidden fields
        if matching is not None or "expect" in request.form:
            bulk = read_bulk_form(matching if matching is not None else request.form)
    else:
        payload = request.get_json(silent=True)
        if is_bulk(payload):
            bulk = read_bulk(payload)
    if bulk is not None:
        records = list(jobs.export_records(history_filter=bulk.history_filter))
        if len(records) != bulk.expect:
            return count_changed(jobs.CountChanged(len(records), bulk.expect))
        prompt_ids = [record["prompt_id"] for record in records]
    else:
        prompt_ids = read_prompt_ids(payload)
        records = list(jobs.export_records(prompt_ids=prompt_ids))
    body = "[" + ",".join("\n" + json.dumps(record) for record in records) + "\n]\n"
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d_%H%M%S")
    response = current_app.response_class(body, mimetype="application/json")
    response.headers["Content-Disposition"] = _attachment(f"studio-history-{stamp}-{len(records)}-jobs.json")
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Not-Found"] = str(len(prompt_ids) - len(records))
    return response


def _retry_of_in_request() -> str | None:
    """The ``retry_of`` of an execute request, read without aborting (the view validates it)."""
    if request.mimetype == "multipart/form-data":
        if request.content_length is None or request.content_length > 64 * 1024:
            return None  # an upload: the view checks its size first; the page's retries are small JSON
        value = request.form.get("retry_of")
    else:
        payload = request.get_json(silent=True)
        value = payload.get("retry_of") if isinstance(payload, dict) else None
    # Only a prompt id can have retries; anything else is the view's to refuse (and a NUL would trip PostgreSQL).
    return value if isinstance(value, str) and jobs.PROMPT_ID_PATTERN.match(value) else None


def retry_guard():
    """The app's retry guard (Studio.retry_guard: the page's Retry form asks the same one)."""
    return studio().retry_guard


def claim_retry(retry_of: str) -> dict | None:
    """Claim a retry of ``retry_of``; None when it may go, else the refusal ({"error", "prompt_id"?}).

    Refused when this process is retrying it already, or the store has a retry of it younger than the
    guard's seconds (made by any process). The caller releases the claim if the retry is not made.
    """
    refusal = retry_guard().check(retry_of)
    if refusal is None:
        return None
    return {"error": refusal.message, **({"prompt_id": refusal.prompt_id} if refusal.prompt_id else {})}


def retry_jobs(prompt_ids: list[str]) -> tuple[list[dict], list[dict]]:
    """Retry each failed or stalled job once (guarded as a single Retry is); answer (queued, failed)."""
    the_studio = studio()
    queued: list[dict] = []
    failed: list[dict] = []
    for prompt_id in jobs.fold_ids(prompt_ids):
        job = jobs.get_job(prompt_id)
        if job is None:
            failed.append({"prompt_id": prompt_id, "error": "no such job", "status": 404})
            continue
        if not job.is_retryable:
            failed.append({"prompt_id": prompt_id, "error": f"job is {job.status}; only error and stalled jobs are retried", "status": 409})
            continue
        refusal = claim_retry(prompt_id)
        if refusal is not None:
            failed.append({"prompt_id": prompt_id, "error": refusal["error"], "status": 409, "retried_as": refusal.get("prompt_id")})
            continue
        try:
            retry = the_studio.execute(job.workflow_id, None, None, prompt_id)
        except (UnknownWorkflow, ValidationError, ExecutorRejected, ExecutorUnavailable) as error:
            retry_guard().release(prompt_id)
            status = 503 if isinstance(error, ExecutorUnavailable) else 404 if isinstance(error, UnknownWorkflow) else 400
            failed.append({"prompt_id": prompt_id, "error": str(error), "status": status})
            continue
        queued.append({"retry_of": prompt_id, "prompt_id": retry.prompt_id})
    return queued, failed
