"""The HTML pages: status, one build, one change, the node pool."""

from __future__ import annotations

from flask import Blueprint, abort, render_template, request

from dashboard import data, history, status_view
from dashboard.context import db

bp = Blueprint("pages", __name__)


def _fragment() -> bool:
    # The auto-refresh script asks for just the part of the page that changes.
    return request.args.get("fragment") == "1"


@bp.get("/")
def status() -> str:
    """Queued, running and recent builds; refreshes itself."""
    view = status_view.status(db())
    if _fragment():
        return render_template("_status_tables.html", status=view)
    return render_template("status.html", status=view)


@bp.get("/builds/<int:build_id>")
def build(build_id: int) -> str:
    """One build: steps with live output, tempest results, the report, actions."""
    view = data.build_detail(db(), build_id, **data.request_tests_page())
    if view is None:
        abort(404, description=f"no build {build_id}")
    return render_template("build.html", build=view)


@bp.get("/changes/<int:number>")
def change(number: int) -> str:
    """Every patchset of a change and the builds of each."""
    view = history.change_view(db(), number)  # with each build's nodes and failed tests
    if view is None:
        abort(404, description=f"no change {number}")
    return render_template("change.html", change=view)


@bp.get("/nodes")
def nodes() -> str:
    """The node pool, with drain/undrain."""
    view = data.nodes(db())
    if _fragment():
        return render_template("_nodes_table.html", nodes=view)
    return render_template("nodes.html", nodes=view)
