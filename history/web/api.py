"""The JSON API: the original studio's contract, kept."""
from __future__ import annotations

import json

from flask import Blueprint
from flask import abort
from flask import current_app
from flask import jsonify
from flask import request
from flask import url_for

from history import jobs
from history.studio import UnknownWorkflow
from history.studio import studio

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
    if not raw.isdigit():
        raise jobs.InvalidQuery(f"limit must be a whole number from 1 to {jobs.MAX_LIMIT}")
    limit = int(raw)
    if not 1 <= limit <= jobs.MAX_LIMIT:
        raise jobs.InvalidQuery(f"limit must be a whole number from 1 to {jobs.MAX_LIMIT}")
    return limit


def page_from_request(default_limit: int = jobs.DEFAULT_LIMIT) -> jobs.Page:
    """Read filters, limit and cursor from the query string and fetch that page; abort 400 when invalid."""
    args = request.args
    try:
        history_filter = jobs.HistoryFilter.parse(args.getlist("status"), args.get("workflow_id"), args.get("q"))
        limit = parse_limit(args.get("limit"), default_limit)
        return jobs.history_page(history_filter, limit, args.get("before") or None)
    except jobs.InvalidQuery as error:
        abort(400, str(error))


def get_job_or_404(prompt_id: str):
    """The job, or a 404 that says which id is unknown."""
    job = jobs.get_job(prompt_id)
    if job is None:
        abort(404, f"no job with prompt_id {prompt_id!r}")
    return job


@bp.get("/api/openapi.json")
def openapi_document():
    """Describe every /api/ route as OpenAPI 3.1 (history/openapi.py)."""
    from history import openapi

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
    """One job's record."""
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


def delete_and_announce(prompt_ids: list[str]) -> jobs.DeleteReport:
    """Delete jobs with their files and publish job.deleted for each one gone."""
    metrics = studio().metrics
    with metrics.delete_duration.time():
        report = jobs.delete_jobs(prompt_ids, current_app.config["STUDIO"].output_dir)
    metrics.deleted_jobs.inc(len(report.deleted))
    bus = studio().bus
    for record in report.deleted_jobs:
        bus.publish("job.deleted", record)
    return report


@bp.post("/api/admin/history/delete")
def history_delete():
    """Delete jobs and their output folders; answer what was deleted and what was not."""
    prompt_ids = read_prompt_ids(request.get_json(silent=True))
    report = delete_and_announce(prompt_ids)
    return jsonify(report.to_dict())


@bp.post("/api/admin/history/usage")
def history_usage():
    """Count the jobs, files and bytes a delete of these ids would free."""
    prompt_ids = read_prompt_ids(request.get_json(silent=True))
    return jsonify(jobs.delete_usage(prompt_ids, current_app.config["STUDIO"].output_dir))


# ---- running workflows (issue 4) ----------------------------------------------------------------

@bp.get("/api/workflows")
def workflow_list():
    """List the workflows this studio can run, with their declared inputs."""
    workflows = studio().workflows
    return jsonify([workflows[key].to_dict() for key in sorted(workflows)])


def read_execute_request() -> tuple[object, object, object]:
    """(params, input_image, retry_of) of an execute request, JSON or a form; an upload is checked
    with Pillow and stored in the input folder first. Abort 400/413/415 naming the field."""
    from history import files
    from history.workflows import MAX_UPLOAD_BYTES
    from history.workflows import ValidationError
    from history.workflows import check_upload

    if request.mimetype in ("multipart/form-data", "application/x-www-form-urlencoded"):
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
        input_image = request.form.get("input_image") or None
        upload = request.files.get("input_image")
        if upload is not None and upload.filename:
            data = upload.stream.read(MAX_UPLOAD_BYTES + 1)
            try:
                extension = check_upload(data)
            except ValidationError as error:
                abort(413 if len(data) > MAX_UPLOAD_BYTES else 400, str(error))
            input_image = files.store_input_image(current_app.config["STUDIO"].input_dir, upload.filename, extension, data)
        return params, input_image, retry_of
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


@bp.post("/api/run/<workflow_id>/execute")
def execute(workflow_id: str):
    """Run a workflow: validate, record as queued, hand to the executor; answer 202 with the prompt id."""
    from history.executors.base import ExecutorRejected
    from history.executors.base import ExecutorUnavailable
    from history.workflows import ValidationError

    the_studio = studio()
    if workflow_id not in the_studio.workflows:
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


# ---- export and retry guard (issue 5) -------------------------------------------------------------

PACKAGE_CHUNK_BYTES = 1024 * 1024
# Formats that are compressed already: stored as they are, so a package costs no CPU to make.
STORED_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".mp4", ".webm", ".mov", ".mkv", ".avi", ".zip")
RETRY_GUARD_SECONDS = 5.0


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
    from history import files

    settings = current_app.config["STUDIO"]
    members: list[tuple[str, object]] = [("job.json", (json.dumps(job.to_dict(), indent=2) + "\n").encode())]
    if job.input_image:
        try:
            path = files.input_file(settings.input_dir, job.input_image)
        except files.UnsafePath:
            path = None
        if path is not None and path.is_file():
            members.append((f"input/{path.name}", path))
    if job.output_dir:
        try:
            folder = files.job_folder(settings.output_dir, job.output_dir)
        except files.UnsafePath:
            folder = None
        if folder is not None:
            for path in files.job_files(folder):
                members.append((f"output/{path.name}", path))
    return members


def _zip_chunks(members: list[tuple[str, object]]):
    """Yield a zip of ``members`` piece by piece (one chunk of a file at a time, never the whole zip)."""
    import zipfile

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
                        with open(source, "rb") as handle:
                            while chunk := handle.read(PACKAGE_CHUNK_BYTES):
                                member.write(chunk)
                                yield stream.take()
            except OSError as error:  # a file removed while the package streams: leave it out
                current_app.logger.warning("package: could not read %s: %s", name, error)
            yield stream.take()
    yield stream.take()


def _zip_time(source) -> tuple[int, int, int, int, int, int]:
    import datetime

    try:
        stamp = datetime.datetime.fromtimestamp(source.stat().st_mtime) if not isinstance(source, bytes) else None
    except OSError:
        stamp = None
    stamp = stamp or datetime.datetime.now()
    return (max(stamp.year, 1980), stamp.month, stamp.day, stamp.hour, stamp.minute, stamp.second)


def _attachment(filename: str) -> str:
    """A Content-Disposition value for a download (the names here are plain ASCII folder names and ids)."""
    return f'attachment; filename="{filename}"'


@bp.get("/api/admin/history/<prompt_id>/package")
def history_package(prompt_id: str):
    """Stream a zip of a job: job.json (its API record), its input image and every file of its output folder."""
    from flask import Response
    from flask import stream_with_context

    job = get_job_or_404(prompt_id)
    members = package_members(job)
    response = Response(stream_with_context(_zip_chunks(members)), mimetype="application/zip")
    response.headers["Content-Disposition"] = _attachment(f"{job.output_dir or job.prompt_id}.zip")
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/api/admin/history/export")
def history_export():
    """Export the chosen jobs as a JSON array download, the shape of `flask history export`; ids not found are left out."""
    import datetime

    if request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        payload = {"prompt_ids": request.form.getlist("prompt_ids")}
    else:
        payload = request.get_json(silent=True)
    prompt_ids = read_prompt_ids(payload)
    records = list(jobs.export_records(prompt_ids=prompt_ids))
    body = "[" + ",".join("\n" + json.dumps(record) for record in records) + "\n]\n"
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d_%H%M%S")
    response = current_app.response_class(body, mimetype="application/json")
    response.headers["Content-Disposition"] = _attachment(f"studio-history-{stamp}-{len(records)}-jobs.json")
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Not-Found"] = str(len(prompt_ids) - len(records))
    return response


class RetryGuard:
    """Retries in flight or just made, by the id they retry: a double click makes one job, not two."""

    def __init__(self, seconds: float = RETRY_GUARD_SECONDS):
        import threading

        self.seconds = seconds
        self._lock = threading.Lock()
        self._recent: dict[str, float] = {}

    def claim(self, prompt_id: str) -> float | None:
        """Claim a retry of ``prompt_id``; return how long ago the last one was when it is too recent."""
        import time

        now = time.monotonic()
        with self._lock:
            self._recent = {key: at for key, at in self._recent.items() if now - at < self.seconds}
            if prompt_id in self._recent:
                return now - self._recent[prompt_id]
            self._recent[prompt_id] = now
            return None

    def release(self, prompt_id: str) -> None:
        """Forget a claim whose retry did not happen (refused or failed), so it can be tried again at once."""
        with self._lock:
            self._recent.pop(prompt_id, None)


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


@bp.before_request
def refuse_repeated_retry():
    """Answer 409 to a second retry of the same job within RETRY_GUARD_SECONDS (in this process or, by the store, any)."""
    import datetime

    if request.endpoint != "api.execute":
        return None
    retry_of = _retry_of_in_request()
    if retry_of is None:
        return None
    guard = current_app.extensions.setdefault("studio_retry_guard", RetryGuard())
    ago = guard.claim(retry_of)
    latest = jobs.retries_of(retry_of).first()
    age = (datetime.datetime.now(datetime.timezone.utc) - latest.queued_at).total_seconds() if latest else None
    if age is not None and age < guard.seconds:
        if ago is None:
            guard.release(retry_of)
        return json_error(
            f"job {retry_of[:12]} was retried {age:.0f} s ago as {latest.prompt_id[:12]}; see the queue page",
            409,
            prompt_id=latest.prompt_id,
        )
    if ago is not None:
        return json_error(f"job {retry_of[:12]} is being retried already; see the queue page", 409)
    request.environ.setdefault("studio.retry_claims", []).append(retry_of)
    return None


@bp.after_request
def release_failed_retry(response):
    """Release the guard's claim when the retry was not made, so a corrected retry goes through at once."""
    claims = request.environ.get("studio.retry_claims") or []
    if claims and response.status_code != 202:
        guard = current_app.extensions.get("studio_retry_guard")
        for retry_of in claims:
            if guard is not None:
                guard.release(retry_of)
    return response
