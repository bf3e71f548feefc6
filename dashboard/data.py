"""Rows → plain dicts: the one shape both the HTML pages and the JSON API show.

Everything here reads only; the values are untrusted Gerrit text and stay
data (the templates escape them, the API encodes them as JSON strings).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from flask import url_for
from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from ci import queue, stream_status
from ci.models import (
    Build,
    BuildState,
    BuildStep,
    Change,
    Event,
    Node,
    Patchset,
    ReportState,
    StepState,
    utcnow,
)
from dashboard.context import config

# subunit statuses that make a run fail, shown first on the build page.
FAILURE_STATUSES = ("fail", "uxsuccess")
STATUS_ORDER = ("fail", "uxsuccess", "flaky", "success", "xfail", "skip")
RECENT_LIMIT = 50


def iso(value: datetime | None) -> str | None:
    """An ISO-8601 UTC timestamp, or None."""
    return value.isoformat() if value is not None else None


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    """Elapsed seconds from start to end (or to now while still running)."""
    if start is None:
        return None
    return round(((end or utcnow()) - start).total_seconds(), 1)


def build_log_url(build: Build) -> str | None:
    """Where the build's logs are: its published URL, else our /logs/ view of log_path."""
    if build.log_url:
        return build.log_url
    if not build.log_path:
        return None
    root = config().logs.dir.resolve()
    path = Path(build.log_path)
    if not path.is_absolute():
        path = root / path
    try:
        rel = path.resolve().relative_to(root).as_posix()
    except ValueError:
        return None  # published somewhere we do not serve
    return url_for("logs.serve", subpath="" if rel == "." else rel + "/")


def _join_url(base: str | None, name: str | None) -> str | None:
    if not base or not name:
        return None
    return base.rstrip("/") + "/" + quote(name)


def build_dict(build: Build) -> dict[str, Any]:
    """The summary of one build, as listed on the status and change pages."""
    patchset = build.patchset
    change = patchset.change
    return {
        "id": build.id,
        "job": build.job,
        "state": build.state,
        "reason": build.reason,
        "attempt": build.attempt,
        "change": change.number,
        "patchset": patchset.number,
        "project": change.project,
        "branch": change.branch,
        "subject": change.subject,
        "owner": change.owner_name,
        "change_url": change.url,
        "created": iso(build.created_at),
        "started": iso(build.started_at),
        "finished": iso(build.finished_at),
        "duration": seconds_between(build.started_at, build.finished_at),
        "log_url": build_log_url(build),
        "summary": build.summary,
        "worker": build.worker,
        "abort_requested": build.abort_requested,
        "finished_state": BuildState(build.state).finished,
        "url": url_for("pages.build", build_id=build.id),
    }


def step_dict(step: BuildStep, log_base: str | None) -> dict[str, Any]:
    """One step of a build, with its live output tail."""
    return {
        "id": step.id,
        "name": step.name,
        "node": step.node,
        "state": step.state,
        "started": iso(step.started_at),
        "finished": iso(step.finished_at),
        "duration": seconds_between(step.started_at, step.finished_at),
        "exit_code": step.exit_code,
        "log_name": step.log_name,
        "log_url": _join_url(log_base, step.log_name),
        "message": step.message,
        "output_tail": step.output_tail,
    }


def node_dict(node: Node) -> dict[str, Any]:
    """One node of the pool."""
    return {
        "name": node.name,
        "label": node.label,
        "address": node.address,
        "state": node.state,
        "offline_cause": node.offline_cause,
        "drained": node.drained,
        "build_id": node.build_id,
        "health_failures": node.health_failures,
        "last_checked": iso(node.last_checked_at),
        "message": node.message,
        "updated": iso(node.updated_at),
    }


def _preload(session: Session, builds: Iterable[Build]) -> None:
    """Load the builds' patchsets and changes in one query (not one per row)."""
    ids = {b.patchset_id for b in builds}
    if ids:
        list(session.scalars(select(Patchset).options(selectinload(Patchset.change))
                             .where(Patchset.id.in_(ids))))


def _current_steps(session: Session, builds: Sequence[Build]) -> dict[int, BuildStep]:
    """The step each running build is in: its running step, else its latest."""
    current: dict[int, BuildStep] = {}
    query = (select(BuildStep).where(BuildStep.build_id.in_([b.id for b in builds]))
             .order_by(BuildStep.id))
    for step in session.scalars(query):
        held = current.get(step.build_id)
        if held is None or held.state != StepState.RUNNING or step.state == StepState.RUNNING:
            current[step.build_id] = step
    return current


def nodes(session: Session) -> list[dict[str, Any]]:
    """The node pool, by label then name."""
    return [node_dict(n) for n in session.scalars(select(Node).order_by(Node.label, Node.name))]


def status(session: Session) -> dict[str, Any]:
    """Queued, running and recently finished builds, and the pool."""
    queued = queue.queued_builds(session)
    running = queue.running_builds(session)
    recent = [b for b in queue.recent_builds(session, RECENT_LIMIT)
              if BuildState(b.state).finished]
    _preload(session, [*queued, *running, *recent])
    steps = _current_steps(session, running) if running else {}
    running_dicts = []
    for build in running:
        item = build_dict(build)
        step = steps.get(build.id)
        item["current_step"] = step.name if step is not None else None
        item["current_step_node"] = step.node if step is not None else None
        running_dicts.append(item)
    return {
        "queued": [build_dict(b) for b in queued],
        "running": running_dicts,
        "recent": [build_dict(b) for b in recent],
        "nodes": nodes(session),
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


def count_tests(statuses: Iterable[str]) -> dict[str, int]:
    """How many tests ended in each status, failures first."""
    counts = Counter(statuses)
    ordered = {s: counts.pop(s) for s in STATUS_ORDER if s in counts}
    ordered.update(sorted(counts.items()))
    return ordered


def build_detail(session: Session, build_id: int) -> dict[str, Any] | None:
    """One build with its steps, tests (failures first) and report; None if unknown."""
    build = session.scalar(
        select(Build).where(Build.id == build_id).options(
            selectinload(Build.steps), selectinload(Build.tests), selectinload(Build.report),
            selectinload(Build.patchset).selectinload(Patchset.change))
    )
    if build is None:
        return None
    item = build_dict(build)
    # Only the current patchset can be rechecked (ci.queue.enqueue refuses older ones).
    item["current_patchset"] = session.scalar(
        select(func.max(Patchset.number)).where(Patchset.change_id == build.patchset.change_id))
    item["steps"] = [step_dict(s, item["log_url"]) for s in build.steps]
    tests = sorted(build.tests, key=lambda t: (t.status not in FAILURE_STATUSES, t.id))
    item["test_counts"] = count_tests(t.status for t in tests)
    item["tests"] = [
        {"test_id": t.test_id, "status": t.status, "duration": t.duration,
         "details": t.details, "failed": t.status in FAILURE_STATUSES}
        for t in tests
    ]
    report = build.report
    item["report"] = None if report is None else {
        "state": report.state, "label": report.label, "vote": report.vote,
        "message": report.message, "attempts": report.attempts,
        "created": iso(report.created_at), "sent": iso(report.sent_at),
        "last_error": report.last_error, "label_refused": report.label_refused,
        # Why nothing was posted: the change closed first ("change closed (MERGED)").
        "not_sent": report.last_error if report.state == ReportState.NOT_SENT else None,
    }
    return item


def change_detail(session: Session, number: int) -> dict[str, Any] | None:
    """A change with every patchset and each patchset's builds, newest first."""
    change = session.scalar(
        select(Change).where(Change.number == number).options(
            selectinload(Change.patchsets).selectinload(Patchset.builds))
    )
    if change is None:
        return None
    patchsets = []
    for patchset in reversed(change.patchsets):
        builds = sorted(patchset.builds, key=lambda b: b.id, reverse=True)
        patchsets.append({
            "number": patchset.number, "revision": patchset.revision, "ref": patchset.ref,
            "uploader": patchset.uploader_name, "created": iso(patchset.created_at),
            "files": patchset.files or [], "builds": [build_dict(b) for b in builds],
        })
    return {
        "number": change.number, "project": change.project, "branch": change.branch,
        "subject": change.subject, "owner": change.owner_name, "url": change.url,
        "status": change.status, "patchsets": patchsets,
    }
