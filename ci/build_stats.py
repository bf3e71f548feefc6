"""Build statistics over time, for the charts: pass rate, duration, queue length,
failures per node.

A year is ~100,000 builds, so the per-day numbers are counted by the
database (`day_counts`: one GROUP BY over `ix_builds_finished_at`) and only
the queue, which needs each build's wait, reads rows, of at most
QUEUE_MAX_DAYS. The series are pure functions of those rows (tested without
a database); the same numbers feed the SVG charts and the JSON API.

Every query takes `covered`: [start, end) ranges of time whose rows the
caller already holds (dashboard/chart_days.py keeps days that are over), left
out of the statement as index ranges.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import ColumnElement, Date, Float, and_, func, or_, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.functions import FunctionElement

from ci.models import BaselineRun, Build, BuildState, BuildStep, Change, Patchset

GroupBy = Literal["job", "project"]
# A vote's outcome: infrastructure errors, aborts and superseded builds say
# nothing about the code, so they are left out of the pass rate.
PASSED = BuildState.SUCCEEDED.value
FAILED = BuildState.FAILED.value
NODE_FAILED = frozenset({BuildState.FAILED.value, BuildState.ERROR.value})
QUEUE_MAX_DAYS = 31  # the queue chart reads each build's wait: a month at most
Covered = Sequence[tuple[datetime, datetime]]  # [start, end) ranges the caller holds


class utc_day(FunctionElement[date]):  # named like the SQL function it is
    """The UTC calendar day of a stored timestamp."""

    type = Date()  # SQLite's text 'YYYY-MM-DD' is parsed into a date as well
    inherit_cache = True


@compiles(utc_day)
def _utc_day_sqlite(element: utc_day, compiler: Any, **kw: Any) -> str:
    # SQLite keeps UTC timestamps as text (ci.models.UTCDateTime): date() reads them.
    return f"date({compiler.process(element.clauses, **kw)})"


@compiles(utc_day, "postgresql")
def _utc_day_postgresql(element: utc_day, compiler: Any, **kw: Any) -> str:
    # A cast, not to_char: formatting 100,000 timestamps costs more than grouping them.
    return f"CAST(({compiler.process(element.clauses, **kw)} AT TIME ZONE 'UTC') AS DATE)"


class elapsed_seconds(FunctionElement[float]):  # named like the SQL function it is
    """Seconds from the first timestamp to the second."""

    type = Float()
    inherit_cache = True


@compiles(elapsed_seconds)
def _elapsed_sqlite(element: elapsed_seconds, compiler: Any, **kw: Any) -> str:
    start, end = (compiler.process(c, **kw) for c in element.clauses.clauses)
    return f"((julianday({end}) - julianday({start})) * 86400.0)"


@compiles(elapsed_seconds, "postgresql")
def _elapsed_postgresql(element: elapsed_seconds, compiler: Any, **kw: Any) -> str:
    start, end = (compiler.process(c, **kw) for c in element.clauses.clauses)
    return f"EXTRACT(EPOCH FROM ({end} - {start}))"


@dataclass(frozen=True)
class DayCount:
    """Builds of one job (or project) that finished on one UTC day in one state."""

    name: str
    day: date
    state: str
    builds: int
    mean_seconds: float | None  # their mean run time (None: none had started)


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
    mean_seconds: float


@dataclass(frozen=True)
class QueueSample:
    at: datetime
    queued: int


@dataclass(frozen=True)
class NodeDayCount:
    """Builds with a step on one node that finished on one UTC day in one state."""

    node: str
    day: date
    state: str
    builds: int


@dataclass(frozen=True)
class NodeFailures:
    node: str
    builds: int  # builds with a step on the node
    failed: int  # of those, failed or error

    @property
    def rate(self) -> float:
        return self.failed / self.builds if self.builds else 0.0


def _outside(column: Any, since: datetime, covered: Covered) -> ColumnElement[bool]:
    """`column >= since` outside every covered range, as ranges an index can scan."""
    ranges = []
    low = since
    for start, end in sorted(covered):
        if end <= low:
            continue
        if start > low:
            ranges.append(and_(column >= low, column < start))
        low = end
    ranges.append(column >= low)
    return or_(*ranges)


def day_counts(session: Session, since: datetime, group_by: GroupBy,
               covered: Covered = ()) -> list[DayCount]:
    """Builds that reached a verdict (passed or failed) since `since` (and outside
    `covered`), counted per job (or project), UTC day of finishing and state, with
    their mean run time (one statement)."""
    day = utc_day(Build.finished_at).label("day")
    if group_by == "job":
        name: Any = Build.job
        query = select(Build.job.label("name"), day)
    else:
        # A baseline build runs a branch tip: its project is its run's.
        name = func.coalesce(Change.project, BaselineRun.project, "")
        query = (select(name.label("name"), day)
                 .outerjoin(Patchset, Patchset.id == Build.patchset_id)
                 .outerjoin(Change, Change.id == Patchset.change_id)
                 .outerjoin(BaselineRun, BaselineRun.id == Build.baseline_id))
    query = (query.add_columns(Build.state, func.count(),
                               func.avg(elapsed_seconds(Build.started_at, Build.finished_at)))
             .where(_outside(Build.finished_at, since, covered),
                    Build.state.in_((PASSED, FAILED)))
             .group_by(name, day, Build.state))
    rows: Any = session.execute(query)  # (name, day, state, count, mean seconds)
    return [DayCount(name_, day_, state, int(builds),
                     None if mean is None else float(mean))
            for name_, day_, state, builds, mean in rows]


def pass_rate_by_day(counts: Iterable[DayCount]) -> dict[str, list[DayRate]]:
    """Per job (or project) and day: builds that passed and failed."""
    days: dict[str, dict[date, list[int]]] = {}
    for count in counts:
        entry = days.setdefault(count.name, {}).setdefault(count.day, [0, 0])
        entry[0 if count.state == PASSED else 1] += count.builds
    return {name: [DayRate(day, p, f) for day, (p, f) in sorted(by_day.items())]
            for name, by_day in sorted(days.items())}


def duration_by_day(counts: Iterable[DayCount]) -> dict[str, list[DayDuration]]:
    """Per job (or project) and day: the mean run time of builds that passed or failed."""
    days: dict[str, dict[date, list[float]]] = {}
    for count in counts:
        if count.mean_seconds is None:
            continue
        entry = days.setdefault(count.name, {}).setdefault(count.day, [0.0, 0.0])
        entry[0] += count.builds
        entry[1] += count.builds * count.mean_seconds
    return {name: [DayDuration(day, int(n), total / n)
                   for day, (n, total) in sorted(by_day.items())]
            for name, by_day in sorted(days.items())}


def queue_spans(session: Session, since: datetime,
                covered: Covered = ()) -> list[tuple[datetime, datetime | None]]:
    """(created, left the queue) of every build created since `since` (and outside
    `covered`): it left when it
    started, or, never started, when it finished (superseded or aborted while
    queued); None while it still waits. One statement on ix_builds_created_at_id.

    A build queued before the window is left out: the queue at the window's
    start may read low by the builds that waited across it.
    """
    rows = session.execute(select(Build.created_at,
                                  func.coalesce(Build.started_at, Build.finished_at))
                           .where(_outside(Build.created_at, since, covered)))
    return [(created, left) for created, left in rows]


def queue_length(spans: Sequence[tuple[datetime, datetime | None]], since: datetime,
                 until: datetime, samples: int = 96) -> list[QueueSample]:
    """How many builds waited at `samples` evenly spaced moments of [since, until]."""
    if samples < 2 or until <= since:
        return []
    step = (until - since) / (samples - 1)
    # Waiting at t = started waiting by t - stopped waiting by t (two sorted lists).
    starts = sorted(created for created, _ in spans)
    ends = sorted(max(left, created) for created, left in spans if left is not None)
    out = []
    for i in range(samples):
        at = since + step * i
        out.append(QueueSample(at, bisect_right(starts, at) - bisect_right(ends, at)))
    return out


def node_day_counts(session: Session, since: datetime,
                    covered: Covered = ()) -> list[NodeDayCount]:
    """Per node, UTC day of finishing and state: builds finished since `since` (and
    outside `covered`) with a step on the node (one statement)."""
    per_build = (select(BuildStep.node, BuildStep.build_id, Build.state,
                        utc_day(Build.finished_at).label("day"))
                 .join(Build, Build.id == BuildStep.build_id)
                 .where(_outside(Build.finished_at, since, covered),
                        BuildStep.node.is_not(None))
                 .distinct().subquery())
    rows = session.execute(
        select(per_build.c.node, per_build.c.day, per_build.c.state, func.count())
        .group_by(per_build.c.node, per_build.c.day, per_build.c.state))
    return [NodeDayCount(node, day_, state, int(count)) for node, day_, state, count in rows]


def node_failures(counts: Iterable[NodeDayCount]) -> list[NodeFailures]:
    """Per node: its builds and how many of those failed or errored, most failures first."""
    totals: dict[str, list[int]] = {}
    for count in counts:
        entry = totals.setdefault(count.node, [0, 0])
        entry[0] += count.builds
        if count.state in NODE_FAILED:
            entry[1] += count.builds
    found = [NodeFailures(node, total, failed) for node, (total, failed) in totals.items()]
    found.sort(key=lambda n: (-n.failed, n.node))
    return found


def failures_per_node(session: Session, since: datetime) -> list[NodeFailures]:
    """Per node: builds finished since `since` with a step on it, and how many of
    those failed or errored (one statement), most failures first."""
    return node_failures(node_day_counts(session, since))


def window_start(now: datetime, days: int) -> datetime:
    """Midnight UTC `days - 1` days before now: the window covers `days` whole days."""
    today = datetime.combine(now.astimezone(UTC).date(), datetime.min.time(), tzinfo=UTC)
    return today - timedelta(days=max(1, days) - 1)
