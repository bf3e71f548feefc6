"""The build history: `/builds` (filters, keyset pages) and the change page's extras.

The view functions return the plain dicts both the pages and the JSON API
(dashboard/api.py) show; the queries are the core's (ci/build_history.py).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, render_template, request, url_for
from sqlalchemy import select
from sqlalchemy.orm import Session

from ci.build_history import (
    DEFAULT_LIMIT,
    BuildFilter,
    Cursor,
    list_builds,
    nodes_of_builds,
    parse_filter,
)
from ci.models import BuildState, Node, TestResult
from ci.test_history import FAILING
from dashboard import data
from dashboard.context import config, db

bp = Blueprint("history", __name__)
FAILED_TESTS_SHOWN = 5  # per build on the change page; the build page has them all


def request_filter() -> BuildFilter:
    """The request's filter; a 400 naming the bad parameter."""
    try:
        return parse_filter(request.args)
    except ValueError as exc:
        abort(400, description=str(exc))


def request_cursor(name: str = "after") -> Cursor | None:
    """The request's `after` (older) or `before` (newer) cursor; a 400 when forged."""
    text = request.args.get(name, "")
    if not text:
        return None
    if name == "before" and request.args.get("after"):
        abort(400, description="'after' and 'before' go one way each: give one")
    try:
        return Cursor.decode(text)
    except ValueError:
        abort(400, description=f"invalid {name!r} cursor: follow a link of a page")


def request_limit(default: int = DEFAULT_LIMIT) -> int:
    value = request.args.get("limit", "")
    if not value:
        return default
    if not value.isdigit():
        abort(400, description="limit must be a number")
    return int(value)


def builds_view(session: Session, where: BuildFilter, after: Cursor | None,
                limit: int, endpoint: str = "history.builds",
                before: Cursor | None = None) -> dict[str, Any]:
    """One page of the build list: two statements (the builds with their patchsets and
    changes, their nodes; a third when a baseline build is on the page), none per row.
    `next_url` is the older page of `endpoint` (the HTML list or the API's), `prev_url`
    the newer one (None on the newest page)."""
    page = list_builds(session, where, after, limit, before=before)
    nodes = nodes_of_builds(session, [b.id for b in page.builds])
    builds = []
    for build in page.builds:
        item = data.build_dict(build)
        item["nodes"] = [{"name": name, "url": url_for("history.builds", node=name)}
                         for name in nodes.get(build.id, [])]
        item["change_page"] = (url_for("pages.change", number=item["change"])
                               if item["change"] is not None else None)  # None: a baseline
        builds.append(item)
    next_cursor = page.next_cursor.encode() if page.next_cursor is not None else None
    prev_cursor = page.prev_cursor.encode() if page.prev_cursor is not None else None
    params: dict[str, Any] = {**where.as_params(),
                              "limit": limit if limit != DEFAULT_LIMIT else None}
    return {
        "filter": where.as_params(),
        "builds": builds,
        "next_cursor": next_cursor,
        "next_url": url_for(endpoint, **params, after=next_cursor) if next_cursor else None,
        "prev_cursor": prev_cursor,
        "prev_url": url_for(endpoint, **params, before=prev_cursor) if prev_cursor else None,
    }


def filter_choices(session: Session) -> dict[str, list[str]]:
    """What the filter form offers: configured projects and jobs, results, known nodes."""
    cfg = config()
    return {
        "projects": sorted(p.name for p in cfg.projects),
        "jobs": sorted(cfg.jobs),
        "results": [s.value for s in BuildState],
        "nodes": list(session.scalars(select(Node.name).order_by(Node.name))),
    }


@bp.get("/builds")
def builds() -> str:
    """Every build, newest first, filtered; 'Older' and 'Newer' follow keyset cursors."""
    session = db()
    view = builds_view(session, request_filter(), request_cursor(), request_limit(),
                       before=request_cursor("before"))
    return render_template("builds.html", view=view, choices=filter_choices(session),
                           paged=bool(request.args.get("after") or request.args.get("before")))


def change_extras(session: Session, change: dict[str, Any]) -> dict[str, Any]:
    """The change view with each build's nodes and first failed tests (two statements)."""
    builds = [b for ps in change["patchsets"] for b in ps["builds"]]
    ids = [b["id"] for b in builds]
    nodes = nodes_of_builds(session, ids)
    failed: dict[int, list[str]] = {}
    if ids:
        rows = session.execute(select(TestResult.build_id, TestResult.test_id)
                               .where(TestResult.build_id.in_(ids),
                                      TestResult.status.in_(sorted(FAILING)))
                               .order_by(TestResult.build_id, TestResult.id))
        for build_id, test_id in rows:
            failed.setdefault(build_id, []).append(test_id)
    for build in builds:
        build["nodes"] = [{"name": name, "url": url_for("history.builds", node=name)}
                          for name in nodes.get(build["id"], [])]
        names = failed.get(build["id"], [])
        build["failed_tests"] = [
            {"test_id": name, "url": url_for("tests.test", test_id=name)}
            for name in names[:FAILED_TESTS_SHOWN]]
        build["failed_test_count"] = len(names)
    change["builds_url"] = url_for("history.builds", change=change["number"])
    return change


def change_view(session: Session, number: int) -> dict[str, Any] | None:
    """Every patchset of a change with its builds, their nodes and failures."""
    change = data.change_detail(session, number)
    return None if change is None else change_extras(session, change)
