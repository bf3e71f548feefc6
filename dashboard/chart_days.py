"""The charts' figures of days that are over, kept per app and day.

A build's finishing time, state and start never change once it has finished
(every UPDATE that sets them is conditional on an active build), and a build
leaves the queue once. So the rows of a UTC day that ended more than SETTLE
ago are final, and each chart statement leaves out the days held here: a
30-day chart reads today's builds (and the days not held yet), not a month's.
SETTLE covers a finish committed just after midnight with a time from before
it, and workers' clocks that are a little behind the database's.

A queue day is held only when none of its builds still waits (a waiting
build's row changes when it starts). Days older than MAX_DAYS are dropped.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Generic, TypeVar

from flask import current_app

from ci.build_stats import Covered, window_start

SETTLE = timedelta(hours=1)
MAX_DAYS = 400  # more than the longest chart window (366 days)
EXTENSION = "hyperv_ci.chart_days"
Row = TypeVar("Row")


def final_until(now: datetime) -> datetime:
    """Midnight UTC starting the first day whose rows may still change."""
    return window_start(now - SETTLE, 1)


def day_of(moment: datetime) -> date:
    return moment.astimezone(UTC).date()


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


@dataclass
class DayRows(Generic[Row]):
    """One query's rows, per final day."""

    days: dict[date, list[Row]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def rows(self, since: datetime, now: datetime,
             query: Callable[[Covered], Sequence[Row]], row_day: Callable[[Row], date],
             final: Callable[[Sequence[Row]], bool] = lambda rows: True) -> list[Row]:
        """The rows from `since` on: the held days' from here, the others from
        `query(covered)`, whose final days are then held (when `final` says so)."""
        first, end = day_of(since), day_of(final_until(now))
        if _midnight(first) != since:
            first += timedelta(days=1)  # a part of a day is never held
        with self.lock:
            held = {d: self.days[d] for d in _days(first, end) if d in self.days}
        found = list(query(_ranges(held)))
        fresh: dict[date, list[Row]] = {d: [] for d in _days(first, end) if d not in held}
        for row in found:
            day_rows = fresh.get(row_day(row))
            if day_rows is not None:
                day_rows.append(row)
        with self.lock:
            self.days.update((d, day_rows) for d, day_rows in fresh.items() if final(day_rows))
            for old in [d for d in self.days if d < end - timedelta(days=MAX_DAYS)]:
                del self.days[old]
        return [row for day_rows in held.values() for row in day_rows] + found


def _days(first: date, end: date) -> list[date]:
    return [first + timedelta(days=n) for n in range((end - first).days)]


def _ranges(held: dict[date, Any]) -> list[tuple[datetime, datetime]]:
    """The held days as [start, end) ranges, consecutive days merged."""
    ranges: list[tuple[datetime, datetime]] = []
    for day in sorted(held):
        start, end = _midnight(day), _midnight(day + timedelta(days=1))
        if ranges and ranges[-1][1] == start:
            ranges[-1] = (ranges[-1][0], end)
        else:
            ranges.append((start, end))
    return ranges


@dataclass
class ChartDays:
    """The current app's held days, one store per chart query."""

    day_counts: dict[str, DayRows[Any]] = field(default_factory=dict)  # by grouping
    queue: DayRows[Any] = field(default_factory=DayRows)
    nodes: DayRows[Any] = field(default_factory=DayRows)

    def counts_for(self, by: str) -> DayRows[Any]:
        return self.day_counts.setdefault(by, DayRows())


def chart_days() -> ChartDays:
    """The current app's store (made on first use; setdefault keeps one per app)."""
    return current_app.extensions.setdefault(EXTENSION, ChartDays())
