"""The JSON API's contract as an OpenAPI 3.1 document, served at /api/openapi.json.

Every route under /api/ must be described here, and every path here must be a route:
tests/test_openapi.py compares this document with the app's url_map (methods included), and
tests/test_schemathesis.py fuzzes the live server from it. A new /api/ route lands together with its
entry in PATHS (its request body, query parameters and every status it can answer).
"""
from __future__ import annotations

import copy
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version

from history import jobs
from history.models import STATUSES

OPENAPI_VERSION = "3.1.0"


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def _error(description: str) -> dict:
    return {"description": description, "content": _json(_ref("Error"))}


def _answers(*statuses: int, **own: dict) -> dict:
    """A responses object: the shared error answers named by status, then this operation's own."""
    shared = {str(status): {"$ref": f"#/components/responses/{ERROR_RESPONSES[status][0]}"} for status in statuses}
    return {**own, **shared}


def _job_links(prompt_id: str) -> dict:
    """Links from an answer naming a job (a runtime expression for its id) to what can be done with it."""
    return {
        "GetJob": {"operationId": "getJob", "parameters": {"prompt_id": prompt_id}},
        "GetJobPackage": {"operationId": "getJobPackage", "parameters": {"prompt_id": prompt_id}},
        "DeleteJob": {"operationId": "deleteJobs", "requestBody": {"prompt_ids": [prompt_id]}},
    }


# Every status an /api/ route can answer with {"error": ...}, by name (components.responses).
ERROR_RESPONSES = {
    400: ("BadRequest", "the query or the body is not valid; the message names what to fix"),
    401: ("Unauthorized", "STUDIO_ADMIN_PASSWORD is set and the request has no login or bearer token"),
    403: ("Forbidden", "refused: a browser's write from another site, or a loopback studio asked by another name"),
    404: ("NotFound", "no such job or workflow"),
    405: ("MethodNotAllowed", "the path exists but not with this method (the Allow header lists the methods)"),
    409: ("Conflict", "the job was just retried, or is being retried"),
    413: ("TooLarge", "the body is larger than the limit (4 MiB of JSON, 32 MiB of upload) or names too many ids"),
    415: ("UnsupportedMediaType", "the body is neither JSON nor a form"),
    429: ("TooManyRequests", "too many wrong bearer tokens from this address; Retry-After says when to try again"),
    503: ("Unavailable", "the executor (ComfyUI) cannot take the job now; Retry-After says when to try again"),
}
GUARDED = (401, 403, 429)  # every route is behind the request pipeline (history/web/guard.py)
WRITE = (*GUARDED, 400, 413)  # a POST with a body

_STATUS_WORD = r"\s*(" + "|".join((*STATUSES, "failed")) + r")?\s*"
STATUS_LIST_PATTERN = f"^{_STATUS_WORD}(,{_STATUS_WORD})*$"

# jobs.parse_instant: any ISO 8601 time Python reads (date alone, no offset: UTC), or blank for none. Wider than
# JSON Schema's RFC 3339 "date-time", so it is a format of its own ("iso-8601", as `datetime.isoformat` writes).
FILTER_INSTANT = {"type": "string", "format": "iso-8601", "maxLength": 40,
                  "description": "an ISO 8601 time such as 2026-11-28T12:00:00Z (a date alone, or blank for none)"}

PROMPT_ID = {
    "name": "prompt_id",
    "in": "path",
    "required": True,
    "description": "a job's prompt_id (ComfyUI's prompt id, or one the built-in executor minted)",
    "schema": {"type": "string", "minLength": 1},
}

PROMPT_IDS_BODY = {
    "type": "object",
    "required": ["prompt_ids"],
    # A body with a filter is a bulk request (api.is_bulk), read by BulkRequest's stricter rules instead.
    "not": {"required": ["filter"]},
    "properties": {
        "prompt_ids": {
            "type": "array",
            "maxItems": jobs.MAX_DELETE_IDS,
            # PostgreSQL text cannot hold a NUL, so no prompt id has one (api.read_prompt_ids).
            "items": {"type": "string", "maxLength": 256, "pattern": "^[^\\u0000]*$"},
            "description": "the jobs to act on; repeats count once, unknown ids are reported or left out",
        },
    },
}

PROMPT_IDS_FORM = {
    "type": "object",
    "properties": {
        "prompt_ids": {
            "anyOf": [
                PROMPT_IDS_BODY["properties"]["prompt_ids"]["items"],
                PROMPT_IDS_BODY["properties"]["prompt_ids"],
            ],
        },
    },
}

# A bulk action's body: the jobs named, or a filter (with the count the person confirmed).
IDS_OR_FILTER = _json({"anyOf": [PROMPT_IDS_BODY, _ref("BulkRequest")]})

WORKFLOW_ID_OR_BLANK = "^([A-Za-z0-9][A-Za-z0-9_.-]{0,127})?$"
# A bulk action whose filter now matches another number of jobs than the person confirmed.
COUNT_CHANGED = {"description": "the filter matches another number of jobs now; nothing was changed",
                 "content": _json(_ref("CountChanged"))}

SCHEMAS = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {"type": "string", "description": "what went wrong and how to fix it, in words"},
            "field": {"type": ["string", "null"], "description": "the parameter at fault (execute's 400)"},
            "node_errors": {"description": "ComfyUI's own report of the nodes it refused (execute's 400)"},
            "prompt_id": {"type": "string", "description": "the job that retried it already (execute's 409)"},
        },
    },
    "OutputRef": {
        "type": "object",
        "description": "ComfyUI's reference to a file: subfolder is relative to the output folder",
        "required": ["filename"],
        "properties": {
            "filename": {"type": "string"},
            "subfolder": {"type": "string"},
            "type": {"type": "string", "examples": ["output"]},
        },
    },
    "Job": {
        "type": "object",
        "description": "a job's record (Job.to_dict): a field added there is added here",
        "additionalProperties": False,
        "required": [
            "prompt_id", "workflow_id", "workflow_name", "status", "queued_at", "started_at", "finished_at",
            "duration", "params", "seeds", "input_image", "output", "outputs", "starred", "bytes", "output_dir",
            "error", "retry_of", "source", "comfyui_server",
        ],
        "properties": {
            "prompt_id": {"type": "string"},
            "workflow_id": {"type": "string"},
            "workflow_name": {"type": "string"},
            "status": {"type": "string", "enum": list(STATUSES)},
            "queued_at": {"type": ["string", "null"], "format": "date-time"},
            "started_at": {"type": ["string", "null"], "format": "date-time"},
            "finished_at": {"type": ["string", "null"], "format": "date-time"},
            "duration": {"type": ["number", "null"], "description": "seconds from start to finish"},
            "params": {"type": "object", "description": "the submitted parameters"},
            "seeds": {"type": "object", "description": "the seeds used (a -1 seed resolved)"},
            "input_image": {"type": ["string", "null"]},
            "output": {"anyOf": [_ref("OutputRef"), {"type": "null"}]},
            "outputs": {"type": "array", "items": _ref("OutputRef")},
            "starred": {"type": "boolean", "description": "kept from retention and from bulk deletes over a filter"},
            "bytes": {"type": ["integer", "null"], "minimum": 0,
                      "description": "the size of its files, measured when it ended or was imported (null before)"},
            "output_dir": {"type": ["string", "null"]},
            "error": {"type": ["string", "null"]},
            "retry_of": {"type": ["string", "null"]},
            "source": {
                "type": ["string", "null"],
                "description": "where a prompt another ComfyUI client queued came from; null for the studio's own",
            },
            "comfyui_server": {
                "type": ["string", "null"],
                "description": "the ComfyUI server (a STUDIO_COMFYUI_URL address) that ran the job; its files are in "
                               "that server's output folder. null for the built-in executor's jobs",
            },
        },
    },
    "DeleteReport": {
        "type": "object",
        "required": ["deleted", "not_found", "failed", "files_removed", "bytes_freed"],
        "properties": {
            "deleted": {"type": "array", "items": {"type": "string"}},
            "not_found": {"type": "array", "items": {"type": "string"}},
            "failed": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["prompt_id", "error", "status"],
                    "properties": {
                        "prompt_id": {"type": "string"},
                        "error": {"type": "string"},
                        "status": {"type": "integer", "description": "409 still running, 400 refused, 500 files"},
                    },
                },
            },
            "files_removed": {"type": "integer", "minimum": 0},
            "bytes_freed": {"type": "integer", "minimum": 0},
        },
    },
    "Usage": {
        "type": "object",
        "required": ["jobs", "files", "bytes"],
        "properties": {
            "jobs": {"type": "integer", "minimum": 0},
            "files": {"type": "integer", "minimum": 0},
            "bytes": {"type": "integer", "minimum": 0},
        },
    },
    "HistoryFilter": {
        "type": "object",
        "additionalProperties": False,
        "description": "what a bulk action acts on: the list's filter, and the moment the selection was made",
        "properties": {
            "status": {
                "anyOf": [
                    {"type": "string", "pattern": STATUS_LIST_PATTERN},
                    {"type": "array", "items": {"type": "string", "pattern": STATUS_LIST_PATTERN}},
                    {"type": "null"},
                ],
                "description": "statuses (failed means error); none (or null) means the ended ones",
            },
            "workflow_id": {"type": ["string", "null"], "pattern": WORKFLOW_ID_OR_BLANK},
            "q": {"type": ["string", "null"], "maxLength": jobs.MAX_QUERY_LENGTH, "pattern": "^[^\\u0000]*$"},
            "starred": {"type": ["boolean", "null"]},
            "queued_before": {**FILTER_INSTANT, "type": ["string", "null"],
                              "description": "only jobs queued before this moment (when the selection was made)"},
            "queued_after": {**FILTER_INSTANT, "type": ["string", "null"]},
            "cause": {"type": ["string", "null"], "pattern": "^([0-9a-f]{12})?$",
                      "description": "a cause id of GET /api/admin/history/failures"},
        },
    },
    "BulkRequest": {
        "type": "object",
        "required": ["filter", "expect"],
        "additionalProperties": False,
        "properties": {
            "filter": _ref("HistoryFilter"),
            "expect": {"type": "integer", "minimum": 0, "maximum": jobs.MAX_EXPECT,
                       "description": "how many jobs the filter matched when the person chose them; "
                       "another count now answers 409 with the new count and changes nothing"},
            "include_starred": {"type": "boolean", "default": False,
                                "description": "take starred jobs too (kept otherwise)"},
        },
    },
    "CountChanged": {
        "type": "object",
        "required": ["error", "count", "expect"],
        "properties": {
            "error": {"type": "string"},
            "count": {"type": "integer", "minimum": 0, "description": "how many jobs the filter matches now"},
            "expect": {"type": "integer", "minimum": 0},
        },
    },
    "FilterUsage": {
        "type": "object",
        "required": ["jobs", "bytes", "starred", "include_starred"],
        "properties": {
            "jobs": {"type": "integer", "minimum": 0, "description": "the jobs a delete over the filter would take"},
            "bytes": {"type": "integer", "minimum": 0, "description": "their bytes, as their records keep them"},
            "starred": {"type": "integer", "minimum": 0, "description": "starred jobs the filter matches"},
            "include_starred": {"type": "boolean"},
        },
    },
    "StarRequest": {
        "type": "object",
        "required": ["prompt_ids", "starred"],
        "additionalProperties": False,
        "properties": {
            "prompt_ids": PROMPT_IDS_BODY["properties"]["prompt_ids"],
            "starred": {"type": "boolean"},
        },
    },
    "StarReport": {
        "type": "object",
        "required": ["updated", "not_found"],
        "properties": {
            "updated": {"type": "array", "items": {"type": "string"}},
            "not_found": {"type": "array", "items": {"type": "string"}},
        },
    },
    "RetryReport": {
        "type": "object",
        "required": ["queued", "failed"],
        "properties": {
            "queued": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["retry_of", "prompt_id"],
                    "properties": {"retry_of": {"type": "string"}, "prompt_id": {"type": "string"}},
                },
            },
            "failed": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["prompt_id", "error", "status"],
                    "properties": {
                        "prompt_id": {"type": "string"},
                        "error": {"type": "string"},
                        "status": {"type": "integer",
                                   "description": "404 unknown, 409 not failed or just retried, 400 refused, 503 executor"},
                        "retried_as": {"type": ["string", "null"], "description": "the retry made just before"},
                    },
                },
            },
        },
    },
    "Stats": {
        "type": "object",
        "required": ["total", "by_status", "by_workflow", "by_day", "oldest"],
        "properties": {
            "total": {
                "type": "object",
                "required": ["jobs", "bytes", "unmeasured"],
                "properties": {
                    "jobs": {"type": "integer"},
                    "bytes": {"type": "integer"},
                    "unmeasured": {"type": "integer", "description": "ended jobs whose bytes were never measured"},
                },
            },
            "by_status": {"type": "array", "items": {
                "type": "object", "required": ["status", "jobs", "bytes"],
                "properties": {"status": {"type": "string"}, "jobs": {"type": "integer"}, "bytes": {"type": "integer"}},
            }},
            "by_workflow": {"type": "array", "items": {
                "type": "object", "required": ["workflow_id", "workflow_name", "jobs", "bytes"],
                "properties": {
                    "workflow_id": {"type": "string"}, "workflow_name": {"type": "string"},
                    "jobs": {"type": "integer"}, "bytes": {"type": "integer"},
                },
            }},
            "by_day": {"type": "array", "description": "the last 30 UTC days, oldest first", "items": {
                "type": "object", "required": ["day", "jobs", "bytes"],
                "properties": {
                    "day": {"type": "string", "format": "date"},
                    "jobs": {"type": "object", "additionalProperties": {"type": "integer"},
                             "description": "jobs queued that day, by status"},
                    "bytes": {"type": "integer"},
                },
            }},
            "oldest": {"anyOf": [{"type": "null"}, {
                "type": "object", "required": ["prompt_id", "queued_at"],
                "properties": {"prompt_id": {"type": "string"}, "queued_at": {"type": "string", "format": "date-time"}},
            }]},
        },
    },
    "FailureGroup": {
        "type": "object",
        "required": ["cause", "text", "node", "exception", "example", "count", "newest", "oldest", "workflows", "statuses"],
        "properties": {
            "cause": {"type": "string", "description": "the cause's id (a filter's cause)"},
            "text": {"type": "string", "description": "the message with numbers, paths and ids normalised away"},
            "node": {"type": ["string", "null"]},
            "exception": {"type": ["string", "null"]},
            "example": {"type": "string", "description": "the newest message of this cause, as it was"},
            "count": {"type": "integer"},
            "newest": {"type": "string", "format": "date-time"},
            "oldest": {"type": "string", "format": "date-time"},
            "workflows": {"type": "object", "additionalProperties": {"type": "integer"}},
            "statuses": {"type": "object", "additionalProperties": {"type": "integer"}},
        },
    },
    "Workflow": {
        "type": "object",
        "required": ["id", "name", "type", "description", "inputs"],
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "type": {"type": "string", "enum": ["static", "dynamic"]},
            "description": {"type": "string"},
            "inputs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["id", "type"],
                    "properties": {
                        "id": {"type": "string"},
                        "type": {
                            "type": "string",
                            "enum": ["text", "int", "float", "seed", "select", "boolean", "image", "scenes"],
                        },
                    },
                },
            },
        },
    },
    "ExecuteRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "params": {
                "type": ["object", "null"],
                "description": "values for the workflow's declared inputs; a missing one takes its default",
            },
            "input_image": {"type": ["string", "null"], "description": "a file name in the input folder"},
            "retry_of": {"type": ["string", "null"], "description": "the prompt_id this job retries"},
        },
    },
    "Queued": {
        "type": "object",
        "required": ["prompt_id", "status"],
        "properties": {
            "prompt_id": {"type": "string"},
            "status": {"type": "string", "enum": ["queued"]},
            "retry_of": {"type": ["string", "null"]},
            "notes": {
                "type": "array",
                "items": {"type": "string"},
                "description": "a retry only: what was fitted to the workflow as installed now (a field left out, an image mapped)",
            },
        },
    },
}


def _kept_graph(operation_id: str, summary: str, description: str) -> dict:
    """The GET of one of a job's kept ComfyUI graphs, served as a JSON download (404 when the job kept none)."""
    return {"get": {
        "operationId": operation_id,
        "summary": summary,
        "parameters": [PROMPT_ID],
        "responses": _answers(*GUARDED, 404, **{"200": {
            "description": description, "content": {"application/json": {"schema": {"type": "object"}}},
        }}),
    }}


PATHS = {
    "/api/openapi.json": {
        "get": {
            "operationId": "openapi",
            "summary": "This document",
            "responses": _answers(*GUARDED, **{"200": {
                "description": "the OpenAPI 3.1 description of every /api/ route",
                "content": _json({"type": "object", "required": ["openapi", "paths"]}),
            }}),
        },
    },
    "/api/admin/history": {
        "get": {
            "operationId": "listHistory",
            "summary": "Past jobs, newest first",
            "description": "Ended jobs (completed, error, stalled) unless status says otherwise; the body stays an "
            "array and the next page's URL is in the Link header (rel=next).",
            "parameters": [
                {
                    "name": "status",
                    "in": "query",
                    "description": f"only these statuses: {', '.join(STATUSES)} (failed means error); repeatable "
                    "or comma-separated, blanks ignored; none means the ended ones (completed, error, stalled)",
                    "schema": {"type": "array", "items": {"type": "string", "pattern": STATUS_LIST_PATTERN}},
                    "style": "form",
                    "explode": True,
                },
                {
                    "name": "workflow_id",
                    "in": "query",
                    "description": "only this workflow's jobs (empty: every workflow)",
                    "schema": {"type": "string", "pattern": "^([A-Za-z0-9][A-Za-z0-9_.-]{0,127})?$"},
                },
                {
                    "name": "q",
                    "in": "query",
                    "description": "words of the prompt, workflow name or id",
                    "schema": {"type": "string", "maxLength": jobs.MAX_QUERY_LENGTH},
                },
                {
                    "name": "starred",
                    "in": "query",
                    "description": "1: only starred jobs; 0: only the others",
                    "schema": {"type": "string", "enum": ["", "0", "1", "true", "false"]},
                },
                {
                    "name": "queued_before",
                    "in": "query",
                    "description": "only jobs queued before this moment (ISO 8601)",
                    "schema": FILTER_INSTANT,
                },
                {
                    "name": "queued_after",
                    "in": "query",
                    "description": "only jobs queued at or after this moment (ISO 8601)",
                    "schema": FILTER_INSTANT,
                },
                {
                    "name": "cause",
                    "in": "query",
                    "description": "only failed and stalled jobs of this cause (GET /api/admin/history/failures)",
                    "schema": {"type": "string", "pattern": "^([0-9a-f]{12})?$"},
                },
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": jobs.MAX_LIMIT, "default": jobs.DEFAULT_LIMIT},
                },
                {
                    "name": "before",
                    "in": "query",
                    "description": "the cursor of the previous page's Link header: the last job's queued_at "
                    "(UTC) and prompt_id, as 20261128T153012.000000Z~<prompt_id>",
                    "schema": {"type": "string", "format": "history-cursor"},
                },
            ],
            "responses": _answers(*GUARDED, 400, **{"200": {
                "description": "the page of records",
                "headers": {"Link": {"description": 'the next page: <url>; rel="next"', "schema": {"type": "string"}}},
                "content": _json({"type": "array", "items": _ref("Job")}),
            }}),
        },
    },
    "/api/admin/history/{prompt_id}": {
        "get": {
            "operationId": "getJob",
            "summary": "One job's record",
            "parameters": [PROMPT_ID],
            "responses": _answers(*GUARDED, 404, **{"200": {"description": "the record", "content": _json(_ref("Job"))}}),
        },
    },
    "/api/admin/history/{prompt_id}/package": {
        "get": {
            "operationId": "getJobPackage",
            "summary": "A zip of one job: job.json, its input image and every file of its folder",
            "parameters": [PROMPT_ID],
            "responses": _answers(*GUARDED, 404, **{"200": {
                "description": "the zip, streamed",
                "content": {"application/zip": {"schema": {"type": "string", "contentMediaType": "application/zip"}}},
            }}),
        },
    },
    "/api/admin/history/{prompt_id}/prompt.json": _kept_graph(
        "getJobPrompt", "A job's API-format graph (what ComfyUI's /prompt takes), as a download", "the graph"),
    "/api/admin/history/{prompt_id}/workflow.json": _kept_graph(
        "getJobWorkflow", "The UI workflow ComfyUI's page embedded in a job (its page opens it by drag and drop)",
        "the UI workflow"),
    "/api/admin/history/delete": {
        "post": {
            "operationId": "deleteJobs",
            "summary": "Delete jobs and their output folders",
            "description": "Queued and running jobs are refused (in failed, status 409); a job whose files "
            "cannot be removed keeps its record.",
            "requestBody": {"required": True, "content": IDS_OR_FILTER},
            "responses": _answers(*WRITE, **{"200": {
                "description": "what was deleted and what was not",
                "content": _json(_ref("DeleteReport")),
            }, "409": COUNT_CHANGED}),
        },
    },
    "/api/admin/history/usage": {
        "post": {
            "operationId": "deleteUsage",
            "summary": "Count the jobs, files and bytes a delete of these ids (or over a filter) would free",
            "requestBody": {"required": True, "content": _json({"anyOf": [PROMPT_IDS_BODY, {
                **SCHEMAS["BulkRequest"],
                "required": ["filter"],
                # A count needs no expected count: left out or null.
                "properties": {
                    **SCHEMAS["BulkRequest"]["properties"],
                    "expect": {**SCHEMAS["BulkRequest"]["properties"]["expect"], "type": ["integer", "null"]},
                },
            }]})},
            "responses": _answers(*WRITE, **{"200": {
                "description": "the counts (of a filter: from the records, with the stars it matches)",
                "content": _json({"anyOf": [_ref("Usage"), _ref("FilterUsage")]}),
            }}),
        },
    },
    "/api/admin/history/export": {
        "post": {
            "operationId": "exportJobs",
            "summary": "Download the chosen jobs as a JSON array (the shape `studio-history import` reads)",
            "requestBody": {
                "required": True,
                "content": {
                    **IDS_OR_FILTER,
                    # The page's form: one prompt_ids field per checked card (none checked: none exported).
                    "application/x-www-form-urlencoded": {"schema": PROMPT_IDS_FORM},
                },
            },
            "responses": _answers(*WRITE, **{"200": {
                "description": "the records found, newest first, as an attachment",
                "headers": {
                    "X-Not-Found": {"description": "how many ids had no job", "schema": {"type": "string"}},
                    "Content-Disposition": {"schema": {"type": "string"}},
                },
                "content": _json({"type": "array", "items": _ref("Job")}),
            }, "409": COUNT_CHANGED}),
        },
    },
    "/api/admin/history/star": {
        "post": {
            "operationId": "starJobs",
            "summary": "Star or unstar jobs (a star keeps a job from retention and from bulk deletes over a filter)",
            "requestBody": {"required": True, "content": _json(_ref("StarRequest"))},
            "responses": _answers(*WRITE, **{"200": {"description": "which ids changed", "content": _json(_ref("StarReport"))}}),
        },
    },
    "/api/admin/history/retry": {
        "post": {
            "operationId": "retryJobs",
            "summary": "Retry failed and stalled jobs, named or over a filter: one new job each, with retry_of",
            "description": "Guarded as a single retry is: a job retried in the last few seconds is reported in "
            "failed (409) instead of being retried twice.",
            "requestBody": {"required": True, "content": IDS_OR_FILTER},
            "responses": _answers(*WRITE, **{"200": {
                "description": "the retries made and the jobs that were not retried, with why",
                "content": _json(_ref("RetryReport")),
            }, "409": COUNT_CHANGED}),
        },
    },
    "/api/admin/history/stats": {
        "get": {
            "operationId": "historyStats",
            "summary": "Counts and bytes by status, by workflow and by day (last 30 days), and the oldest job",
            "responses": _answers(*GUARDED, **{"200": {"description": "the figures", "content": _json(_ref("Stats"))}}),
        },
    },
    "/api/admin/history/failures": {
        "get": {
            "operationId": "historyFailures",
            "summary": "Failed and stalled jobs grouped by cause, the largest group first",
            "responses": _answers(*GUARDED, **{"200": {
                "description": "the groups",
                "content": _json({"type": "array", "items": _ref("FailureGroup")}),
            }}),
        },
    },
    "/api/workflows": {
        "get": {
            "operationId": "listWorkflows",
            "summary": "The workflows this studio can run, with their declared inputs",
            "responses": _answers(*GUARDED, **{"200": {
                "description": "every workflow, by id",
                "content": _json({"type": "array", "items": _ref("Workflow")}),
                "links": {
                    "RunFirstWorkflow": {
                        "operationId": "executeWorkflow",
                        "parameters": {"workflow_id": "$response.body#/0/id"},
                    },
                },
            }}),
        },
    },
    "/api/run/{workflow_id}/execute": {
        "post": {
            "operationId": "executeWorkflow",
            "summary": "Run a workflow: validate, record the job as queued, hand it to the executor",
            "parameters": [{
                "name": "workflow_id",
                "in": "path",
                "required": True,
                "description": "a workflow's id, as GET /api/workflows lists them",
                "schema": {"type": "string"},
                "examples": {"example": {"value": "txt2img-example"}},
            }],
            "requestBody": {
                "required": False,
                "content": {
                    **_json(_ref("ExecuteRequest")),
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "params": {"type": "string", "description": "the params object as JSON text"},
                                "input_image": {"type": "string", "contentMediaType": "application/octet-stream",
                                                "description": "an image file (PNG, JPEG, WebP) or a file name"},
                                "retry_of": {"type": "string"},
                            },
                        },
                    },
                },
            },
            "responses": _answers(*WRITE, 404, 409, 415, 503, **{"202": {
                "description": "queued; Location is the job's record",
                "headers": {"Location": {"schema": {"type": "string"}}},
                "content": _json(_ref("Queued")),
                "links": _job_links("$response.body#/prompt_id"),
            }}),
        },
    },
}


def document(url_prefix: str = "", login_required: bool = False) -> dict:
    """The OpenAPI 3.1 document of a studio under ``url_prefix``, with or without STUDIO_ADMIN_PASSWORD."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Studio History",
            "version": _version(),
            "description": "The JSON API of a ComfyUI studio's job history. Every error is JSON "
            '{"error": "..."} with its status; a method a path does not take gets 405 with Allow. '
            "With STUDIO_ADMIN_PASSWORD set every route needs a login or Authorization: Bearer <token>; "
            "a POST a browser sends from another site (Sec-Fetch-Site or Origin) is refused, and a script's passes.",
        },
        "servers": [{"url": url_prefix or "/"}],
        "paths": copy.deepcopy(PATHS),
        "components": {
            "schemas": copy.deepcopy(SCHEMAS),
            "responses": {
                name: _error(description) for name, description in ERROR_RESPONSES.values()
            },
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "`flask --app app api-token` prints it"},
                "session": {"type": "apiKey", "in": "cookie", "name": "studio_session"},
            },
        },
        # With a password, a bearer token or a login session; without one, nothing is asked for.
        "security": [{"bearer": []}, {"session": []}] if login_required else [],
    }


def _version() -> str:
    try:
        return version("studio-history")
    except PackageNotFoundError:
        return "0+checkout"
