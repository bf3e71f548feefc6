"""/api/openapi.json: a valid OpenAPI 3.1 document, and every /api/* response the
tests make validates against it (openapi-core), on SQLite and PostgreSQL."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from flask import Flask
from flask.testing import FlaskClient
from openapi_core import OpenAPI
from openapi_core.contrib.werkzeug import WerkzeugOpenAPIRequest, WerkzeugOpenAPIResponse
from openapi_core.templating.paths.exceptions import PathNotFound
from openapi_core.validation.response.exceptions import InvalidData
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.test import TestResponse

from dashboard import openapi as document_module
from tests.history_seed import RECHECK_FLAKY, HistoryWorld, seed_history


@pytest.fixture
def dash_sessions(sessions: sessionmaker[Session]) -> sessionmaker[Session]:
    """Both engines (the conftest's default is SQLite only)."""
    return sessions


@pytest.fixture
def history(dash_sessions: sessionmaker[Session], world: Any) -> Iterator[HistoryWorld]:
    # The dashboard's world (status, a build with steps, tests and report, nodes)
    # and the history's (rechecks, flaky tests, a queued and an error build).
    yield seed_history(dash_sessions)


def served_spec(client: FlaskClient) -> OpenAPI:
    response = client.get("/api/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    return OpenAPI.from_dict(response.get_json())  # checks the document itself first


def validate(spec: OpenAPI, response: TestResponse) -> None:
    spec.validate_response(WerkzeugOpenAPIRequest(response.request),
                           WerkzeugOpenAPIResponse(response))


def api_paths(world: Any, history: HistoryWorld) -> list[str]:
    test_id = quote(RECHECK_FLAKY)
    return [
        "/api/status",
        "/api/nodes",
        f"/api/builds/{world.finished_id}",
        f"/api/builds/{world.running_id}",
        f"/api/builds/{history.builds['a']}",
        f"/api/builds/{history.builds['a']}?tests_page=2&tests_status=success",
        f"/api/builds/{history.builds['a']}?tests_page=0",
        "/api/builds",
        "/api/builds?limit=2",
        "/api/builds?project=openstack/nova&result=error&since=2020-01-01",
        "/api/changes/1001",
        "/api/changes/2001",
        "/api/tests",
        "/api/tests?sort=slowest&window=3&q=ports",
        f"/api/tests/{test_id}",
        "/api/flaky",
        "/api/flaky?days=1",
        "/api/charts",
        "/api/charts?days=3&by=project",
        # Refusals are documented too.
        "/api/builds/999999",
        "/api/changes/999999",
        "/api/tests/no.such.test",
        "/api/builds?result=won",
        "/api/tests?sort=random",
    ]


def test_every_api_response_matches_the_document(client: FlaskClient, world: Any,
                                                 history: HistoryWorld) -> None:
    spec = served_spec(client)
    checked = set()
    for path in api_paths(world, history):
        response = client.get(path)
        assert response.status_code in (200, 400, 404), (path, response.status)
        validate(spec, response)
        checked.add(response.request.path)
    # Every documented GET was exercised (a new endpoint needs a line above).
    documented = set(client.get("/api/openapi.json").get_json()["paths"])
    exercised = {p for p in documented if any(_matches(p, c) for c in checked)}
    assert exercised == documented - {"/api/openapi.json"}


def _matches(template: str, path: str) -> bool:
    parts, actual = template.strip("/").split("/"), path.strip("/").split("/")
    if template.endswith("{test_id}"):  # a test id may hold slashes
        return actual[:len(parts) - 1] == parts[:-1] and len(actual) >= len(parts)
    return len(parts) == len(actual) and all(
        p == a or p.startswith("{") for p, a in zip(parts, actual, strict=True))


def test_a_retyped_or_unlisted_field_fails_validation(app: Flask, client: FlaskClient,
                                                      world: Any,
                                                      history: HistoryWorld) -> None:
    # The check above must be able to fail: the same real response against a
    # document that says `runs` is a string, then with a field it does not list.
    response = client.get("/api/tests")
    served = client.get("/api/openapi.json").get_json()
    retyped = copy.deepcopy(served)
    retyped["components"]["schemas"]["TestStats"]["properties"]["runs"] = {"type": "string"}
    with pytest.raises(InvalidData):
        validate(OpenAPI.from_dict(retyped), response)
    unlisted = copy.deepcopy(served)
    del unlisted["components"]["schemas"]["TestStats"]["properties"]["flaky"]
    unlisted["components"]["schemas"]["TestStats"]["required"].remove("flaky")
    with pytest.raises(InvalidData):
        validate(OpenAPI.from_dict(unlisted), response)
    # A nullable change on a baseline build is allowed; a string is not.
    build = client.get("/api/builds")
    body = build.get_json()
    body["builds"][0]["change"] = "2002"
    forged = app.response_class(app.json.dumps(body), mimetype="application/json")
    forged_response = TestResponse(forged.response, forged.status, forged.headers,
                                   request=build.request)
    with pytest.raises(InvalidData):
        validate(OpenAPI.from_dict(served), forged_response)


def test_an_undocumented_path_is_not_in_the_document(client: FlaskClient) -> None:
    spec = served_spec(client)
    response = client.get("/api/nothing-here")
    with pytest.raises(PathNotFound):
        validate(spec, response)


def test_the_document_is_a_fresh_copy_each_time() -> None:
    first = document_module.document()
    first["components"]["schemas"]["Error"]["properties"]["error"] = {"type": "integer"}
    assert document_module.document()["components"]["schemas"]["Error"]["properties"][
        "error"] == {"type": "string"}


def test_the_served_document_is_valid_openapi_3_1(client: FlaskClient) -> None:
    from openapi_spec_validator import validate as validate_spec
    from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

    served = client.get("/api/openapi.json").get_json()
    assert served["openapi"] == "3.1.0"
    validate_spec(served)  # raises on an invalid document
    broken = copy.deepcopy(served)
    broken["components"]["schemas"]["Error"]["properties"]["error"] = {"type": "text"}
    with pytest.raises(OpenAPIValidationError):
        validate_spec(broken)


def test_every_api_route_is_documented(app: Flask, client: FlaskClient) -> None:
    # A new /api endpoint without its description fails here (and then the check
    # above, which must exercise it).
    documented = set(client.get("/api/openapi.json").get_json()["paths"])
    routes = {re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
              for rule in app.url_map.iter_rules()
              if rule.rule.startswith("/api/") and "GET" in (rule.methods or ())}
    assert routes == documented
