"""The OpenAPI 3.1 description of the JSON API, served at /api/openapi.json.

Built from a dict so the schemas sit beside the code that shapes the
responses (dashboard/data.py, history.py, tests_view.py, charts_view.py).
The shapes this API alone defines (build pages, tests, flaky, charts,
changes) are closed (`unevaluatedProperties: false`): an unlisted, renamed
or retyped field fails the tests that validate real responses against this
document. The build summary, status, build and node objects the status and
build pages share stay open to added fields but type every field listed.
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


def obj(properties: dict[str, Schema], *, closed: bool = True,
        optional: tuple[str, ...] = ()) -> Schema:
    """An object whose listed properties are all required (but `optional`)."""
    schema: Schema = {"type": "object", "properties": properties,
                      "required": [k for k in properties if k not in optional]}
    if closed:
        schema["unevaluatedProperties"] = False
    return schema


def extend(base: str, properties: dict[str, Schema], *, closed: bool) -> Schema:
    """`base` plus more required properties (closed: nothing beyond both)."""
    schema: Schema = {"allOf": [ref(base), obj(properties, closed=False)]}
    if closed:
        schema["unevaluatedProperties"] = False
    return schema


LINK = obj({"name": STRING, "url": STRING})
BUILD_LINK = obj({"id": INT, "url": STRING})

SCHEMAS: dict[str, Schema] = {
    "Error": obj({"error": STRING}),
    "BuildSummary": obj({
        "id": INT, "job": STRING,
        "state": {"type": "string", "enum": [s.value for s in BuildState]},
        # A baseline build (a branch tip) has no change or patchset.
        "reason": STRING, "attempt": INT, "change": nullable(INT), "patchset": nullable(INT),
        "project": STRING, "branch": STRING, "subject": STRING, "owner": STRING,
        "change_url": STRING, "created": TIME, "started": nullable(TIME),
        "finished": nullable(TIME), "duration": nullable(NUMBER),
        "log_url": nullable(STRING), "summary": STRING, "worker": nullable(STRING),
        "abort_requested": BOOL, "finished_state": BOOL, "url": STRING,
    }, closed=False),
    # Open like BuildSummary: the status page's build summary may grow.
    "HistoryBuild": extend("BuildSummary", {"nodes": array(LINK),
                                            "change_page": nullable(STRING)}, closed=False),
    "BuildPage": obj({
        "filter": {"type": "object", "additionalProperties": STRING},
        "builds": array(ref("HistoryBuild")),
        "next_cursor": nullable(STRING),
        "next_url": nullable(STRING),
    }),
    "Node": obj({
        "name": STRING, "label": STRING, "address": STRING, "state": STRING,
        "offline_cause": nullable(STRING), "drained": BOOL, "build_id": nullable(INT),
        "health_failures": INT, "last_checked": nullable(TIME), "message": STRING,
        "updated": nullable(TIME),
    }, closed=False),
    "Status": obj({
        "queued": array(ref("BuildSummary")),
        "running": array(extend("BuildSummary", {
            "current_step": nullable(STRING), "current_step_node": nullable(STRING)},
            closed=False)),
        "recent": array(ref("BuildSummary")),
        "nodes": array(ref("Node")),
        "events": obj({"pending": INT, "failed": array(obj({
            "id": INT, "type": STRING, "failed_at": nullable(TIME), "reason": STRING}))},
            closed=False),
        "stream_error": nullable(obj({"message": STRING, "at": nullable(TIME)})),
    }, closed=False),
    "BuildDetail": extend("BuildSummary", {
        "current_patchset": nullable(INT),
        "steps": array(obj({
            "id": INT, "name": STRING, "node": nullable(STRING), "state": STRING,
            "started": nullable(TIME), "finished": nullable(TIME),
            "duration": nullable(NUMBER), "exit_code": nullable(INT),
            "log_name": nullable(STRING), "log_url": nullable(STRING), "message": STRING,
            "output_tail": STRING}, closed=False)),
        "test_counts": {"type": "object", "additionalProperties": INT},
        "tests": array(obj({"test_id": STRING, "status": STRING,
                            "duration": nullable(NUMBER), "details": STRING,
                            "failed": BOOL}, closed=False)),
        "report": nullable(obj({
            "state": STRING, "label": nullable(STRING), "vote": nullable(INT),
            "message": STRING, "attempts": INT, "created": nullable(TIME),
            "sent": nullable(TIME), "last_error": STRING, "label_refused": nullable(STRING),
            "not_sent": nullable(STRING)}, closed=False)),
    }, closed=False),
    "ChangeBuild": extend("BuildSummary", {
        "nodes": array(LINK),
        "failed_tests": array(obj({"test_id": STRING, "url": STRING})),
        "failed_test_count": INT,
    }, closed=False),
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
        "pass_rate": {"type": "object", "additionalProperties": array(obj({
            "day": DAY, "passed": INT, "failed": INT,
            "rate": nullable({"type": "number", "minimum": 0, "maximum": 1})}))},
        "duration": {"type": "object", "additionalProperties": array(obj({
            "day": DAY, "builds": INT, "mean_seconds": NUMBER}))},
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
    _query("after", STRING, "the next_cursor of the previous page"),
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
