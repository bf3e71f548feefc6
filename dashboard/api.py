"""The JSON API: the same views as the pages, for scripts and the live build page."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, jsonify
from flask.typing import ResponseReturnValue

from dashboard import data
from dashboard.context import db

bp = Blueprint("api", __name__, url_prefix="/api")


@bp.get("/status")
def status() -> ResponseReturnValue:
    """`{"queued": [...], "running": [...], "recent": [...], "nodes": [...]}`."""
    return jsonify(data.status(db()))


@bp.get("/builds/<int:build_id>")
def build(build_id: int) -> ResponseReturnValue:
    """One build with steps, test counts, tests and report."""
    view = data.build_detail(db(), build_id)
    if view is None:
        abort(404, description=f"no build {build_id}")
    return jsonify(view)


@bp.get("/nodes")
def nodes() -> ResponseReturnValue:
    """`{"nodes": [...]}`."""
    return jsonify({"nodes": data.nodes(db())})


@bp.errorhandler(404)
def not_found(error: Any) -> ResponseReturnValue:
    return jsonify({"error": getattr(error, "description", "not found")}), 404
