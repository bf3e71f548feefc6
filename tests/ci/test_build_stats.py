"""ci/build_stats.py: the chart series (pure) and the queries behind them, whose
day and run-time arithmetic is per dialect (so both engines run them)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from ci.build_stats import (
    DayCount,
    day_counts,
    duration_by_day,
    failures_per_node,
    pass_rate_by_day,
    queue_length,
    queue_spans,
    window_start,
)
from tests.history_seed import HOSTILE_NODE, seed_history

T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)
DAY1, DAY2 = date(2026, 11, 1), date(2026, 11, 2)
COUNTS = [
    DayCount("a", DAY1, "succeeded", 1, 3600.0),
    DayCount("a", DAY1, "failed", 3, 7200.0),
    DayCount("a", DAY2, "succeeded", 2, None),  # never started: no run time
    DayCount("b", DAY1, "failed", 1, 60.0),
]


def test_pass_rate_by_day() -> None:
    rates = pass_rate_by_day(COUNTS)
    assert [(r.day, r.passed, r.failed, r.rate) for r in rates["a"]] == [
        (DAY1, 1, 3, 0.25), (DAY2, 2, 0, 1.0)]
    assert [(r.passed, r.failed, r.rate) for r in rates["b"]] == [(0, 1, 0.0)]


def test_duration_by_day_is_the_mean_over_both_verdicts() -> None:
    durations = duration_by_day(COUNTS)
    # (1 * 1 h + 3 * 2 h) / 4 builds; day two had no run time.
    assert [(d.day, d.builds, d.mean_seconds) for d in durations["a"]] == [(DAY1, 4, 6300.0)]


def at(hours: float | None) -> datetime | None:
    return None if hours is None else T0 + timedelta(hours=hours)


def test_queue_length_counts_builds_between_creation_and_leaving() -> None:
    spans = [(T0, at(1)), (T0, at(1)), (T0, at(1)),  # three wait an hour
             (at(1), at(3)), (at(1), at(2)),  # one starts at 13:00, one leaves at 12:00
             (at(2), None)]  # still waiting
    samples = queue_length([(c, e) for c, e in spans if c is not None], T0, at(4) or T0,
                           samples=9)  # every 30 min
    assert [s.queued for s in samples] == [
        3, 3,  # 10:00, 10:30
        2, 2,  # 11:00 the first three start; two more arrive
        2, 2,  # 12:00 one leaves, the last arrives
        1, 1, 1]  # 13:00 one starts; one still waits
    assert queue_length([], T0, T0, samples=9) == []


def test_window_start_is_midnight() -> None:
    assert window_start(T0, 1) == datetime(2026, 11, 1, tzinfo=UTC)
    assert window_start(T0, 30) == datetime(2026, 10, 3, tzinfo=UTC)


def test_queries(sessions: sessionmaker[Session]) -> None:
    world = seed_history(sessions)
    month = world.now - timedelta(days=30)
    d_finished = world.now - timedelta(days=1) + timedelta(minutes=32)
    with sessions() as s:
        if s.get_bind().dialect.name == "postgresql":
            # A session in a zone where d finished on another calendar day than in
            # UTC: the chart's days are UTC's all the same. (Etc/GMT-14 is UTC+14.)
            zone = "Etc/GMT-14" if d_finished.astimezone(UTC).hour >= 10 else "Etc/GMT+12"
            s.execute(text(f"SET TIME ZONE '{zone}'"))
        by_job = day_counts(s, month, "job")
        by_project = day_counts(s, month, "project")
        spans = queue_spans(s, month)
        nodes = {n.node: (n.builds, n.failed) for n in failures_per_node(s, month)}
    # The verdicts: hyperv-local a, b, b2 failed (60, 50, 55 min, three days) and d
    # passed (30 min); hyperv-extra c failed. The error and the queued build are not.
    totals = {}
    for c in by_job:
        totals[(c.name, c.state)] = totals.get((c.name, c.state), 0) + c.builds
    assert totals == {("hyperv-local", "failed"): 3, ("hyperv-local", "succeeded"): 1,
                      ("hyperv-extra", "failed"): 1}
    passed = next(c for c in by_job if c.state == "succeeded")
    assert passed.mean_seconds == pytest.approx(30 * 60, abs=0.01)
    assert passed.day == d_finished.astimezone(UTC).date()  # the UTC day it finished
    assert {c.name for c in by_project} == {"openstack/compute-hyperv", "openstack/nova"}
    assert sum(c.builds for c in by_project) == 5
    assert len(spans) == len(world.builds)
    assert sum(1 for _, left in spans if left is None) == 1  # f still waits
    # devstack-1: a, b, c, b2 failed, d passed; hv-1: a, b2 failed, e errored.
    assert nodes == {"devstack-1": (5, 4), "hv-1": (3, 3), HOSTILE_NODE: (2, 1)}
