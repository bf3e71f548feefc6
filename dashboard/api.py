"""The JSON API: the same views as the pages, for scripts and the live build page.

Every endpoint is described in the OpenAPI 3 document at /api/openapi.json
(dashboard/openapi.py); the tests validate real responses against it.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, jsonify
from flask.typing import ResponseReturnValue

from dashboard import charts_view, data, history, openapi, status_view, tests_view
from dashboard.context import db

bp = Blueprint("api", __name__, url_prefix="/api")


@bp.get("/status")
def status() -> ResponseReturnValue:
    """`{"queued": [...], "running": [...], "recent": [...], "nodes": [...]}`."""
    return jsonify(status_view.status(db()))


@bp.get("/builds")
def builds() -> ResponseReturnValue:
    """One page of the build history: the /builds filters, an `after` (older) or `before`
    (newer) cursor and `limit`."""
    return jsonify(history.builds_view(db(), history.request_filter(),
                                       history.request_cursor(), history.request_limit(),
                                       endpoint="api.builds",
                                       before=history.request_cursor("before")))


@bp.get("/builds/<int:build_id>")
def build(build_id: int) -> ResponseReturnValue:
    """One build with steps, test counts, tests and report."""
    view = data.build_detail(db(), build_id, **data.request_tests_page())
    if view is None:
        abort(404, description=f"no build {build_id}")
    return jsonify(view)


@bp.get("/changes/<int:number>")
def change(number: int) -> ResponseReturnValue:
    """A change with every patchset and its builds."""
    view = history.change_view(db(), number)
    if view is None:
        abort(404, description=f"no change {number}")
    return jsonify(view)


@bp.get("/tests")
def tests() -> ResponseReturnValue:
    """Per-test statistics over the newest `window` finished builds."""
    return jsonify(tests_view.tests_view(db()))


@bp.get("/tests/<path:test_id>")
def test(test_id: str) -> ResponseReturnValue:
    """One test's results across builds, newest first; `before` pages back."""
    view = tests_view.test_view(db(), test_id)
    if view is None:
        abort(404, description="no results for this test")
    return jsonify(view)


@bp.get("/flaky")
def flaky() -> ResponseReturnValue:
    """Tests that flipped on the same code in the last `days` days."""
    return jsonify(tests_view.flaky_view(db()))


@bp.get("/charts")
def charts() -> ResponseReturnValue:
    """The numbers behind the /charts page."""
    days, by = charts_view.request_window()
    return jsonify(charts_view.charts_data(days, by))


@bp.get("/nodes")
def nodes() -> ResponseReturnValue:
    """`{"nodes": [...]}`."""
    return jsonify({"nodes": data.nodes(db())})


@bp.get("/openapi.json")
def openapi_document() -> ResponseReturnValue:
    """This API's OpenAPI 3.1 description."""
    return jsonify(openapi.document())


@bp.errorhandler(400)
def bad_request(error: Any) -> ResponseReturnValue:
    return jsonify({"error": getattr(error, "description", "bad request")}), 400


@bp.errorhandler(404)
def not_found(error: Any) -> ResponseReturnValue:
    return jsonify({"error": getattr(error, "description", "not found")}), 404
