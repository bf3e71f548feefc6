"""ci/build_stats.py: the chart series (pure) and the two queries behind them."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from ci.build_stats import (
    BuildPoint,
    build_points,
    duration_by_day,
    failures_per_node,
    pass_rate_by_day,
    queue_length,
    window_start,
)
from tests.history_seed import HOSTILE_NODE, seed_history

T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)


def point(job: str, state: str, created_h: float, start_h: float | None,
          end_h: float | None, project: str = "p") -> BuildPoint:
    at = lambda h: None if h is None else T0 + timedelta(hours=h)  # noqa: E731
    created = at(created_h)
    assert created is not None
    return BuildPoint(job, project, state, created, at(start_h), at(end_h))


POINTS = [
    point("a", "succeeded", 0, 1, 2),
    point("a", "failed", 0, 1, 4),
    point("a", "error", 0, 1, 2),  # infrastructure: no verdict on the code
    point("a", "succeeded", 24, 25, 26),
    point("b", "failed", 1, 3, 5, project="q"),
    point("b", "superseded", 1, None, 2, project="q"),  # waited, then left the queue
    point("b", "queued", 2, None, None, project="q"),  # still waiting
]


def test_pass_rate_by_day_counts_only_verdicts() -> None:
    rates = pass_rate_by_day(POINTS, "job")
    assert [(r.day, r.passed, r.failed, r.rate) for r in rates["a"]] == [
        (date(2026, 11, 1), 1, 1, 0.5), (date(2026, 11, 2), 1, 0, 1.0)]
    assert [(r.passed, r.failed) for r in rates["b"]] == [(0, 1)]
    assert set(pass_rate_by_day(POINTS, "project")) == {"p", "q"}


def test_duration_by_day_is_the_median_run_time() -> None:
    durations = duration_by_day(POINTS, "job")
    # 1 h and 3 h on day one (the error build is left out): median 2 h.
    assert [(d.builds, d.median_seconds) for d in durations["a"]] == [(2, 7200.0), (1, 3600.0)]


def test_queue_length_counts_builds_between_creation_and_start() -> None:
    samples = queue_length(POINTS, T0, T0 + timedelta(hours=4), samples=9)  # every 30 min
    assert [s.queued for s in samples] == [
        3,  # 10:00 three created at 10:00, none started
        3,  # 10:30
        2,  # 11:00 those three start; two of project q are created
        2,  # 11:30
        2,  # 12:00 the superseded one leaves the queue, the last one arrives
        2,  # 12:30
        1,  # 13:00 q's failed build starts; the queued one still waits
        1, 1]
    assert queue_length(POINTS, T0, T0, samples=9) == []


def test_window_start_is_midnight() -> None:
    assert window_start(T0, 1) == datetime(2026, 11, 1, tzinfo=UTC)
    assert window_start(T0, 30) == datetime(2026, 10, 3, tzinfo=UTC)


def test_queries(sessions: sessionmaker[Session]) -> None:
    world = seed_history(sessions)
    with sessions() as s:
        points = build_points(s, world.now - timedelta(days=30))
        assert len(points) == len(world.builds)
        assert {p.project for p in points} == {"openstack/compute-hyperv", "openstack/nova"}
        assert build_points(s, world.now - timedelta(hours=2)) == [
            p for p in points if p.state == "queued"]
        nodes = {n.node: (n.builds, n.failed) for n in failures_per_node(
            s, world.now - timedelta(days=30))}
    # devstack-1: a, b, c, b2 failed, d passed; hv-1: a, b2 failed, e errored.
    assert nodes == {"devstack-1": (5, 4), "hv-1": (3, 3), HOSTILE_NODE: (2, 1)}
