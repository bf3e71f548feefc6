"""Test results across builds: per-test statistics, one test's history, flaky tests.

Statuses are subunit's (`success fail skip xfail uxsuccess`) plus `flaky`, a
failure that passed when the job re-ran it in the same build
(runners/rerun.py). A test is flaky when it failed and then passed on the
same code: on a re-run inside one build, or in a later build of the same
job on the same patchset (a recheck). Its flip count is how often its
outcome changed on the same code: each in-build re-run that passed, plus
each change between consecutive builds of one patchset and job.

The queries read a window of builds (the newest N finished, or those
finished since a time) through the indexes of migration 0006, so their cost
follows the window, not the 10M results of a year. The classification is
pure (`recheck_flips`, `classify_flaky`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise
from typing import Literal

from sqlalchemy import Select, and_, case, exists, func, null, or_, select, text, union_all
from sqlalchemy.orm import Session, aliased

from ci.models import FAILING_RESULTS_SQL, Build, BuildState, Change, Patchset, TestResult

FAILING = frozenset({"fail", "uxsuccess"})
PASSING = frozenset({"success", "xfail"})
FLAKY = "flaky"
VERDICT_STATES = (BuildState.SUCCEEDED.value, BuildState.FAILED.value)
DEFAULT_WINDOW = 200  # builds the /tests statistics cover
MAX_WINDOW = 2000
SortKey = Literal["failures", "rate", "slowest", "name"]
SORT_KEYS: tuple[SortKey, ...] = ("failures", "rate", "slowest", "name")
DETAILS_SHOWN = 4000  # characters of a failure's traceback in a history row


@dataclass(frozen=True)
class FailureRef:
    """The newest build of the window where a test failed."""

    build_id: int
    finished_at: datetime | None


@dataclass(frozen=True)
class TestStats:
    """One test over a window of builds."""

    __test__ = False  # not a pytest class

    test_id: str
    runs: int
    failures: int  # fail or uxsuccess: the build failed for it
    flaky: int  # failed, then passed on a re-run in the same build
    skips: int
    max_duration: float | None
    mean_duration: float | None
    last_failure: FailureRef | None

    @property
    def failure_rate(self) -> float:
        """Failures among the runs that ran (skips left out), 0..1."""
        ran = self.runs - self.skips
        return self.failures / ran if ran else 0.0


@dataclass(frozen=True)
class TestRun:
    """One result of one test in one build."""

    __test__ = False

    build_id: int
    job: str
    build_state: str
    project: str | None  # None for a baseline build
    change: int | None
    patchset: int | None
    status: str
    duration: float | None
    finished_at: datetime | None
    details: str  # the traceback's first DETAILS_SHOWN characters

    @property
    def failed(self) -> bool:
        return self.status in FAILING


@dataclass(frozen=True)
class FlakyTest:
    """A test whose outcome changed on the same code, with where it did."""

    test_id: str
    rerun_flips: int  # builds where it failed then passed on a re-run
    recheck_flips: int  # outcome changes between builds of one patchset and job
    builds: tuple[int, ...]  # the builds involved, newest first
    last_failed: datetime | None  # when the newest of those where it failed finished

    @property
    def flips(self) -> int:
        return self.rerun_flips + self.recheck_flips


def outcome(status: str) -> Literal["pass", "fail"] | None:
    """What a status says about the code: flaky passed in the end; skips say nothing."""
    if status in FAILING:
        return "fail"
    if status in PASSING or status == FLAKY:
        return "pass"
    return None


def recheck_flips(statuses: Sequence[str]) -> int:
    """Outcome changes in a test's statuses on one patchset, in build order.

    0 unless it failed in one build and passed in a later one (the flaky
    rule); passing then failing alone may be the change's own fault shown late.
    """
    outcomes = [o for o in map(outcome, statuses) if o is not None]
    failed_then_passed = any(
        outcomes[i] == "fail" and "pass" in outcomes[i + 1:] for i in range(len(outcomes)))
    if not failed_then_passed:
        return 0
    return sum(1 for before, after in pairwise(outcomes) if before != after)


def classify_flaky(test_id: str, runs_by_group: Iterable[Sequence[tuple[int, str]]],
                   failed_at: dict[int, datetime | None]) -> FlakyTest | None:
    """A FlakyTest from the (build_id, status) runs of one test, one sequence per
    (patchset, job) in build order; None when it never flipped. `failed_at` holds
    the finishing time of the builds where it failed (or was flaky)."""
    rerun = 0
    recheck = 0
    involved: set[int] = set()
    for runs in runs_by_group:
        for build_id, status in runs:
            if status == FLAKY:
                rerun += 1
                involved.add(build_id)
        flips = recheck_flips([status for _, status in runs])
        if flips:
            recheck += flips
            involved.update(build_id for build_id, _ in runs)
    if not rerun and not recheck:
        return None
    builds = tuple(sorted(involved, reverse=True))
    seen = [when for b in builds if (when := failed_at.get(b)) is not None]
    return FlakyTest(test_id, rerun, recheck, builds, max(seen) if seen else None)


def window_builds(limit: int) -> Select[int]:
    """The ids of the newest `limit` builds that ran to a verdict (passed or failed: errors
    and aborts mostly ran no test), on ix_builds_finished_at walked backwards."""
    return (select(Build.id).where(Build.finished_at.is_not(None),
                                   Build.state.in_(VERDICT_STATES))
            .order_by(Build.finished_at.desc(), Build.id.desc()).limit(limit))


def test_stats(session: Session, *, window: int = DEFAULT_WINDOW, sort: SortKey = "failures",
               contains: str = "", limit: int = 200) -> list[TestStats]:
    """Per test id over the newest `window` builds with a verdict: runs, failures, flaky runs,
    durations and the newest failure (two statements)."""
    window = max(1, min(window, MAX_WINDOW))
    failing = TestResult.status.in_(sorted(FAILING))
    query = (select(
        TestResult.test_id,
        func.count().label("runs"),
        func.sum(case((failing, 1), else_=0)).label("failures"),
        func.sum(case((TestResult.status == FLAKY, 1), else_=0)).label("flaky"),
        func.sum(case((TestResult.status == "skip", 1), else_=0)).label("skips"),
        func.max(TestResult.duration).label("max_duration"),
        func.avg(TestResult.duration).label("mean_duration"),
        func.max(case((failing, TestResult.build_id))).label("last_failed"),
    ).where(TestResult.build_id.in_(window_builds(window).scalar_subquery()))
        .group_by(TestResult.test_id))
    if contains:
        query = query.where(TestResult.test_id.contains(contains, autoescape=True))
    order = {
        "failures": (func.sum(case((failing, 1), else_=0)).desc(), TestResult.test_id),
        "rate": ((func.sum(case((failing, 1), else_=0)) * 1.0
                  / func.nullif(func.count() - func.sum(case((TestResult.status == "skip", 1),
                                                             else_=0)), 0)).desc(),
                 TestResult.test_id),
        "slowest": (func.max(TestResult.duration).desc(), TestResult.test_id),
        "name": (TestResult.test_id,),
    }[sort]
    if sort in ("rate", "slowest"):
        # NULLs (never ran / no duration) last on both engines.
        order = (order[0].nulls_last(), *order[1:])
    rows = session.execute(query.order_by(*order).limit(limit)).all()
    failed_ids = [r.last_failed for r in rows if r.last_failed is not None]
    finished = dict(session.execute(select(Build.id, Build.finished_at)
                                    .where(Build.id.in_(failed_ids))).all()
                    ) if failed_ids else {}
    return [
        TestStats(
            test_id=r.test_id, runs=int(r.runs), failures=int(r.failures or 0),
            flaky=int(r.flaky or 0), skips=int(r.skips or 0),
            max_duration=None if r.max_duration is None else float(r.max_duration),
            mean_duration=None if r.mean_duration is None else float(r.mean_duration),
            last_failure=None if r.last_failed is None
            else FailureRef(r.last_failed, finished.get(r.last_failed)),
        )
        for r in rows
    ]


def test_history(session: Session, test_id: str, limit: int = 100,
                 before_build: int | None = None) -> list[TestRun]:
    """The test's results, newest build first, with each build's job, state and change
    (one statement, on ix_test_results_test_id_build_id)."""
    query = (select(TestResult.build_id, TestResult.status, TestResult.duration,
                    func.substr(TestResult.details, 1, DETAILS_SHOWN).label("details"),
                    Build.job, Build.state, Build.finished_at, Patchset.number.label("ps"),
                    Change.number.label("change"), Change.project)
             .join(Build, Build.id == TestResult.build_id)
             # Outer: a baseline build (a branch tip, ci/baseline.py) has no patchset.
             .outerjoin(Patchset, Patchset.id == Build.patchset_id)
             .outerjoin(Change, Change.id == Patchset.change_id)
             .where(TestResult.test_id == test_id))
    if before_build is not None:
        query = query.where(TestResult.build_id < before_build)
    rows = session.execute(query.order_by(TestResult.build_id.desc()).limit(limit))
    return [TestRun(build_id=r.build_id, job=r.job, build_state=r.state, project=r.project,
                    change=r.change, patchset=r.ps, status=r.status, duration=r.duration,
                    finished_at=r.finished_at, details=r.details or "")
            for r in rows]


def summarize(test_id: str, runs: Sequence[TestRun]) -> TestStats:
    """TestStats of the runs one history page shows (pure)."""
    durations = [r.duration for r in runs if r.duration is not None]
    failed = [r for r in runs if r.failed]
    newest = max(failed, key=lambda r: r.build_id) if failed else None
    return TestStats(
        test_id=test_id, runs=len(runs), failures=len(failed),
        flaky=sum(1 for r in runs if r.status == FLAKY),
        skips=sum(1 for r in runs if r.status == "skip"),
        max_duration=max(durations) if durations else None,
        mean_duration=sum(durations) / len(durations) if durations else None,
        last_failure=None if newest is None else FailureRef(newest.build_id, newest.finished_at),
    )


def flaky_tests(session: Session, since: datetime, limit: int = 200) -> list[FlakyTest]:
    """Tests that flipped in builds finished since `since`, most flips first (one statement).

    The window's builds, grouped by code (patchset and job); the tests with a
    failing or flaky result in a group (the partial index
    ix_test_results_failing, per build); then every result of just those tests
    in the builds of their group (ix_test_results_test_id_build_id).
    """
    # Same code = same patchset and job. A baseline build (no patchset) tests a
    # branch tip that moves: it is a group of its own (its id, negated).
    code = func.coalesce(Build.patchset_id, -Build.id)
    window = (select(Build.id, code.label("code"), Build.job, Build.finished_at)
              .where(Build.finished_at >= since).cte("flaky_window"))
    # Code built more than once: only there can a failure be followed by a pass.
    rebuilt = (select(window.c.code, window.c.job).group_by(window.c.code, window.c.job)
               .having(func.count() > 1).cte("flaky_rebuilt"))
    # The literal predicate of the partial index, so PostgreSQL can prove it applies;
    # a plain failure of code built once can flip nothing.
    failing = (select(TestResult.build_id, TestResult.test_id, TestResult.status,
                      window.c.code, window.c.job, window.c.finished_at)
               .join(window, window.c.id == TestResult.build_id)
               .outerjoin(rebuilt, and_(rebuilt.c.code == window.c.code,
                                        rebuilt.c.job == window.c.job))
               .where(text(FAILING_RESULTS_SQL))
               .where(or_(TestResult.status == FLAKY, rebuilt.c.code.is_not(None)))
               .cte("flaky_failing"))
    failed = select(failing.c.code, failing.c.job, failing.c.test_id).distinct().cte(
        "flaky_failed")
    # The same tests' results in the other builds of their group: a lookup each,
    # none for the builds where they failed (known already).
    other = aliased(TestResult)
    # No finishing time: only the failures' are shown (and converting 10,000s of
    # timestamps is a good part of the cost).
    others = (select(other.build_id, other.test_id, other.status, window.c.code,
                     window.c.job, null().label("finished_at"))
              .select_from(failed)
              .join(window, and_(window.c.code == failed.c.code, window.c.job == failed.c.job))
              .where(~exists().where(failing.c.build_id == window.c.id,
                                     failing.c.test_id == failed.c.test_id))
              .join(other, and_(other.build_id == window.c.id,
                                other.test_id == failed.c.test_id)))
    if session.get_bind().dialect.name == "postgresql":
        # This plan's cost estimate grows with the window and, past jit_above_cost
        # (100,000 by default), PostgreSQL JIT-compiles it: ~0.6 s of compiling,
        # measured at 30 days of 10M results, for a query that runs in ~0.2 s.
        session.execute(text("SET LOCAL jit = off"))
    rows = session.execute(union_all(select(failing), others))
    runs: dict[tuple[str, int, str], dict[int, str]] = {}
    failed_at: dict[int, datetime | None] = {}
    for build_id, test_id, status, group, job, finished_at in rows:
        runs.setdefault((test_id, group, job), {})[build_id] = status
        if finished_at is not None:
            failed_at[build_id] = finished_at
    by_test: dict[str, list[list[tuple[int, str]]]] = {}
    for (test_id, _group, _job), statuses in runs.items():
        by_test.setdefault(test_id, []).append(sorted(statuses.items()))
    found = [flaky for test_id, groups in by_test.items()
             if (flaky := classify_flaky(test_id, groups, failed_at)) is not None]
    found.sort(key=lambda f: (-f.flips, f.test_id))
    return found[:limit]
