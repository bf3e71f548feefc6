"""The builds part of a `/metrics` scrape: counts and run-time histograms by job and
state, over every build in the database.

A build's job, state, start and finish never change once it has finished
(every UPDATE that sets them is conditional on an active build), so the
groups of builds that finished more than SETTLE ago are summed once and kept
per app (`FinishedBuilds`); each scrape reads only the builds that finished
since the last one, plus the unfinished (one statement either way, a range
of `ix_builds_finished_at` and its NULLs). SETTLE covers a finish committed
a moment after its time was taken and workers' clocks a little behind.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.orm import Session

from ci.models import Build

# Upper bounds (seconds) of the build duration histogram: a local job takes
# seconds, a devstack + tempest run one to three hours.
DURATION_BUCKETS = (10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1200.0, 1800.0,
                    2700.0, 3600.0, 5400.0, 7200.0, 10800.0, 14400.0)
SETTLE = timedelta(hours=1)


@dataclass(frozen=True)
class BuildGroup:
    """Builds of one job in one state, with the duration histogram of those that ran."""

    job: str
    state: str
    count: int
    timed: int  # started and finished: the histogram's count
    seconds: float  # the histogram's sum
    buckets: tuple[int, ...]  # cumulative, one per DURATION_BUCKETS bound

    def __add__(self, other: BuildGroup) -> BuildGroup:
        return BuildGroup(self.job, self.state, self.count + other.count,
                          self.timed + other.timed, self.seconds + other.seconds,
                          tuple(a + b for a, b in zip(self.buckets, other.buckets, strict=True)))


@dataclass
class FinishedBuilds:
    """The groups of builds that finished before `until`, summed (None: none read yet)."""

    until: datetime | None = None
    groups: dict[tuple[str, str], BuildGroup] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _summed(groups: Iterable[BuildGroup],
            into: dict[tuple[str, str], BuildGroup]) -> dict[tuple[str, str], BuildGroup]:
    for group in groups:
        key = (group.job, group.state)
        held = into.get(key)
        into[key] = group if held is None else held + group
    return into


def read_builds(session: Session, now: datetime,
                held: FinishedBuilds | None = None) -> tuple[BuildGroup, ...]:
    """Every build by job and state with its run-time histogram: what `held` has, plus
    the builds finished since it was read and the unfinished (one statement)."""
    held = held if held is not None else FinishedBuilds()
    with held.lock:
        since, kept = held.until, dict(held.groups)
    until = now - SETTLE
    if since is not None and until < since:
        until = since  # the clock went back: hold nothing new
    final, live = _read(session, since, until)
    totals = _summed(final, kept)
    with held.lock:
        if held.until == since:  # another scrape may have moved it meanwhile
            held.until, held.groups = until, dict(totals)
    return tuple(_summed(live, dict(totals)).values())


def _read(session: Session, since: datetime | None,
          until: datetime) -> tuple[list[BuildGroup], list[BuildGroup]]:
    """The groups of builds finished from `since` (all when None) to `until`, and of the
    others: finished after `until` or not finished."""
    job: Any  # a column of builds, or of the subquery
    build_state: Any
    final: Any
    run: ColumnElement[Any]
    total: ColumnElement[Any]
    where = [] if since is None else [or_(Build.finished_at >= since,
                                          Build.finished_at.is_(None))]
    is_final = Build.finished_at < until
    if session.get_bind().dialect.name == "postgresql":
        # Interval comparisons: about half the cost of turning every row's
        # interval into seconds first (measured on 100,000 builds).
        job, build_state, final = Build.job, Build.state, is_final
        run = Build.finished_at - Build.started_at
        bounds = [run <= timedelta(seconds=b) for b in DURATION_BUCKETS]
        total = func.date_part("epoch", func.sum(run))
        source = None
    else:
        # SQLite keeps timestamps as ISO text; julianday() reads them as days.
        # The LIMIT keeps the subquery from being flattened (SQLite's query
        # optimizer overview: a subquery with LIMIT is not flattened into an
        # aggregate), so each row's run time is computed once, not once per
        # bucket: a third of the time on 100,000 builds.
        seconds = (func.julianday(Build.finished_at) - func.julianday(Build.started_at)) * 86400.0
        source = (select(Build.job, Build.state, seconds.label("run"), is_final.label("final"))
                  .where(*where).limit(-1).subquery())
        job, build_state, final = source.c.job, source.c.state, source.c.final
        run = source.c.run
        bounds = [run <= b for b in DURATION_BUCKETS]
        total = func.sum(run)
    query = (select(job, build_state, final, func.count(), func.count(run),
                    func.coalesce(total, 0.0), *(func.count().filter(b) for b in bounds))
             .group_by(job, build_state, final))
    if source is None:
        query = query.where(*where)
    found: tuple[list[BuildGroup], list[BuildGroup]] = ([], [])
    for row in session.execute(query):
        group = BuildGroup(job=row[0], state=row[1], count=row[3], timed=row[4],
                           seconds=float(row[5]), buckets=tuple(row[6:]))
        found[0 if row[2] else 1].append(group)
    return found
