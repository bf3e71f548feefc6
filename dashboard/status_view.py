"""The status page's data (`/`, its refresh fragment and `/api/status`): queued builds
with their place and why they wait, running ones with their step and ETA, the
newest finished ones, the pool, the event backlog and the stream's refusal.

The page is refreshed every few seconds by every open browser, so its builds
are read as plain rows (Core, one statement for the active and the recent
ones, built once with their joins) rather than as ORM objects: the
shape is data.build_dict's all the same (data.summary_dict).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import case, func, literal, select, union_all
from sqlalchemy.orm import Session

from ci import stream_status
from ci.models import BaselineRun, Build, BuildState, Change, Event, Patchset, utcnow
from dashboard.data import (
    ACTIVE,
    RECENT_LIMIT,
    current_steps,
    eta_dict,
    expected_durations,
    iso,
    node_dict,
    node_rows,
    progress_dict,
    queue_waits_of,
    summary_dict,
)

_BUILDS = Build.__table__.c
_LISTED = (select(_BUILDS.id, _BUILDS.job, _BUILDS.state, _BUILDS.reason, _BUILDS.attempt,
                  _BUILDS.created_at, _BUILDS.started_at, _BUILDS.finished_at,
                  _BUILDS.log_url, _BUILDS.log_path, _BUILDS.summary, _BUILDS.worker,
                  _BUILDS.abort_requested, _BUILDS.patchset_id,
                  Patchset.number.label("ps_number"), Change.number.label("change_number"),
                  Change.project, Change.branch, Change.subject, Change.owner_name,
                  Change.url, BaselineRun.project.label("baseline_project"),
                  BaselineRun.branch.label("baseline_branch"))
           .select_from(Build.__table__)
           .outerjoin(Patchset, Patchset.id == _BUILDS.patchset_id)
           .outerjoin(Change, Change.id == Patchset.change_id)
           .outerjoin(BaselineRun, BaselineRun.id == _BUILDS.baseline_id))
# The active builds, oldest first, then the newest finished ones: one round trip.
# (SQLite takes ORDER BY/LIMIT in a union only inside a subquery.)
_PARTS = union_all(
    _LISTED.add_columns(literal(0).label("part"))
    .where(_BUILDS.state.in_(ACTIVE)).subquery().select(),
    _LISTED.add_columns(literal(1).label("part"))
    .where(_BUILDS.state.not_in(ACTIVE)).order_by(_BUILDS.id.desc())
    .limit(RECENT_LIMIT).subquery().select()).subquery()
_ACTIVE_AND_RECENT = select(_PARTS).order_by(
    _PARTS.c.part, case((_PARTS.c.part == 0, _PARTS.c.id), else_=-_PARTS.c.id))


def listed_dict(row: Any) -> dict[str, Any]:
    """data.build_dict of a row of _LISTED."""
    if row.change_number is not None:
        return summary_dict(row, row.change_number, row.ps_number, row.project, row.branch,
                            row.subject, row.owner_name, row.url)
    # A baseline build tests a branch tip: its run names project and branch.
    baseline = row.patchset_id is None and row.baseline_branch is not None
    return summary_dict(row, None, row.ps_number,
                        row.baseline_project if baseline else "",
                        row.baseline_branch if baseline else "",
                        f"baseline of {row.baseline_branch}" if baseline else "", "", "")


def status(session: Session) -> dict[str, Any]:
    """Queued builds (with their place and why they wait), running ones (with an
    ETA), recently finished ones, the pool."""
    rows = session.execute(_ACTIVE_AND_RECENT).all()
    queued = [b for b in rows if b.part == 0 and b.state == BuildState.QUEUED]
    running = [b for b in rows if b.part == 0 and b.state == BuildState.RUNNING]
    recent = [b for b in rows if b.part == 1]
    pool = node_rows(session)
    steps = current_steps(session, running) if running else {}
    expected = expected_durations(session, (b.job for b in running))
    now = utcnow()
    running_dicts = []
    for build in running:
        item = listed_dict(build)
        step = steps.get(build.id)
        item["current_step"] = step.name if step is not None else None
        item["current_step_node"] = step.node if step is not None else None
        item["progress"] = progress_dict(step) if step is not None else None
        item["eta"] = eta_dict(build, expected, now)
        running_dicts.append(item)
    waits = queue_waits_of(queued, pool) if queued else {}
    queued_dicts = []
    for build in queued:
        item = listed_dict(build)
        wait = waits[build.id]
        item["position"] = wait.position
        item["waiting_for"] = wait.reason
        item["can_start"] = wait.can_start
        queued_dicts.append(item)
    return {
        "queued": queued_dicts,
        "running": running_dicts,
        "recent": [listed_dict(b) for b in recent],
        "nodes": [node_dict(n) for n in pool],
        "events": events_summary(session),
        "stream_error": stream_error(session),
    }


def stream_error(session: Session) -> dict[str, Any] | None:
    """Why Gerrit refuses the listener's event stream, while it does (None: it does not)."""
    error = stream_status.read(session)
    return None if error is None else {"message": error.message, "at": iso(error.at)}


def events_summary(session: Session, shown: int = 5) -> dict[str, Any]:
    """Events still to handle, and the newest ones the scheduler gave up on."""
    pending = session.scalar(select(func.count()).select_from(Event)
                             .where(Event.processed_at.is_(None))) or 0
    failed = session.execute(
        select(Event.id, Event.type, Event.failed_at, Event.outcome)
        .where(Event.failed_at.is_not(None)).order_by(Event.failed_at.desc()).limit(shown)).all()
    return {
        "pending": int(pending),
        "failed": [{"id": r.id, "type": r.type, "failed_at": iso(r.failed_at),
                    "reason": (r.outcome or "").removeprefix("failed: ")} for r in failed],
    }
