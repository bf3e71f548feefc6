"""POST actions: abort a build, recheck a patchset, drain, undrain or enable a node.

Every form carries the session's CSRF token; each action commits in its own
transaction and redirects back with a flash message.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flask import Blueprint, abort, flash, redirect, request, url_for
from sqlalchemy import select
from werkzeug.wrappers import Response

from ci import queue
from ci.models import Build, Change, Node, Patchset
from dashboard.context import check_csrf, config, db
from listener.filters import jobs_for, needs_files, watched_projects
from runners import pool

logger = logging.getLogger(__name__)

bp = Blueprint("actions", __name__)

RECHECK_REASON = "manual recheck"


@bp.before_request
def _csrf() -> None:
    check_csrf()


def _back(default: str) -> Response:
    """Redirect to the form's `next` page if it is one of ours, else to default."""
    target = request.form.get("next", "")
    # Only a local absolute path: never another host (open redirect).
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        target = default
    return redirect(target, code=303)


@bp.post("/builds/<int:build_id>/abort")
def abort_build(build_id: int) -> Response:
    """Abort a queued or running build (the worker stops a running one)."""
    session = db()
    with session.begin():
        if session.get(Build, build_id) is None:
            abort(404, description=f"no build {build_id}")
        stopped = queue.request_abort(session, build_id, "aborted from the dashboard")
    if stopped:
        logger.info("build %s aborted from the dashboard", build_id)
        flash(f"Build {build_id} aborted.", "ok")
    else:
        flash(f"Build {build_id} had already finished.", "warning")
    return _back(url_for("pages.build", build_id=build_id))


@bp.post("/changes/<int:number>/<int:patchset>/recheck")
def recheck(number: int, patchset: int) -> Response:
    """Queue the jobs a Gerrit `recheck` comment would: the same project, branch
    and file filters, on the current patchset only."""
    session = db()
    queued: list[str] = []
    waiting: list[str] = []
    with session.begin():
        row = session.scalar(
            select(Patchset).join(Change).where(Change.number == number,
                                                Patchset.number == patchset))
        if row is None:
            abort(404, description=f"no patchset {number},{patchset}")
        target = _Target(row.change.project, row.change.branch)
        jobs = jobs_for(config(), target, row.files)
        for job in jobs:
            build = queue.enqueue(session, row, job, reason=RECHECK_REASON)
            if build is None:
                waiting.append(job)
            else:
                queued.append(f"{job} (build {build.id})")
    if not jobs:
        flash(_why_no_jobs(target, row.files), "error")
    if queued:
        logger.info("manual recheck of %s,%s queued %s", number, patchset, queued)
        flash(f"Queued {', '.join(queued)} for {number},{patchset}.", "ok")
    if waiting:
        flash(f"Not queued (already queued, or {number},{patchset} is not the current "
              f"patchset): {', '.join(waiting)}.", "warning")
    return _back(url_for("pages.change", number=number))


@dataclass(frozen=True)
class _Target:
    project: str
    branch: str


def _why_no_jobs(target: _Target, files: list[str] | None) -> str:
    """Nothing to queue: say which filter excluded the patchset."""
    if not watched_projects(config(), target.project, target.branch):
        return f"Not queued: {target.project} {target.branch} is not watched."
    if files is None and needs_files(config(), target.project, target.branch):
        return ("Not queued: the patchset's files are not known here; "
                "comment 'recheck' on the change in Gerrit.")
    return "Not queued: the patchset touches none of the watched files."


def _set_drained(name: str, drained: bool) -> Response:
    session = db()
    with session.begin():
        node = session.scalar(select(Node).where(Node.name == name))
        if node is None:
            abort(404, description=f"no node {name}")
        node.drained = drained
    verb = "drained" if drained else "undrained"
    logger.info("node %s %s from the dashboard", name, verb)
    flash(f"Node {name} {verb}.", "ok")
    return _back(url_for("pages.nodes"))


@bp.post("/nodes/<name>/drain")
def drain(name: str) -> Response:
    """Stop giving this node new builds (its current build finishes)."""
    return _set_drained(name, True)


@bp.post("/nodes/<name>/undrain")
def undrain(name: str) -> Response:
    """Put a drained node back into service."""
    return _set_drained(name, False)


@bp.post("/nodes/<name>/enable")
def enable(name: str) -> Response:
    """Put an offline node back into the pool: the operator vouches that it is clean."""
    session = db()
    busy = False
    with session.begin():
        try:
            if pool.enable(session, name) is None:
                abort(404, description=f"no node {name}")
        except pool.NodeBusy:
            busy = True  # refused before any change: its build decides its state
    if busy:
        flash(f"Node {name} holds a build: enable it after that build ends.", "error")
    else:
        logger.info("node %s enabled from the dashboard", name)
        flash(f"Node {name} enabled.", "ok")
    return _back(url_for("pages.nodes"))
