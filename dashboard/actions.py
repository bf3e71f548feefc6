"""POST actions: abort a build, recheck a patchset, drain, undrain or enable a node.

Every form carries the session's CSRF token; each action commits in its own
transaction and redirects back with a flash message.
"""

from __future__ import annotations

import logging

from flask import Blueprint, abort, flash, redirect, request, url_for
from sqlalchemy import select
from werkzeug.wrappers import Response

from ci import queue
from ci.models import Build, Change, Node, Patchset
from dashboard.context import check_csrf, config, db
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
    """Queue every job configured for the change's project on this patchset."""
    session = db()
    queued: list[str] = []
    waiting: list[str] = []
    with session.begin():
        row = session.scalar(
            select(Patchset).join(Change).where(Change.number == number,
                                                Patchset.number == patchset))
        if row is None:
            abort(404, description=f"no patchset {number},{patchset}")
        jobs = _jobs_for(row.change.project)
        for job in jobs:
            build = queue.enqueue(session, row, job, reason=RECHECK_REASON)
            if build is None:
                waiting.append(job)
            else:
                queued.append(f"{job} (build {build.id})")
    if not jobs:
        flash(f"No jobs are configured for project {row.change.project}.", "error")
    if queued:
        logger.info("manual recheck of %s,%s queued %s", number, patchset, queued)
        flash(f"Queued {', '.join(queued)} for {number},{patchset}.", "ok")
    if waiting:
        flash(f"Not queued (already queued, or {number},{patchset} is not the current "
              f"patchset): {', '.join(waiting)}.", "warning")
    return _back(url_for("pages.change", number=number))


def _jobs_for(project: str) -> list[str]:
    jobs: list[str] = []
    for entry in config().projects:
        if entry.name == project:
            jobs.extend(j for j in entry.jobs if j not in jobs)
    return jobs


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
