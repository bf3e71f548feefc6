"""POST actions: abort a build, recheck or force-build a patchset, drain,
undrain or enable a node.

Each needs a logged-in operator (dashboard/auth.py: a browser is sent to the
login page, a script gets 401) and the session's CSRF token, commits in its
own transaction with its audit entry (who, what, on what, from where), and
redirects back with a flash message.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from flask import Blueprint, abort, flash, redirect, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.wrappers import Response

from ci import audit, node_recovery, nodes, queue
from ci.audit import Actor, Target
from ci.config import Config
from ci.models import Build, Change, NodeState, Patchset
from dashboard.auth import current_actor, is_local_path, require_operator
from dashboard.context import check_csrf, config, db
from listener.filters import jobs_for, needs_files, watched_projects

logger = logging.getLogger(__name__)

bp = Blueprint("actions", __name__)

RECHECK_REASON = "manual recheck"
FORCED_REASON = "forced from the dashboard"


@bp.before_request
def _operator_and_csrf() -> ResponseReturnValue | None:
    refused = require_operator()
    if refused is not None:
        return refused
    check_csrf()
    return None


def _actor() -> Actor:
    actor = current_actor()
    if actor is None:  # require_operator ran first: only a bug gets here
        abort(401)
    return actor


def _back(default: str) -> Response:
    """Redirect to the form's `next` page if it is one of ours, else to default."""
    target = request.form.get("next", "")
    return redirect(target if is_local_path(target) else default, code=303)


@bp.post("/builds/<int:build_id>/abort")
def abort_build(build_id: int) -> Response:
    """Abort a queued or running build (the worker stops a running one)."""
    session, actor = db(), _actor()
    with session.begin():
        if session.get(Build, build_id) is None:
            abort(404, description=f"no build {build_id}")
        stopped = queue.request_abort(session, build_id,
                                      f"aborted from the dashboard by {actor.name}")
        audit.record(session, actor, "abort", Target(audit.BUILD, str(build_id)),
                     "aborted" if stopped else "had already finished")
    if stopped:
        logger.info("build %s aborted from the dashboard by %s", build_id, actor.name)
        flash(f"Build {build_id} aborted.", "ok")
    else:
        flash(f"Build {build_id} had already finished.", "warning")
    return _back(url_for("pages.build", build_id=build_id))


@dataclass(frozen=True)
class _Target:
    project: str
    branch: str


@dataclass(frozen=True)
class RecheckOffer:
    """What a patchset's page may offer: the jobs a recheck queues, or (none) a Force build."""

    jobs: list[str]  # what a Gerrit `recheck` comment would queue
    forcible: list[str]  # the project's jobs for this branch, whatever the files
    files_known: bool

    @property
    def excluded(self) -> bool:
        """Watched, but the file filter (or unknown files) keeps every job out."""
        return not self.jobs and bool(self.forcible)


def offer_for(cfg: Config, project: str, branch: str, files: list[str] | None) -> RecheckOffer:
    """The recheck rules of the listener (listener/filters.py), for one patchset."""
    target = _Target(project, branch)
    forcible: list[str] = []
    for watching in watched_projects(cfg, project, branch):
        forcible.extend(j for j in watching.jobs if j not in forcible)
    return RecheckOffer(jobs_for(cfg, target, files), forcible, files is not None)


@bp.app_template_global()
def recheck_offer(number: int, patchset: int) -> RecheckOffer | None:
    """For the change and build pages: which of Recheck and Force build to show."""
    row = _patchset(db(), number, patchset)
    if row is None:
        return None
    return offer_for(config(), row.change.project, row.change.branch, row.files)


def _patchset(session: Session, number: int, patchset: int) -> Patchset | None:
    return session.scalar(select(Patchset).join(Change).where(
        Change.number == number, Patchset.number == patchset))


@bp.post("/changes/<int:number>/<int:patchset>/recheck")
def recheck(number: int, patchset: int) -> Response:
    """Queue the jobs a Gerrit `recheck` comment would: the same project, branch
    and file filters, on the current patchset only."""
    session, actor = db(), _actor()
    with session.begin():
        row = _patchset(session, number, patchset)
        if row is None:
            abort(404, description=f"no patchset {number},{patchset}")
        target = _Target(row.change.project, row.change.branch)
        jobs = jobs_for(config(), target, row.files)
        queued, waiting = _enqueue(session, row, jobs, RECHECK_REASON)
        why_none = "" if jobs else _why_no_jobs(target, row.files)
        audit.record(session, actor, "recheck",
                     Target(audit.PATCHSET, audit.patchset_id(number, patchset)),
                     _outcome(queued, waiting, why_none))
    if why_none:
        flash(why_none, "error")
    if queued:
        logger.info("manual recheck of %s,%s by %s queued %s", number, patchset, actor.name,
                    queued)
        flash(f"Queued {', '.join(queued)} for {number},{patchset}.", "ok")
    _flash_not_queued(number, patchset, waiting)
    return _back(url_for("pages.change", number=number))


@bp.post("/changes/<int:number>/<int:patchset>/force")
def force_build(number: int, patchset: int) -> Response:
    """An operator's explicit build of a patchset the file filter excludes: the
    project's jobs for its branch, each build marked `forced_by` (the vote says so)."""
    session, actor = db(), _actor()
    with session.begin():
        row = _patchset(session, number, patchset)
        if row is None:
            abort(404, description=f"no patchset {number},{patchset}")
        offer = offer_for(config(), row.change.project, row.change.branch, row.files)
        if offer.jobs:
            # Not excluded: a plain recheck runs it, and its vote must not say "forced".
            flash(f"{number},{patchset} is not excluded by the file filter: use Recheck.",
                  "error")
            return _back(url_for("pages.change", number=number))
        if not offer.forcible:
            flash(_why_no_jobs(_Target(row.change.project, row.change.branch), row.files),
                  "error")
            return _back(url_for("pages.change", number=number))
        queued, waiting = _enqueue(session, row, offer.forcible, FORCED_REASON,
                                   forced_by=actor.name)
        audit.record(session, actor, "force-build",
                     Target(audit.PATCHSET, audit.patchset_id(number, patchset)),
                     _outcome(queued, waiting, ""))
    if queued:
        logger.info("forced build of %s,%s by %s: %s", number, patchset, actor.name, queued)
        flash(f"Forced {', '.join(queued)} for {number},{patchset}; the vote will say "
              f"it was forced by {actor.name}.", "ok")
    _flash_not_queued(number, patchset, waiting)
    return _back(url_for("pages.change", number=number))


def _enqueue(session: Session, row: Patchset, jobs: Sequence[str], reason: str, *,
             forced_by: str | None = None) -> tuple[list[str], list[str]]:
    """Queue `jobs` on the patchset: ("job (build N)" queued, jobs not queued)."""
    queued: list[str] = []
    waiting: list[str] = []
    for job in jobs:
        build = queue.enqueue(session, row, job, reason=reason)
        if build is None:
            waiting.append(job)
            continue
        if forced_by is not None:
            build.forced_by = forced_by
        queued.append(f"{job} (build {build.id})")
    return queued, waiting


def _flash_not_queued(number: int, patchset: int, waiting: list[str]) -> None:
    if waiting:
        flash(f"Not queued (already queued, or {number},{patchset} is not the current "
              f"patchset): {', '.join(waiting)}.", "warning")


def _outcome(queued: list[str], waiting: list[str], why_none: str) -> str:
    parts = []
    if queued:
        parts.append("queued " + ", ".join(queued))
    if waiting:
        parts.append("not queued " + ", ".join(waiting))
    if why_none:
        parts.append(why_none)
    return "; ".join(parts)


def _why_no_jobs(target: _Target, files: list[str] | None) -> str:
    """Nothing to queue: say which filter excluded the patchset."""
    if not watched_projects(config(), target.project, target.branch):
        return f"Not queued: {target.project} {target.branch} is not watched."
    if files is None and needs_files(config(), target.project, target.branch):
        return ("Not queued: the patchset's files are not known here; "
                "comment 'recheck' on the change in Gerrit.")
    return "Not queued: the patchset touches none of the watched files."


def _set_drained(name: str, drained: bool) -> Response:
    session, actor = db(), _actor()
    verb = "drained" if drained else "undrained"
    with session.begin():
        if not nodes.set_drained(session, name, drained):
            abort(404, description=f"no node {name}")
        audit.record(session, actor, "drain" if drained else "undrain",
                     Target(audit.NODE, name), verb)
    logger.info("node %s %s from the dashboard by %s", name, verb, actor.name)
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
    """Ask for an offline node back: a worker cleans and checks it first, as
    `hyperv-ci nodes enable` does, and leaves it offline saying why if either fails."""
    session, actor = db(), _actor()
    refused = ""
    with session.begin():
        try:
            node = node_recovery.request_enable(session, name, actor.name)
        except node_recovery.NodeBusy as exc:
            node, refused = None, str(exc)  # refused before any change
        if node is None and not refused:
            abort(404, description=f"no node {name}")
        already = node is not None and node.state != NodeState.OFFLINE
        detail = refused or ("already in service" if already
                             else "requested: a worker cleans and checks it first")
        audit.record(session, actor, "enable", Target(audit.NODE, name), detail)
    if refused:
        flash(f"Node {name} not enabled: {refused}.", "error")
    elif already:
        flash(f"Node {name} is already in service.", "warning")
    else:
        flash(f"Node {name}: a worker will clean and health-check it, then put it back "
              "(or keep it offline, saying why).", "ok")
    return _back(url_for("pages.nodes"))
