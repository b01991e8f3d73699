"""The OpenAPI document at /api/openapi.json describes exactly the app's /api/ routes."""
from __future__ import annotations

import re

import pytest

from history import create_app
from history import openapi
from history.db import release

METHODS = {"get", "post", "put", "patch", "delete"}


def api_routes(app) -> set[tuple[str, str]]:
    """(OpenAPI path, method) of every url_map rule under /api/."""
    routes = set()
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/"):
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            routes.add((path, method.lower()))
    return routes


def described_routes(document: dict) -> set[tuple[str, str]]:
    """(path, method) of every operation the document describes."""
    return {(path, method) for path, item in document["paths"].items() for method in item if method in METHODS}


def test_every_api_route_is_described_and_every_described_route_exists(app):
    routes = api_routes(app)
    described = described_routes(openapi.document())
    assert routes, "the app has /api/ routes"
    assert sorted(routes - described) == [], "routes missing from history/openapi.py"
    assert sorted(described - routes) == [], "history/openapi.py describes routes the app does not have"


def test_document_is_served_and_follows_the_prefix(client):
    response = client.get("/api/openapi.json")
    assert response.status_code == 200
    document = response.get_json()
    assert document["openapi"].startswith("3.1")
    assert document["servers"] == [{"url": "/"}]
    assert "/api/admin/history/delete" in document["paths"]


def test_every_operation_documents_its_errors_as_the_error_shape():
    document = openapi.document()
    error_responses = document["components"]["responses"]
    for name, response in error_responses.items():
        assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}, name
    statuses = set()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert operation.get("operationId"), f"{method} {path} has no operationId"
            codes = set(operation["responses"])
            assert any(code.startswith("2") for code in codes), f"{method} {path} has no success answer"
            assert "401" in codes, f"{method} {path} does not say it needs a login when a password is set"
            if method == "post":
                assert {"400", "403", "413"} <= codes, f"{method} {path} lacks a body's refusals"
            statuses |= codes
    assert {"202", "400", "401", "403", "404", "409", "413", "503"} <= statuses
    assert "405" in {str(status) for status in openapi.ERROR_RESPONSES}


@pytest.fixture
def guarded_app(app_config):
    """The app with an admin password."""
    guarded = create_app({**app_config, "STUDIO_ADMIN_PASSWORD": "pw-for-the-spec"})
    yield guarded
    guarded.extensions["studio"].stop()
    release()


@pytest.mark.parametrize("path", ["/api/openapi.json", "/api/workflows"])
def test_document_is_guarded_like_the_rest(guarded_app, path):
    response = guarded_app.test_client().get(path)
    assert response.status_code == 401
    assert "error" in response.get_json()


def test_the_job_schema_names_exactly_the_fields_of_a_record(make_job):
    record = make_job(status="completed").to_dict()
    job_schema = openapi.document()["components"]["schemas"]["Job"]
    assert list(job_schema["properties"]) == list(record)
    assert job_schema["required"] == list(record)


@pytest.mark.parametrize("login_required", [False, True])
def test_document_is_valid_openapi_3_1(login_required):
    import schemathesis

    # Validated against the OpenAPI 3.1 meta-schema that Schemathesis carries; raises on the first violation.
    schemathesis.openapi.from_dict(openapi.document("/studio", login_required=login_required)).validate()
