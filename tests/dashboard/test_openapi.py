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

from ci.models import BuildStep
from dashboard import openapi as document_module
from tests.history_seed import RECHECK_FLAKY, HistoryWorld, seed_history


@pytest.fixture
def dash_sessions(sessions: sessionmaker[Session]) -> sessionmaker[Session]:
    """Both engines (the conftest's default is SQLite only)."""
    return sessions


@pytest.fixture
def history(dash_sessions: sessionmaker[Session], world: Any) -> Iterator[HistoryWorld]:
    # The dashboard's world (status, a build with steps, tests and report, nodes)
    # and the history's (rechecks, flaky tests, a queued and an error build); the
    # running build's step is a tempest run with live progress.
    with dash_sessions() as s, s.begin():
        step = s.get(BuildStep, world.running_step_id)
        assert step is not None
        step.tests_done, step.tests_passed, step.tests_failed = 42, 40, 2
        step.current_test = "tempest.api.compute.test_当前[id-9,<smoke>]"
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
        f"/api/builds/{world.queued_id}",
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
    first = client.get("/api/builds?limit=2").get_json()
    older = client.get(first["next_url"]).get_json()
    checked = set()
    bodies: dict[str, Any] = {}
    for path in [*api_paths(world, history), f"/api/builds?limit=2&after={first['next_cursor']}",
                 f"/api/builds?limit=2&before={older['prev_cursor']}"]:
        response = client.get(path)
        assert response.status_code in (200, 400, 404), (path, response.status)
        validate(spec, response)
        checked.add(response.request.path)
        bodies[path] = response.get_json()
    # The late fields are in what was validated, not null: live progress and an ETA
    # on the running build, a queued build's place and reason, a failed build's
    # failures and flaky tests, and both cursors.
    status = bodies["/api/status"]
    running = next(b for b in status["running"] if b["id"] == world.running_id)
    assert running["progress"]["done"] == 42 and "当前" in running["progress"]["current"]
    assert running["eta"] is not None and running["eta"]["expected"] > 0
    assert {b["position"] for b in status["queued"]} == set(range(1, len(status["queued"]) + 1))
    assert all(b["waiting_for"] and isinstance(b["can_start"], bool) for b in status["queued"])
    assert bodies[f"/api/builds/{world.queued_id}"]["wait"]["position"] >= 1
    running_steps = bodies[f"/api/builds/{world.running_id}"]["steps"]
    assert [s["progress"]["passed"] for s in running_steps if s["progress"]] == [40]
    failed = bodies[f"/api/builds/{history.builds['a']}"]
    assert failed["failures"] and failed["flaky"] and failed["tests_page"]["total"] == 4
    assert older["prev_url"] and older["next_url"] and first["prev_url"] is None
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


def _objects(schema: Any, where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(schema, dict):
        if schema.get("type") == "object":
            yield where, schema
        for key, value in schema.items():
            yield from _objects(value, f"{where}/{key}")
    elif isinstance(schema, list):
        for index, value in enumerate(schema):
            yield from _objects(value, f"{where}/{index}")


def test_every_object_of_the_api_is_closed_or_a_map() -> None:
    # A field a response gains without its schema fails the validation above only
    # if its object refuses unlisted properties: each one does, or is a map keyed by
    # data (jobs, statuses, filters) whose values all have one schema.
    schemas = document_module.document()["components"]["schemas"]
    found = list(_objects(schemas, "#/components/schemas"))
    assert len(found) > 30
    for where, schema in found:
        if "properties" in schema:
            assert schema.get("additionalProperties") is False, where
            assert set(schema["required"]) <= set(schema["properties"]), where
        else:
            assert isinstance(schema.get("additionalProperties"), dict), where


def test_a_field_added_to_a_nested_object_fails_validation(app: Flask, client: FlaskClient,
                                                           world: Any,
                                                           history: HistoryWorld) -> None:
    spec = served_spec(client)
    status = client.get("/api/status")
    validate(spec, status)
    body = status.get_json()
    running = next(b for b in body["running"] if b["progress"] is not None)
    running["progress"]["eta_seconds"] = 12  # a field the document does not list
    forged = app.response_class(app.json.dumps(body), mimetype="application/json")
    with pytest.raises(InvalidData):
        validate(spec, TestResponse(forged.response, forged.status, forged.headers,
                                    request=status.request))
