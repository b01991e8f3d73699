"""Schemathesis fuzzes the live server from its own OpenAPI document: no 5xx, every answer as documented.

The server is real (Werkzeug on a loopback port, SQLite, the built-in executor) and has an admin
password, so each request carries the bearer token and Schemathesis also checks that a request without
it is refused. STUDIO_TEST_SCHEMATHESIS_EXAMPLES sets the random examples per operation (default 10; its coverage phase adds each
parameter's boundary and wrong-type cases besides, most of the requests).
"""
from __future__ import annotations

import datetime
import os

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck
from hypothesis import settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import positive_data_acceptance

from history import create_app
from history import jobs
from history import openapi
from history import security
from history.db import release
from history.web import guard
from tests.conftest import LiveServer

EXAMPLES = int(os.environ.get("STUDIO_TEST_SCHEMATHESIS_EXAMPLES", "10"))
STATEFUL_EXAMPLES = max(EXAMPLES // 2, 5)
PASSWORD = "fuzzing-password"
TOKEN = security.derive_api_token(PASSWORD)

# A real cursor (jobs.encode_cursor) for "before": a well-formed one with a 30 February would be refused.
schemathesis.openapi.format(
    "history-cursor",
    st.builds(
        lambda queued_at, prompt_id: queued_at.strftime("%Y%m%dT%H%M%S.%fZ") + jobs.CURSOR_SEPARATOR + prompt_id,
        st.datetimes(min_value=datetime.datetime(2000, 1, 1)),
        st.from_regex(jobs.PROMPT_ID_PATTERN, fullmatch=True),
    ),
)

# A filter's time (jobs.parse_instant): what isoformat() writes, with or without an offset, or blank.
schemathesis.openapi.format(
    "iso-8601",
    st.one_of(
        st.just(""),
        st.datetimes(min_value=datetime.datetime(1000, 1, 1)).map(datetime.datetime.isoformat),
        st.datetimes(timezones=st.just(datetime.timezone.utc)).map(lambda moment: moment.isoformat().replace("+00:00", "Z")),
    ),
)

schema = schemathesis.openapi.from_dict(openapi.document(login_required=True))
# GET /api/admin/history/{prompt_id} also matches /api/admin/history/delete (a prompt id may read "delete"),
# so OPTIONS there rightly lists GET beside POST: the check reads the two paths as separate resources.
schema.config.checks.update(excluded_check_names=["allow_header_conformance"])
# 413 (too many ids, too large a body) refuses a request as surely as 400 does.
schema.config.checks.negative_data_rejection.expected_statuses.append("413")

# Whether params fit is each workflow's own rule (GET /api/workflows declares its inputs), which one document
# for every workflow cannot state: a schema-valid body that a workflow refuses gets a 400 that says why.
EXECUTE = "POST /api/run/{workflow_id}/execute"
# A bulk action over a filter must name how many jobs the person saw: a schema-valid guess of that count
# rightly gets 409 with the real one, and nothing changes.
BULK = ("POST /api/admin/history/delete", "POST /api/admin/history/retry", "POST /api/admin/history/export")


def excluded_checks(case) -> list:
    """The checks that do not apply to this operation."""
    return [positive_data_acceptance] if case.operation.label in (EXECUTE, *BULK) else []



class CountedRequests:
    """WSGI middleware counting the requests the server answered (the figure printed with -s)."""

    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app
        self.count = 0

    def __call__(self, environ, start_response):
        self.count += 1
        return self.wsgi_app(environ, start_response)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """One password-protected studio on SQLite for the whole module."""
    data_dir = tmp_path_factory.mktemp("schemathesis")
    app = create_app({
        "TESTING": True,
        "STUDIO_DATA_DIR": str(data_dir),
        "STUDIO_DEMO": "0",
        "STUDIO_ADMIN_PASSWORD": PASSWORD,
    })
    # Schemathesis's auth check sends wrong tokens on purpose; a few a minute would have the limiters refuse this
    # address altogether (429 to every later request, the right token's too), leaving nothing fuzzed.
    auth = app.extensions[guard.EXTENSION]
    auth.limiter = security.RateLimiter(limit=1_000_000, window=60.0)
    auth.token_limiter = security.RateLimiter(limit=1_000_000, window=60.0)
    counted = app.wsgi_app = CountedRequests(app.wsgi_app)
    server = LiveServer(app).start()
    yield server
    server.stop()
    release()
    print(f"\nschemathesis: the server answered {counted.count} requests")


@pytest.fixture(scope="module")
def session():
    """One HTTP session (keep-alive) for every request of the module."""
    with requests.Session() as http:
        yield http


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # nothing kept between runs: each run is the same, from its seed
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_api_answers_as_documented(case, live, session):
    response = case.call(base_url=live.url, session=session, headers={"Authorization": f"Bearer {TOKEN}"})
    case.validate_response(response, headers={"Authorization": f"Bearer {TOKEN}"}, excluded_checks=excluded_checks(case))


class LinkedCalls(schema.as_state_machine()):
    """Sequences that follow the document's links: list workflows, run one, read, package and delete its job.

    Only links whose answers do not depend on timing: a job runs in the background, so what the history
    list holds (or whether a retry meets the retry guard) changes between a run and Hypothesis's replay of it.
    """

    base_url = ""

    def get_call_kwargs(self, case):
        return {"base_url": self.base_url, "headers": {"Authorization": f"Bearer {TOKEN}"}}

    def validate_response(self, response, case, additional_checks=None, **kwargs):
        case.validate_response(
            response,
            additional_checks=additional_checks,
            excluded_checks=excluded_checks(case),
            transport_kwargs=kwargs or None,
            recorder=self.recorder,
        )


def test_linked_calls_answer_as_documented(live):
    LinkedCalls.base_url = live.url
    LinkedCalls.run(settings=settings(
        max_examples=STATEFUL_EXAMPLES,
        stateful_step_count=6,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    ))
