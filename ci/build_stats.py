"""Build statistics over time, for the charts: pass rate, duration, queue length,
failures per node.

One query reads the window's builds (`ix_builds_created_at_id`), another the
nodes their steps ran on; the series are pure functions of those rows, so
they are tested without a database and the same numbers feed the SVG charts
and the JSON API.
"""

from __future__ import annotations

import statistics
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ci.models import BaselineRun, Build, BuildState, BuildStep, Change, Patchset

GroupBy = Literal["job", "project"]
# A vote's outcome: infrastructure errors, aborts and superseded builds say
# nothing about the code, so they are left out of the pass rate.
PASSED = BuildState.SUCCEEDED.value
FAILED = BuildState.FAILED.value
NODE_FAILED = frozenset({BuildState.FAILED.value, BuildState.ERROR.value})


@dataclass(frozen=True)
class BuildPoint:
    """What the charts need of one build."""

    job: str
    project: str
    state: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True)
class DayRate:
    day: date
    passed: int
    failed: int

    @property
    def rate(self) -> float | None:
        total = self.passed + self.failed
        return self.passed / total if total else None


@dataclass(frozen=True)
class DayDuration:
    day: date
    builds: int
    median_seconds: float


@dataclass(frozen=True)
class QueueSample:
    at: datetime
    queued: int


@dataclass(frozen=True)
class NodeFailures:
    node: str
    builds: int  # builds with a step on the node
    failed: int  # of those, failed or error

    @property
    def rate(self) -> float:
        return self.failed / self.builds if self.builds else 0.0


def build_points(session: Session, since: datetime) -> list[BuildPoint]:
    """Every build created since `since`, with its change's project (one statement).

    A build queued before the window is left out: queue lengths at the
    window's start may read low by the builds that waited across it.
    """
    rows = session.execute(
        select(Build.job, func.coalesce(Change.project, BaselineRun.project, ""), Build.state,
               Build.created_at, Build.started_at, Build.finished_at)
        # Outer joins: a baseline build runs a branch tip, its project is its run's.
        .outerjoin(Patchset, Patchset.id == Build.patchset_id)
        .outerjoin(Change, Change.id == Patchset.change_id)
        .outerjoin(BaselineRun, BaselineRun.id == Build.baseline_id)
        .where(Build.created_at >= since))
    return [BuildPoint(*row) for row in rows]


def _key(group_by: GroupBy) -> Callable[[BuildPoint], str]:
    return (lambda p: p.job) if group_by == "job" else (lambda p: p.project)


def _day(moment: datetime) -> date:
    return moment.astimezone(UTC).date()


def pass_rate_by_day(points: Iterable[BuildPoint], group_by: GroupBy) -> dict[str, list[DayRate]]:
    """Per job (or project) and UTC day of finishing: builds that passed and failed."""
    key = _key(group_by)
    counts: dict[str, dict[date, list[int]]] = {}
    for point in points:
        if point.finished_at is None or point.state not in (PASSED, FAILED):
            continue
        day = counts.setdefault(key(point), {}).setdefault(_day(point.finished_at), [0, 0])
        day[0 if point.state == PASSED else 1] += 1
    return {name: [DayRate(day, p, f) for day, (p, f) in sorted(days.items())]
            for name, days in sorted(counts.items())}


def duration_by_day(points: Iterable[BuildPoint],
                    group_by: GroupBy) -> dict[str, list[DayDuration]]:
    """Per job (or project) and UTC day of finishing: the median run time of builds
    that ran to a verdict (passed or failed)."""
    key = _key(group_by)
    runs: dict[str, dict[date, list[float]]] = {}
    for point in points:
        if (point.finished_at is None or point.started_at is None
                or point.state not in (PASSED, FAILED)):
            continue
        seconds = (point.finished_at - point.started_at).total_seconds()
        runs.setdefault(key(point), {}).setdefault(_day(point.finished_at), []).append(seconds)
    return {name: [DayDuration(day, len(values), statistics.median(values))
                   for day, values in sorted(days.items())]
            for name, days in sorted(runs.items())}


def queue_length(points: Sequence[BuildPoint], since: datetime, until: datetime,
                 samples: int = 96) -> list[QueueSample]:
    """How many builds waited at `samples` evenly spaced moments of [since, until].

    A build waits from its creation until it starts (or, never started, until
    it finished: superseded or aborted in the queue; or until now).
    """
    if samples < 2 or until <= since:
        return []
    step = (until - since) / (samples - 1)
    # Waiting at t = started waiting by t - stopped waiting by t (two sorted lists).
    starts = sorted(p.created_at for p in points)
    ends = sorted(max(end, p.created_at) for p in points
                  if (end := p.started_at or p.finished_at) is not None)
    out = []
    for i in range(samples):
        at = since + step * i
        out.append(QueueSample(at, bisect_right(starts, at) - bisect_right(ends, at)))
    return out


def failures_per_node(session: Session, since: datetime) -> list[NodeFailures]:
    """Per node: builds finished since `since` with a step on it, and how many of
    those failed or errored (one statement), most failures first."""
    per_build = (select(BuildStep.node, BuildStep.build_id, Build.state)
                 .join(Build, Build.id == BuildStep.build_id)
                 .where(Build.finished_at >= since, BuildStep.node.is_not(None))
                 .distinct().subquery())
    rows = session.execute(
        select(per_build.c.node, per_build.c.state, func.count())
        .group_by(per_build.c.node, per_build.c.state))
    totals: dict[str, list[int]] = {}
    for node, state, count in rows:
        entry = totals.setdefault(node, [0, 0])
        entry[0] += count
        if state in NODE_FAILED:
            entry[1] += count
    found = [NodeFailures(node, total, failed) for node, (total, failed) in totals.items()]
    found.sort(key=lambda n: (-n.failed, n.node))
    return found


def window_start(now: datetime, days: int) -> datetime:
    """Midnight UTC `days - 1` days before now: the window covers `days` whole days."""
    today = datetime.combine(_day(now), datetime.min.time(), tzinfo=UTC)
    return today - timedelta(days=max(1, days) - 1)
