"""The OpenAPI 3.1 description of the JSON API, served at /api/openapi.json.

Built from a dict so the schemas sit beside the code that shapes the
responses (dashboard/data.py, history.py, tests_view.py, charts_view.py).
Every object is closed (`additionalProperties: false`, every field typed and
the ones always present required): an unlisted, renamed or retyped field
fails the tests that validate real responses against this document. Only
objects keyed by data (a job, a status, a filter) take any key, of one type.
"""

from __future__ import annotations

import copy
from typing import Any

from ci.models import BuildState

VERSION = "1.0.0"
Schema = dict[str, Any]

STRING: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
NUMBER: Schema = {"type": "number"}
BOOL: Schema = {"type": "boolean"}
TIME: Schema = {"type": "string", "format": "date-time"}
DAY: Schema = {"type": "string", "format": "date"}


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


def obj(properties: dict[str, Schema], *, optional: tuple[str, ...] = ()) -> Schema:
    """An object of exactly these properties, all required but `optional`: a field
    added to a response without its schema here fails validation."""
    return {"type": "object", "properties": properties,
            "required": [k for k in properties if k not in optional],
            "additionalProperties": False}


def map_of(values: Schema) -> Schema:
    """An object keyed by data (a job, a status, a filter's name)."""
    return {"type": "object", "additionalProperties": values}


LINK = obj({"name": STRING, "url": STRING})
BUILD_LINK = obj({"id": INT, "url": STRING})
STATE = {"type": "string", "enum": [s.value for s in BuildState]}
# dashboard/data.py build_dict: a build as every list shows it.
BUILD_SUMMARY: dict[str, Schema] = {
    "id": INT, "job": STRING, "state": STATE,
    # A baseline build (a branch tip) has no change or patchset.
    "reason": STRING, "attempt": INT, "change": nullable(INT), "patchset": nullable(INT),
    "project": STRING, "branch": STRING, "subject": STRING, "owner": STRING,
    "change_url": STRING, "created": TIME, "started": nullable(TIME),
    "finished": nullable(TIME), "duration": nullable(NUMBER),
    "log_url": nullable(STRING), "summary": STRING, "worker": nullable(STRING),
    "abort_requested": BOOL, "finished_state": BOOL, "url": STRING,
}


def build_with(properties: dict[str, Schema]) -> Schema:
    """The build summary and more (each list adds what it shows)."""
    return obj({**BUILD_SUMMARY, **properties})


# The running tempest step's test counts, from its subunit stream (None: no such step).
PROGRESS = nullable(obj({"done": INT, "passed": INT, "failed": INT,
                         "current": nullable(STRING)}))
# The median duration of the job's recent builds, and what is left of it.
ETA = nullable(obj({"expected": NUMBER, "remaining": NUMBER, "text": STRING}))
POSITION = {"type": "integer", "minimum": 1}  # 1: the next build a worker claims
TEST_RESULT = obj({"test_id": STRING, "status": STRING, "duration": nullable(NUMBER),
                   "details": STRING, "failed": BOOL, "attachments_url": nullable(STRING)})

SCHEMAS: dict[str, Schema] = {
    "Error": obj({"error": STRING}),
    "BuildSummary": obj(BUILD_SUMMARY),
    "HistoryBuild": build_with({"nodes": array(LINK), "change_page": nullable(STRING)}),
    "BuildPage": obj({
        "filter": map_of(STRING),
        "builds": array(ref("HistoryBuild")),
        # Keyset cursors both ways: older (after the last row), newer (before the first).
        "next_cursor": nullable(STRING),
        "next_url": nullable(STRING),
        "prev_cursor": nullable(STRING),
        "prev_url": nullable(STRING),
    }),
    "Node": obj({
        "name": STRING, "label": STRING, "address": STRING, "state": STRING,
        "offline_cause": nullable(STRING), "drained": BOOL, "build_id": nullable(INT),
        "health_failures": INT, "last_checked": nullable(TIME), "message": STRING,
        "updated": nullable(TIME),
    }),
    "Status": obj({
        "queued": array(build_with({
            "position": POSITION,
            "waiting_for": STRING,  # why it waits: no free lab set, which node is offline
            "can_start": BOOL,  # a worker would take it now
        })),
        "running": array(build_with({
            "current_step": nullable(STRING), "current_step_node": nullable(STRING),
            "progress": PROGRESS, "eta": ETA})),
        "recent": array(ref("BuildSummary")),
        "nodes": array(ref("Node")),
        "events": obj({"pending": INT, "failed": array(obj({
            "id": INT, "type": STRING, "failed_at": nullable(TIME), "reason": STRING}))}),
        "stream_error": nullable(obj({"message": STRING, "at": nullable(TIME)})),
    }),
    "BuildDetail": build_with({
        "current_patchset": nullable(INT),
        "steps": array(obj({
            "id": INT, "name": STRING, "node": nullable(STRING), "state": STRING,
            "started": nullable(TIME), "finished": nullable(TIME),
            "duration": nullable(NUMBER), "exit_code": nullable(INT),
            "log_name": nullable(STRING), "log_url": nullable(STRING), "message": STRING,
            "output_tail": STRING, "progress": PROGRESS})),
        "eta": ETA,  # running builds only
        "wait": nullable(obj({"position": POSITION, "reason": STRING})),  # queued only
        "test_counts": map_of(INT),
        # The failed tests with their tracebacks (the first 200), and the flaky ones.
        "failures": array(TEST_RESULT),
        "flaky": array(TEST_RESULT),
        "tests": array(TEST_RESULT),
        "tests_page": obj({"page": POSITION, "pages": POSITION, "per_page": INT,
                           "total": INT, "status": nullable(STRING)}),
        "report": nullable(obj({
            "state": STRING, "label": nullable(STRING), "vote": nullable(INT),
            "message": STRING, "attempts": INT, "created": nullable(TIME),
            "sent": nullable(TIME), "last_error": STRING, "label_refused": nullable(STRING),
            "not_sent": nullable(STRING)})),
    }),
    "ChangeBuild": build_with({
        "nodes": array(LINK),
        "failed_tests": array(obj({"test_id": STRING, "url": STRING})),
        "failed_test_count": INT,
    }),
    "Change": obj({
        "number": INT, "project": STRING, "branch": STRING, "subject": STRING,
        "owner": STRING, "url": STRING, "status": STRING, "builds_url": STRING,
        "patchsets": array(obj({
            "number": INT, "revision": STRING, "ref": STRING, "uploader": STRING,
            "created": nullable(TIME), "files": array(STRING),
            "builds": array(ref("ChangeBuild"))})),
    }),
    "TestStats": obj({
        "test_id": STRING, "url": STRING, "runs": INT, "failures": INT, "flaky": INT,
        "skips": INT, "failure_rate": {"type": "number", "minimum": 0, "maximum": 1},
        "max_duration": nullable(NUMBER), "mean_duration": nullable(NUMBER),
        "last_failure": nullable(obj({"build_id": INT, "finished": nullable(TIME),
                                      "url": STRING})),
    }),
    "TestList": obj({
        "window": INT, "sort": {"type": "string", "enum": ["failures", "rate", "slowest",
                                                           "name"]},
        "q": STRING, "tests": array(ref("TestStats")),
    }),
    "TestHistory": obj({
        "test_id": STRING, "summary": ref("TestStats"),
        "runs": array(obj({
            "build_id": INT, "build_url": STRING, "job": STRING, "build_state": STRING,
            "project": nullable(STRING), "change": nullable(INT), "patchset": nullable(INT),
            "change_url": nullable(STRING),
            "status": STRING, "duration": nullable(NUMBER), "finished": nullable(TIME),
            "details": STRING})),
        "next_before": nullable(INT), "next_url": nullable(STRING), "chart_url": STRING,
    }),
    "FlakyList": obj({
        "days": INT, "since": TIME,
        "tests": array(obj({
            "test_id": STRING, "url": STRING, "flips": {"type": "integer", "minimum": 1},
            "rerun_flips": INT, "recheck_flips": INT, "builds": array(BUILD_LINK),
            "last_failed": nullable(TIME)})),
    }),
    "Charts": obj({
        "days": INT, "by": {"type": "string", "enum": ["job", "project"]},
        "since": TIME, "until": TIME,
        "pass_rate": map_of(array(obj({
            "day": DAY, "passed": INT, "failed": INT,
            "rate": nullable({"type": "number", "minimum": 0, "maximum": 1})}))),
        "duration": map_of(array(obj({
            "day": DAY, "builds": INT, "mean_seconds": NUMBER}))),
        "queue": obj({"since": TIME, "samples": array(obj({
            "at": TIME, "queued": {"type": "integer", "minimum": 0}}))}),
        "nodes": array(obj({"node": STRING, "builds": INT, "failed": INT, "rate": NUMBER})),
    }),
}


def _query(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


def _get(summary: str, schema: str, *, parameters: list[Schema] | None = None,
         errors: tuple[int, ...] = ()) -> Schema:
    responses: dict[str, Any] = {"200": {
        "description": summary,
        "content": {"application/json": {"schema": ref(schema)}}}}
    for code in errors:
        responses[str(code)] = {"description": {400: "a parameter is invalid",
                                                404: "not found"}[code],
                                "content": {"application/json": {"schema": ref("Error")}}}
    operation: Schema = {"summary": summary, "responses": responses}
    if parameters:
        operation["parameters"] = parameters
    return {"get": operation}


def _path(name: str, schema: Schema) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": schema}


BUILD_FILTERS = [
    _query("project", STRING, "the Gerrit project"),
    _query("branch", STRING, "the change's branch"),
    _query("job", STRING, "the job name"),
    _query("result", {"type": "string", "enum": ["", *[s.value for s in BuildState]]},
           "the build's state"),
    _query("change", {"type": "string", "pattern": "^[0-9]*$"}, "the change number"),
    _query("node", STRING, "a node one of the build's steps ran on"),
    _query("since", STRING, "created at or after: YYYY-MM-DD (UTC) or an ISO date-time"),
    _query("until", STRING, "created before the end of this day, or this ISO date-time"),
    _query("after", STRING, "a page's next_cursor: the page of older builds after it"),
    _query("before", STRING, "a page's prev_cursor: the page of newer builds before it"),
    _query("limit", {"type": "string", "pattern": "^[0-9]*$"}, "rows per page (1-200)"),
]
WINDOW = [_query("days", {"type": "string", "pattern": "^[0-9]*$"}, "days back (1-366)")]


def document() -> Schema:
    """The whole OpenAPI document (a new dict each call: callers may keep it)."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "hyperv-ci dashboard API", "version": VERSION,
                 "description": "Read-only JSON views of the CI's builds, tests and nodes."},
        "paths": {
            "/api/status": _get("Queued, running and recent builds, nodes, events", "Status"),
            "/api/builds": _get("One page of the build history, newest first", "BuildPage",
                                parameters=BUILD_FILTERS, errors=(400,)),
            "/api/builds/{build_id}": _get("One build with steps, tests and report",
                                           "BuildDetail",
                                           parameters=[
                                               _path("build_id", INT),
                                               _query("tests_page", INT,
                                                      "the page of `tests` (100 a page)"),
                                               _query("tests_status", STRING,
                                                      "only tests that ended so")],
                                           errors=(400, 404)),
            "/api/changes/{number}": _get("A change, every patchset and its builds", "Change",
                                          parameters=[_path("number", INT)], errors=(404,)),
            "/api/tests": _get("Per-test statistics over the newest finished builds",
                               "TestList", errors=(400,), parameters=[
                                   _query("window", {"type": "string", "pattern": "^[0-9]*$"},
                                          "finished builds covered (1-2000)"),
                                   _query("sort", STRING, "failures, rate, slowest or name"),
                                   _query("q", STRING, "part of the test id")]),
            "/api/tests/{test_id}": _get("One test's results across builds", "TestHistory",
                                         errors=(400, 404), parameters=[
                                             _path("test_id", STRING),
                                             _query("before", {"type": "string",
                                                               "pattern": "^[0-9]*$"},
                                                    "only builds older than this id")]),
            "/api/flaky": _get("Tests that flipped on the same code", "FlakyList",
                               parameters=WINDOW, errors=(400,)),
            "/api/charts": _get("The numbers behind the charts", "Charts", errors=(400,),
                                parameters=[*WINDOW, _query("by", STRING, "job or project")]),
            "/api/nodes": _get("The node pool", "NodeList"),
            "/api/openapi.json": {"get": {"summary": "This document", "responses": {
                "200": {"description": "OpenAPI 3.1",
                        "content": {"application/json": {"schema": {"type": "object"}}}}}}},
        },
        "components": {"schemas": copy.deepcopy(
            {**SCHEMAS, "NodeList": obj({"nodes": array(ref("Node"))})})},
    }
