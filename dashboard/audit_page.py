"""`/audit`: every operator action, newest first; and the `audit_entries`
template function the build and node pages' `_audit.html` partial calls."""

from __future__ import annotations

from flask import Blueprint, render_template, request

from ci import audit
from dashboard.context import db

bp = Blueprint("audit", __name__)

PAGE_SIZE = 100
PARTIAL_SIZE = 20


@bp.get("/audit")
def audit_list() -> str:
    """The audit log, paged back by entry id (`?before=ID`), optionally one kind of target."""
    before = request.args.get("before", type=int)
    kind = request.args.get("kind")
    if kind not in audit.KINDS:
        kind = None
    rows = audit.entries(db(), kind=kind, before=before, limit=PAGE_SIZE + 1)
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    return render_template("audit.html", entries=rows, kind=kind,
                           older=rows[-1].id if more and rows else None)


@bp.app_template_global()
def audit_entries(targets: list[tuple[str, object]],
                  kind: str | None = None) -> list[audit.Entry]:
    """The newest actions on any of these (kind, id) targets, or on every target of
    `kind`, for a page's actions list."""
    return audit.entries(db(), targets=[audit.Target(k, str(target_id))
                                        for k, target_id in targets],
                         kind=kind, limit=PARTIAL_SIZE)
