"""Flips as rows: the ones a recorded build adds, and the history's before there were any.

The rule is `ci.test_history.flips_of` (pure); this module turns its flips into
TestFlip rows. `recorded` runs in the transaction that records a build's
results (ci/verdict_record.py `assess`), on the results that statement read
already; `backfill` writes the flips of every build recorded before that
(migration 0012), so the /flaky page counts the same flips for old and new
builds. Builds that ran to a verdict (passed or failed) are the ones compared:
errors and aborts mostly ran no test, and are not assessed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import groupby

from sqlalchemy import Connection, and_, func, insert, select

from ci.models import Build, TestFlip, TestResult, utcnow
from ci.test_history import FAILING, FLAKY, VERDICT_STATES, Flip, flips_of, new_flips

BATCH = 5000  # rows an INSERT of the backfill carries


@dataclass(frozen=True)
class Run:
    """One result of a test in one build of the code being compared."""

    build_id: int
    test_id: str
    status: str
    finished_at: datetime | None  # its build's
    build_state: str = "succeeded"  # its build's: only builds with a verdict are compared
    details: str = ""  # a failure's traceback (the verdict's signatures read it)


def flip_rows(test_id: str, patchset_id: int | None, job: str, flips: Iterable[Flip],
              finished: Mapping[int, datetime | None]) -> Iterator[dict[str, object]]:
    """TestFlip column values of one test's flips; `finished`: its builds' finishing times."""
    for flip in flips:
        ends = [when for b in (flip.build_id, flip.from_build_id)
                if b is not None and (when := finished.get(b)) is not None]
        yield {"test_id": test_id, "build_id": flip.build_id,
               "from_build_id": flip.from_build_id, "patchset_id": patchset_id, "job": job,
               "kind": flip.kind, "recovered": flip.recovered,
               # The earlier end: a window that starts by then holds both builds.
               "finished_at": min(ends) if ends else utcnow(),
               "failed_at": finished.get(flip.failed_build)}


def recorded(build: Build, runs: Sequence[Run]) -> list[TestFlip]:
    """The flips `build`'s results add to its code's history (pure).

    `runs`: the build's results and those of the earlier finished builds of its
    patchset and job, for every test that may flip: failed in one of them, or
    flaky in this one. A baseline build (no patchset) is compared with nothing:
    only its re-runs count.
    """
    finished: dict[int, datetime | None] = {r.build_id: r.finished_at for r in runs}
    finished[build.id] = build.finished_at or utcnow()
    by_test: dict[str, list[Run]] = {}
    for run in sorted(runs, key=lambda r: r.build_id):
        if run.build_id == build.id or (build.patchset_id is not None
                                        and run.build_state in VERDICT_STATES):
            by_test.setdefault(run.test_id, []).append(run)
    found: list[TestFlip] = []
    for test_id, test_runs in by_test.items():
        latest = [(r.build_id, r.status) for r in test_runs if r.build_id == build.id]
        if not latest:  # it did not run in this build: nothing changed
            continue
        earlier = [(r.build_id, r.status) for r in test_runs if r.build_id < build.id]
        flips = new_flips(earlier, latest[0])
        found += [TestFlip(**row) for row in flip_rows(test_id, build.patchset_id, build.job,
                                                       flips, finished)]
    return found


def backfill(conn: Connection) -> int:
    """Write the flips of every finished build with a verdict; returns how many.

    Two reads: every result of the tests that failed on code built more than once
    (in build order, a group per test, patchset and job), and every flaky result
    (a re-run flip wherever it is, a baseline's too).
    """
    verdict = and_(Build.finished_at.is_not(None), Build.state.in_(VERDICT_STATES))
    rebuilt = (select(Build.patchset_id, Build.job).where(verdict, Build.patchset_id.is_not(None))
               .group_by(Build.patchset_id, Build.job).having(func.count() > 1)
               .cte("backfill_rebuilt"))
    failed = (select(Build.patchset_id, Build.job, TestResult.test_id).distinct()
              .join(TestResult, TestResult.build_id == Build.id)
              .join(rebuilt, and_(rebuilt.c.patchset_id == Build.patchset_id,
                                  rebuilt.c.job == Build.job))
              .where(verdict, TestResult.status.in_(sorted(FAILING))).cte("backfill_failed"))
    runs = conn.execute(
        select(failed.c.patchset_id, failed.c.job, failed.c.test_id, TestResult.build_id,
               TestResult.status, Build.finished_at)
        .select_from(failed)
        .join(Build, and_(Build.patchset_id == failed.c.patchset_id, Build.job == failed.c.job))
        .join(TestResult, and_(TestResult.build_id == Build.id,
                               TestResult.test_id == failed.c.test_id))
        .where(verdict)
        .order_by(failed.c.patchset_id, failed.c.job, failed.c.test_id, TestResult.build_id))
    rows: list[dict[str, object]] = []
    reruns: set[tuple[int, str]] = set()
    for (patchset_id, job, test_id), group in groupby(runs, key=lambda r: (r[0], r[1], r[2])):
        results = list(group)
        finished = {r.build_id: r.finished_at for r in results}
        flips = flips_of([(r.build_id, r.status) for r in results])
        reruns.update((f.build_id, test_id) for f in flips if f.kind == "rerun")
        rows += flip_rows(test_id, patchset_id, job, flips, finished)
    flaky = conn.execute(
        select(TestResult.build_id, TestResult.test_id, Build.patchset_id, Build.job,
               Build.finished_at)
        .join(Build, Build.id == TestResult.build_id)
        .where(verdict, TestResult.status == FLAKY).order_by(TestResult.build_id))
    for build_id, test_id, patchset_id, job, finished_at in flaky:
        if (build_id, test_id) not in reruns:
            rows += flip_rows(test_id, patchset_id, job, flips_of([(build_id, FLAKY)]),
                              {build_id: finished_at})
    for start in range(0, len(rows), BATCH):
        conn.execute(insert(TestFlip), rows[start:start + BATCH])
    return len(rows)
