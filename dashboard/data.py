"""Rows → plain dicts: the one shape both the HTML pages and the JSON API show.

Everything here reads only; the values are untrusted Gerrit text and stay
data (the templates escape them, the API encodes them as JSON strings).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from flask import abort, g, request, url_for
from sqlalchemy import func, select, union_all
from sqlalchemy.orm import Session, joinedload, selectinload

from ci.models import (
    Build,
    BuildState,
    BuildStep,
    Change,
    Node,
    Patchset,
    ReportState,
    StepState,
    TestResult,
    utcnow,
)
from dashboard import live
from dashboard.context import config

# subunit statuses that make a run fail, shown first on the build page.
FAILURE_STATUSES = ("fail", "uxsuccess")
STATUS_ORDER = ("fail", "uxsuccess", "flaky", "success", "xfail", "skip")
RECENT_LIMIT = 50
# The build page: failures (and flaky tests) shown with their tracebacks, and
# the full list a page at a time (a tempest run has 1,500 tests).
FAILURES_SHOWN = 25
TESTS_PER_PAGE = 100
ACTIVE = (BuildState.QUEUED, BuildState.RUNNING)
# The builds whose run time predicts a running one's: they ran to a verdict.
ETA_STATES = (BuildState.SUCCEEDED, BuildState.FAILED)


def iso(value: datetime | None) -> str | None:
    """An ISO-8601 UTC timestamp, or None."""
    return value.isoformat() if value is not None else None


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    """Elapsed seconds from start to end (or to now while still running)."""
    if start is None:
        return None
    return round(((end or utcnow()) - start).total_seconds(), 1)


_SAMPLE_ID = 987654321


def build_url(build_id: int) -> str:
    """url_for("pages.build", build_id=build_id), its rule built once a request: a page
    links up to thousands of builds, and each url_for is a routing build of its own."""
    prefix = g.get("build_url_prefix")
    if prefix is None:
        sample, digits = url_for("pages.build", build_id=_SAMPLE_ID), str(_SAMPLE_ID)
        # The id is the rule's last part; anything else is built the long way.
        prefix = g.build_url_prefix = sample[:-len(digits)] if sample.endswith(digits) else ""
    return prefix + str(int(build_id)) if prefix else url_for("pages.build", build_id=build_id)


def build_log_url(build: Build) -> str | None:
    """Where the build's logs are: its published URL, else our /logs/ view of log_path."""
    if build.log_url:
        return build.log_url
    if not build.log_path:
        return None
    # Lexically, not with resolve(): a page lists up to a hundred builds, and the
    # file system is asked (symlinks and all) only when /logs/ serves the tree.
    for root in _logs_roots():
        rel = os.path.relpath(os.path.normpath(os.path.join(root, build.log_path)), root)
        if rel != os.pardir and not rel.startswith(os.pardir + os.sep):
            rel = Path(rel).as_posix()
            return logs_url("" if rel == "." else rel + "/")
    return None  # published somewhere we do not serve


# What werkzeug's converters leave unquoted in a path (BaseConverter.to_url).
_PATH_SAFE = "!$&'()*+,/:;=@"


def logs_url(subpath: str) -> str:
    """url_for("logs.serve", subpath=subpath), its rule built once a request (as build_url)."""
    prefix = g.get("logs_url_prefix")
    if prefix is None:
        sample = url_for("logs.serve", subpath="sample/")
        prefix = g.logs_url_prefix = (sample.removesuffix("sample/")
                                      if sample.endswith("/sample/") else "")
    if not prefix:
        return url_for("logs.serve", subpath=subpath)
    return prefix + quote(subpath, safe=_PATH_SAFE)


def _logs_roots() -> tuple[str, ...]:
    """The served log directory as configured and resolved (the worker writes
    log_path from the configured one), worked out once per request."""
    if "logs_roots" not in g:
        configured = config().logs.dir.absolute()
        g.logs_roots = tuple(dict.fromkeys((str(configured), str(configured.resolve()))))
    return tuple(g.logs_roots)


def _join_url(base: str | None, name: str | None) -> str | None:
    if not base or not name:
        return None
    return base.rstrip("/") + "/" + quote(name)


def build_dict(build: Build) -> dict[str, Any]:
    """The summary of one build, as listed on the status and change pages."""
    patchset = build.patchset
    change = patchset.change if patchset is not None else None
    # A baseline build tests a branch tip: no change, its run names project and branch.
    baseline = build.baseline if patchset is None else None
    if change is not None:
        return summary_dict(build, change.number, patchset.number if patchset else None,
                            change.project, change.branch, change.subject,
                            change.owner_name, change.url)
    return summary_dict(build, None, patchset.number if patchset is not None else None,
                        baseline.project if baseline is not None else "",
                        baseline.branch if baseline is not None else "",
                        f"baseline of {baseline.branch}" if baseline is not None else "",
                        "", "")


def summary_dict(build: Any, change: int | None, patchset: int | None, project: str,
                 branch: str, subject: str, owner: str, change_url: str) -> dict[str, Any]:
    """build_dict's shape from a build's own columns (an ORM Build or a Core row with
    the same names) and what its change (or baseline run) says."""
    return {
        "id": build.id,
        "job": build.job,
        "state": build.state,
        "reason": build.reason,
        "attempt": build.attempt,
        "change": change,
        "patchset": patchset,
        "project": project,
        "branch": branch,
        "subject": subject,
        "owner": owner,
        "change_url": change_url,
        "created": iso(build.created_at),
        "started": iso(build.started_at),
        "finished": iso(build.finished_at),
        "duration": seconds_between(build.started_at, build.finished_at),
        "log_url": build_log_url(build),
        "summary": build.summary,
        "worker": build.worker,
        "abort_requested": build.abort_requested,
        "finished_state": BuildState(build.state).finished,
        "url": build_url(build.id),
    }


def progress_dict(step: BuildStep) -> dict[str, Any] | None:
    """The tempest step's live test counts (None on a step that has none)."""
    if step.tests_done is None:
        return None
    return {"done": step.tests_done, "passed": step.tests_passed or 0,
            "failed": step.tests_failed or 0, "current": step.current_test}


def step_dict(step: BuildStep, log_base: str | None) -> dict[str, Any]:
    """One step of a build, with its live output tail and test progress."""
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
        "progress": progress_dict(step),
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


# Every build a page lists comes with its patchset, change and baseline run in
# the same statement (many-to-one joins), never one lazy load per row.
WITH_CHANGE = (joinedload(Build.patchset).joinedload(Patchset.change),
               joinedload(Build.baseline))


def _builds(session: Session, *where: Any, newest_first: bool = False,
            limit: int | None = None) -> list[Build]:
    query = select(Build).where(*where).options(*WITH_CHANGE)
    query = query.order_by(Build.id.desc() if newest_first else Build.id)
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query))


def current_steps(session: Session, builds: Sequence[Any]) -> dict[int, BuildStep]:
    """The step each running build is in: its running step, else its latest."""
    current: dict[int, BuildStep] = {}
    query = (select(BuildStep).where(BuildStep.build_id.in_([b.id for b in builds]))
             .order_by(BuildStep.id))
    for step in session.scalars(query):
        held = current.get(step.build_id)
        if held is None or held.state != StepState.RUNNING or step.state == StepState.RUNNING:
            current[step.build_id] = step
    return current


def expected_durations(session: Session, jobs: Iterable[str]) -> dict[str, float]:
    """Per job, the median run time of its newest finished builds (one statement)."""
    branches = [
        select(Build.job, Build.started_at, Build.finished_at)
        .where(Build.job == job, Build.state.in_(ETA_STATES),
               Build.started_at.is_not(None), Build.finished_at.is_not(None))
        .order_by(Build.created_at.desc(), Build.id.desc()).limit(live.ETA_SAMPLE)
        .subquery().select()  # SQLite takes ORDER BY/LIMIT in a union only inside a subquery
        for job in sorted(set(jobs))
    ]
    if not branches:
        return {}
    durations: dict[str, list[float]] = {}
    for job, started, finished in session.execute(union_all(*branches)):
        durations.setdefault(job, []).append((_aware(finished) - _aware(started))
                                             .total_seconds())
    return {job: m for job, values in durations.items()
            if (m := live.median_duration(values)) is not None}


def _aware(value: datetime) -> datetime:
    # A union's columns come back without the model's type: SQLite drops the zone.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def eta_dict(build: Any, expected: dict[str, float], now: datetime) -> dict[str, Any] | None:
    estimate = live.eta(build.started_at, expected.get(build.job), now)
    return None if estimate is None else {
        "expected": round(estimate.expected, 1), "remaining": round(estimate.remaining, 1),
        "text": estimate.text()}


def nodes(session: Session) -> list[dict[str, Any]]:
    """The node pool, by label then name."""
    return [node_dict(n) for n in node_rows(session)]


def node_rows(session: Session) -> list[Node]:
    return list(session.scalars(select(Node).order_by(Node.label, Node.name)))


def queue_waits_of(queued: Sequence[Any], pool: Sequence[Node]) -> dict[int, live.Wait]:
    from runners.registry import node_labels_for  # which nodes each job type reserves

    cfg = config()
    labels = {job: tuple(node_labels_for(cfg, job)) if job in cfg.jobs else ()
              for job in {b.job for b in queued}}
    return live.queue_waits(
        [live.QueuedBuild(b.id, labels[b.job]) for b in queued],
        [live.PoolNode(n.name, n.label, n.state, n.drained, n.build_id, n.lab_set,
                       n.offline_cause) for n in pool],
        by_lab_set=bool(cfg.lab_sets))


def build_detail(session: Session, build_id: int, tests_page: int = 1,
                 tests_status: str | None = None) -> dict[str, Any] | None:
    """One build: its verdict, failures (with tracebacks), steps, one page of its
    tests and its report; None if unknown. A build's tests can be thousands:
    they are counted and paged in the database, never all loaded."""
    build = session.scalar(
        select(Build).where(Build.id == build_id).options(
            selectinload(Build.steps), selectinload(Build.report), *WITH_CHANGE)
    )
    if build is None:
        return None
    item = build_dict(build)
    # Only the current patchset can be rechecked (ci.queue.enqueue refuses older ones).
    item["current_patchset"] = None if build.patchset is None else session.scalar(
        select(func.max(Patchset.number)).where(Patchset.change_id == build.patchset.change_id))
    item["steps"] = [step_dict(s, item["log_url"]) for s in build.steps]
    item["eta"] = item["wait"] = None
    if build.state == BuildState.RUNNING:
        item["eta"] = eta_dict(build, expected_durations(session, [build.job]), utcnow())
    elif build.state == BuildState.QUEUED:
        queued = _builds(session, Build.state == BuildState.QUEUED)
        wait = queue_waits_of(queued, node_rows(session)).get(build.id)
        item["wait"] = None if wait is None else {"position": wait.position,
                                                  "reason": wait.reason}
    item["test_counts"] = count_tests_of(session, build_id)
    counts = item["test_counts"]
    logs = item["log_url"]  # tests' attachment files are in the build's log tree
    item["failures"] = _tests(session, build_id, FAILURE_STATUSES, limit=FAILURES_SHOWN,
                              log_base=logs) \
        if any(s in counts for s in FAILURE_STATUSES) else []
    item["flaky"] = _tests(session, build_id, ("flaky",), limit=FAILURES_SHOWN, log_base=logs) \
        if "flaky" in counts else []
    total = (item["test_counts"].get(tests_status, 0) if tests_status
             else sum(item["test_counts"].values()))
    pages = max(1, -(-total // TESTS_PER_PAGE))
    page = min(max(tests_page, 1), pages)
    item["tests"] = [] if not total else _tests(
        session, build_id, (tests_status,) if tests_status else None,
        limit=TESTS_PER_PAGE, offset=(page - 1) * TESTS_PER_PAGE, log_base=logs)
    item["tests_page"] = {"page": page, "pages": pages, "per_page": TESTS_PER_PAGE,
                          "total": total, "status": tests_status}
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


def request_tests_page() -> dict[str, Any]:
    """`tests_page` and `tests_status` of the request, for build_detail; 400 when bad."""
    page = request.args.get("tests_page", "1")
    status = request.args.get("tests_status") or None
    if not page.isdigit() or int(page) < 1:
        abort(400, description="tests_page must be a page number (1, 2, ...)")
    if status is not None and status not in STATUS_ORDER:
        abort(400, description="tests_status must be one of " + ", ".join(STATUS_ORDER))
    return {"tests_page": int(page), "tests_status": status}


def count_tests_of(session: Session, build_id: int) -> dict[str, int]:
    """How many of the build's tests ended in each status, failures first."""
    rows = session.execute(select(TestResult.status, func.count())
                           .where(TestResult.build_id == build_id)
                           .group_by(TestResult.status)).all()
    counts = {status: int(n) for status, n in rows}
    ordered = {s: counts.pop(s) for s in STATUS_ORDER if s in counts}
    ordered.update(sorted(counts.items()))
    return ordered


def _tests(session: Session, build_id: int, statuses: Sequence[str] | None, *,
           limit: int, offset: int = 0, log_base: str | None = None) -> list[dict[str, Any]]:
    query = select(TestResult).where(TestResult.build_id == build_id)
    if statuses is not None:
        query = query.where(TestResult.status.in_(statuses))
    # Failures first (the API's readers look at the head of the list), then stream order.
    query = (query.order_by(TestResult.status.not_in(FAILURE_STATUSES), TestResult.id)
             .limit(limit).offset(offset))
    return [{"test_id": t.test_id, "status": t.status, "duration": t.duration,
             "details": t.details, "failed": t.status in FAILURE_STATUSES,
             "attachments_url": _join_url(log_base, t.attachments)}
            for t in session.scalars(query)]


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
