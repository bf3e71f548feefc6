"""`/charts`: pass rate and mean build duration per day (per job or project), queue
length over time, failures per node; each an SVG image of its own
(`/charts/<kind>.svg`) so the page stays a plain document under the CSP.
`/charts/test.svg?id=` draws one test's durations and failures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, cast

from flask import Blueprint, Response, abort, render_template, request

from ci.build_stats import (
    QUEUE_MAX_DAYS,
    DayCount,
    GroupBy,
    NodeDayCount,
    day_counts,
    duration_by_day,
    node_day_counts,
    node_failures,
    pass_rate_by_day,
    queue_length,
    queue_spans,
    window_start,
)
from ci.models import utcnow
from ci.test_history import test_history
from dashboard.chart_days import chart_days, day_of
from dashboard.charts import Tick, bar_chart, line_chart, nice_max
from dashboard.context import db
from dashboard.data import iso

bp = Blueprint("charts", __name__)
KINDS = ("pass-rate", "duration", "queue", "nodes")
DEFAULT_DAYS = 30
MAX_DAYS = 366
TEST_CHART_RUNS = 100


def request_window() -> tuple[int, GroupBy]:
    days = request.args.get("days", "")
    if days and (not days.isdigit() or not 1 <= int(days) <= MAX_DAYS):
        abort(400, description=f"days must be a number from 1 to {MAX_DAYS}")
    by = request.args.get("by") or "job"
    if by not in ("job", "project"):
        abort(400, description="by must be job or project")
    return (int(days) if days else DEFAULT_DAYS), cast(GroupBy, by)


def _day_x(day: date) -> float:
    return float(day.toordinal())


def _day_ticks(since: datetime, until: datetime) -> list[Tick]:
    first, last = since.date(), until.date()
    span = (last - first).days
    every = max(1, span // 6)
    return [Tick(_day_x(first + timedelta(days=d)), (first + timedelta(days=d)).strftime("%m-%d"))
            for d in range(0, span + 1, every)]


def _day_range(since: datetime, until: datetime) -> tuple[float, float]:
    return _day_x(since.date()), _day_x(until.date())


def _percent(value: float) -> str:
    return f"{value * 100:.0f}%"


def _minutes(seconds: float) -> str:
    """An axis label: `1h 05m`, `12m`."""
    minutes = round(seconds / 60)
    return f"{minutes // 60}h {minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"


def _count(value: float) -> str:
    return f"{value:.0f}"


def _svg(document: str) -> Response:
    response = Response(document, mimetype="image/svg+xml")
    response.headers["Cache-Control"] = "no-cache"
    return response


def charts_data(days: int, by: GroupBy, parts: Sequence[str] = KINDS) -> dict[str, Any]:
    """The numbers of the charts named in `parts` for the window: one statement for
    pass rate and duration, one for the queue (its last QUEUE_MAX_DAYS days at
    most), one for the nodes; each reads only the days not held in chart_days."""
    session = db()
    now = utcnow()
    since = window_start(now, days)
    held = chart_days()
    found: dict[str, Any] = {"days": days, "by": by, "since": iso(since), "until": iso(now)}
    counts: list[DayCount] = []
    if {"pass-rate", "duration"} & set(parts):
        counts = held.counts_for(by).rows(
            since, now, lambda covered: day_counts(session, since, by, covered),
            lambda count: count.day)
    if "pass-rate" in parts:
        found["pass_rate"] = {
            name: [{"day": r.day.isoformat(), "passed": r.passed, "failed": r.failed,
                    "rate": r.rate} for r in rates]
            for name, rates in pass_rate_by_day(counts).items()}
    if "duration" in parts:
        found["duration"] = {
            name: [{"day": d.day.isoformat(), "builds": d.builds,
                    "mean_seconds": round(d.mean_seconds, 1)} for d in durations]
            for name, durations in duration_by_day(counts).items()}
    if "queue" in parts:
        queue_since = window_start(now, min(days, QUEUE_MAX_DAYS))
        spans = held.queue.rows(
            queue_since, now, lambda covered: queue_spans(session, queue_since, covered),
            lambda span: day_of(span[0]),
            final=lambda spans: all(left is not None for _, left in spans))
        samples = queue_length(spans, queue_since, now)
        found["queue"] = {"since": iso(queue_since),
                          "samples": [{"at": iso(q.at), "queued": q.queued} for q in samples]}
    if "nodes" in parts:
        per_day: list[NodeDayCount] = held.nodes.rows(
            since, now, lambda covered: node_day_counts(session, since, covered),
            lambda count: count.day)
        found["nodes"] = [{"node": n.node, "builds": n.builds, "failed": n.failed,
                           "rate": round(n.rate, 4)} for n in node_failures(per_day)]
    return found


def _day_series(series: Mapping[str, Sequence[Mapping[str, Any]]],
                value: str) -> dict[str, list[tuple[float, float]]]:
    return {name: [(_day_x(date.fromisoformat(p["day"])), float(p[value]))
                   for p in points if p[value] is not None]
            for name, points in series.items()}


def render_chart(kind: str, days: int, by: GroupBy) -> str:
    """One chart of the window as an SVG document."""
    found = charts_data(days, by, (kind,))
    since = datetime.fromisoformat(found["since"])
    until = datetime.fromisoformat(found["until"])
    if kind == "pass-rate":
        return line_chart(f"Pass rate per day, by {by}", _day_series(found["pass_rate"], "rate"),
                          x_ticks=_day_ticks(since, until), x_range=_day_range(since, until),
                          y_format=_percent, y_max=1.0)
    if kind == "duration":
        series = _day_series(found["duration"], "mean_seconds")
        longest = max((y for points in series.values() for _, y in points), default=0.0)
        # Four intervals of a round number of minutes.
        top = 4 * 60 * max(1.0, nice_max(longest / 60 / 4))
        return line_chart(f"Mean build duration per day, by {by}", series,
                          x_ticks=_day_ticks(since, until), x_range=_day_range(since, until),
                          y_format=_minutes, y_max=top)
    if kind == "queue":
        queue_since = datetime.fromisoformat(found["queue"]["since"])
        samples = [(datetime.fromisoformat(q["at"]).timestamp(), float(q["queued"]))
                   for q in found["queue"]["samples"]]
        ticks = [Tick(datetime.combine(date.fromordinal(int(t.x)), time(), tzinfo=UTC)
                      .timestamp(), t.label) for t in _day_ticks(queue_since, until)]
        return line_chart(f"Builds waiting in the queue, last {min(days, QUEUE_MAX_DAYS)} days",
                          {"queued": samples}, x_ticks=ticks,
                          x_range=(queue_since.timestamp(), until.timestamp()),
                          y_format=_count, integer=True, dots=False)
    bars = [(n["node"], float(n["builds"]), float(n["failed"])) for n in found["nodes"]]
    return bar_chart("Failed builds per node (failed or error / all)", bars,
                     value_format=_count)


@bp.get("/charts")
def charts() -> str:
    days, by = request_window()
    return render_template("charts.html", days=days, by=by, kinds=KINDS)


@bp.get("/charts/<kind>.svg")
def chart(kind: str) -> Response:
    if kind not in KINDS:
        abort(404, description=f"no chart {kind}")
    days, by = request_window()
    return _svg(render_chart(kind, days, by))


@bp.get("/charts/test.svg")
def test_chart() -> Response:
    """One test's duration in its newest builds, failed runs in a series of their own."""
    test_id = request.args.get("id", "")
    runs = list(reversed(test_history(db(), test_id, TEST_CHART_RUNS)))
    passed = [(float(i), r.duration) for i, r in enumerate(runs)
              if r.duration is not None and not r.failed]
    failed = [(float(i), r.duration) for i, r in enumerate(runs)
              if r.duration is not None and r.failed]
    ticks = [Tick(float(i), f"#{r.build_id}") for i, r in enumerate(runs)
             if i % max(1, len(runs) // 6) == 0]
    series: dict[str, list[tuple[float, float]]] = {"passed": passed}
    if failed:
        series["failed"] = failed
    return _svg(line_chart(f"Duration of its last {len(runs)} runs", series, x_ticks=ticks,
                           x_range=(0.0, float(max(1, len(runs) - 1))),
                           y_format=lambda s: f"{s:.1f} s", width=640, height=220))
