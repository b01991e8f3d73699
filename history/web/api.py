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
from history.runner import studio

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
    return jobs.fold_ids(prompt_ids)


def delete_and_announce(prompt_ids: list[str]) -> jobs.DeleteReport:
    """Delete jobs with their files and publish job.deleted for each one gone."""
    report = jobs.delete_jobs(prompt_ids, current_app.config["STUDIO"].output_dir)
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
    from history.runner import UnknownWorkflow
    from history.workflows import ValidationError

    the_studio = studio()
    if workflow_id not in the_studio.workflows:
        abort(404, f"no workflow {workflow_id!r}")
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
    response = jsonify(prompt_id=job.prompt_id, status=job.status, retry_of=job.retry_of)
    response.status_code = 202
    response.headers["Location"] = url_for("api.history_detail", prompt_id=job.prompt_id)
    return response
