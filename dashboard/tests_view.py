"""Tests across builds: `/tests` (failure rate, last failure, slowest), `/tests/<id>`
(its history, linked to the builds) and `/flaky` (tests that flipped on the same code).

Test ids are untrusted (they come from the tempest run of a change under
test) and may hold any character: they travel in URLs through url_for's
quoting and are shown escaped. The queries are the core's (ci/test_history.py).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, cast

from flask import Blueprint, abort, render_template, request, url_for
from sqlalchemy.orm import Session

from ci.models import utcnow
from ci.test_history import (
    DEFAULT_WINDOW,
    MAX_WINDOW,
    SORT_KEYS,
    FlakyTest,
    SortKey,
    TestStats,
    flaky_tests,
    summarize,
    test_history,
    test_stats,
)
from dashboard.context import db
from dashboard.data import build_url, iso

bp = Blueprint("tests", __name__)
HISTORY_PAGE = 100
FLAKY_DAYS = 30
# The flaky query's cost follows the window (~0.3 s at 30 days of a busy CI, 2 s
# at 90: docs/dashboard.md); a longer one is refused rather than left to run.
MAX_DAYS = 90
MAX_QUERY = 200  # characters of a test-id search


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    value = request.args.get(name, "")
    if not value:
        return default
    if not value.isdigit() or not low <= int(value) <= high:
        abort(400, description=f"{name} must be a number from {low} to {high}")
    return int(value)


def stats_dict(stats: TestStats) -> dict[str, Any]:
    failure = stats.last_failure
    return {
        "test_id": stats.test_id,
        "url": url_for("tests.test", test_id=stats.test_id),
        "runs": stats.runs,
        "failures": stats.failures,
        "flaky": stats.flaky,
        "skips": stats.skips,
        "failure_rate": round(stats.failure_rate, 4),
        "max_duration": stats.max_duration,
        "mean_duration": None if stats.mean_duration is None else round(stats.mean_duration, 3),
        "last_failure": None if failure is None else {
            "build_id": failure.build_id,
            "finished": iso(failure.finished_at),
            "url": build_url(failure.build_id),
        },
    }


def tests_view(session: Session) -> dict[str, Any]:
    """Per-test statistics over the newest `window` finished builds."""
    window = _int_arg("window", DEFAULT_WINDOW, 1, MAX_WINDOW)
    sort = request.args.get("sort") or "failures"
    if sort not in SORT_KEYS:
        abort(400, description=f"sort must be one of {', '.join(SORT_KEYS)}")
    contains = (request.args.get("q") or "")[:MAX_QUERY]
    stats = test_stats(session, window=window, sort=cast(SortKey, sort), contains=contains)
    return {"window": window, "sort": sort, "q": contains,
            "tests": [stats_dict(s) for s in stats]}


def test_view(session: Session, test_id: str) -> dict[str, Any] | None:
    """One test's history, newest first, paged by build id; None if it never ran."""
    before = request.args.get("before", "")
    if before and not before.isdigit():
        abort(400, description="before must be a build id")
    runs = test_history(session, test_id, HISTORY_PAGE + 1, int(before) if before else None)
    if not runs and not before:
        return None
    more = len(runs) > HISTORY_PAGE
    runs = runs[:HISTORY_PAGE]
    next_before = runs[-1].build_id if more else None
    return {
        "test_id": test_id,
        "summary": stats_dict(summarize(test_id, runs)),
        "runs": [{
            "build_id": r.build_id, "build_url": build_url(r.build_id),
            "job": r.job, "build_state": r.build_state, "project": r.project,
            "change": r.change, "patchset": r.patchset,
            "change_url": url_for("pages.change", number=r.change)
            if r.change is not None else None,
            "status": r.status, "duration": r.duration, "finished": iso(r.finished_at),
            "details": r.details if r.failed else "",
        } for r in runs],
        "next_before": next_before,
        "next_url": (url_for("tests.test", test_id=test_id, before=next_before)
                     if next_before is not None else None),
        "chart_url": url_for("charts.test_chart", id=test_id),
    }


def flaky_dict(flaky: FlakyTest) -> dict[str, Any]:
    return {
        "test_id": flaky.test_id,
        "url": url_for("tests.test", test_id=flaky.test_id),
        "flips": flaky.flips,
        "rerun_flips": flaky.rerun_flips,
        "recheck_flips": flaky.recheck_flips,
        "builds": [{"id": b, "url": build_url(b)} for b in flaky.builds],
        "last_failed": iso(flaky.last_failed),
    }


def flaky_view(session: Session) -> dict[str, Any]:
    """Tests that flipped in builds finished in the last `days` days."""
    days = _int_arg("days", FLAKY_DAYS, 1, MAX_DAYS)
    since = utcnow() - timedelta(days=days)
    return {"days": days, "since": iso(since),
            "tests": [flaky_dict(f) for f in flaky_tests(session, since)]}


@bp.get("/tests")
def tests() -> str:
    return render_template("tests.html", view=tests_view(db()), sort_keys=SORT_KEYS)


@bp.get("/tests/<path:test_id>")
def test(test_id: str) -> str:
    view = test_view(db(), test_id)
    if view is None:
        abort(404, description="no results for this test")
    return render_template("test.html", view=view)


@bp.get("/flaky")
def flaky() -> str:
    return render_template("flaky.html", view=flaky_view(db()))
