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

from sqlalchemy import Select, and_, case, func, or_, select
from sqlalchemy.orm import Session

from ci.models import Build, BuildState, Change, Patchset, TestFlip, TestResult

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


FlipKind = Literal["rerun", "recheck"]


def outcome(status: str) -> Literal["pass", "fail"] | None:
    """What a status says about the code: flaky passed in the end; skips say nothing."""
    if status in FAILING:
        return "fail"
    if status in PASSING or status == FLAKY:
        return "pass"
    return None


@dataclass(frozen=True)
class Flip:
    """One change of a test's outcome on the same code: stored as a TestFlip row."""

    kind: FlipKind
    build_id: int  # where it showed: the build that re-ran it, or the later of two
    from_build_id: int | None  # a recheck's earlier build; None for a re-run
    recovered: bool  # the later run passed (fail -> pass); a re-run always

    @property
    def failed_build(self) -> int:
        """The build of the two where the test failed."""
        if self.recovered and self.from_build_id is not None:
            return self.from_build_id
        return self.build_id


def flips_of(runs: Sequence[tuple[int, str]]) -> list[Flip]:
    """THE flaky rule: every flip of one test on one code, from its (build id, status)
    runs in build order (one patchset and job; a baseline build is code of its own).

    Each re-run that passed (status flaky) is a flip. Between builds, every outcome
    change counts, but only once the test failed and then passed in a later build:
    passing then failing alone may be the change's own bug showing late.
    """
    found = [Flip("rerun", build_id, None, True) for build_id, status in runs
             if status == FLAKY]
    outcomes = [(build_id, o) for build_id, status in runs if (o := outcome(status)) is not None]
    changes = [(before, after) for before, after in pairwise(outcomes) if before[1] != after[1]]
    # A fail somewhere before a pass means a fail -> pass change somewhere between.
    if any(after[1] == "pass" for _before, after in changes):
        found += [Flip("recheck", after[0], before[0], after[1] == "pass")
                  for before, after in changes]
    return found


def new_flips(earlier: Sequence[tuple[int, str]], latest: tuple[int, str]) -> list[Flip]:
    """The flips a build's run `latest` adds to the test's `earlier` runs on the same code
    (what the record path writes): all of them at the first fail -> pass, one a change
    after that. Their union over a history is flips_of(history)."""
    before = set(flips_of(earlier))
    return [f for f in flips_of([*earlier, latest]) if f not in before]


def recheck_flips(statuses: Sequence[str]) -> int:
    """Outcome changes in a test's statuses on one patchset, in build order (flips_of)."""
    return sum(1 for f in flips_of(list(enumerate(statuses))) if f.kind == "recheck")


def summarize_flips(test_id: str, flips: Iterable[Flip],
                    failed_at: dict[int, datetime | None]) -> FlakyTest | None:
    """A FlakyTest from one test's flips; None without any. `failed_at`: the finishing
    time of builds (those where it failed are read)."""
    rerun = recheck = 0
    involved: set[int] = set()
    failed: set[int] = set()
    for flip in flips:
        if flip.kind == "rerun":
            rerun += 1
        else:
            recheck += 1
        involved.update(b for b in (flip.build_id, flip.from_build_id) if b is not None)
        failed.add(flip.failed_build)
    if not rerun and not recheck:
        return None
    seen = [when for b in failed if (when := failed_at.get(b)) is not None]
    return FlakyTest(test_id, rerun, recheck, tuple(sorted(involved, reverse=True)),
                     max(seen) if seen else None)


def classify_flaky(test_id: str, runs_by_group: Iterable[Sequence[tuple[int, str]]],
                   failed_at: dict[int, datetime | None]) -> FlakyTest | None:
    """A FlakyTest from the (build_id, status) runs of one test, one sequence per
    (patchset, job) in build order; None when it never flipped. `failed_at` holds
    the finishing time of the builds where it failed (or was flaky)."""
    return summarize_flips(test_id, (f for runs in runs_by_group for f in flips_of(runs)),
                           failed_at)


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

    Counts the stored flips (TestFlip, written as builds are recorded) whose builds all
    finished in the window, on ix_test_flips_finished_at: the rule applied to the
    window's builds alone, so a recheck group counts only with a fail -> pass of its own
    in the window (before it, the fail may be outside).
    """
    window = (select(TestFlip.test_id, TestFlip.kind, TestFlip.build_id, TestFlip.from_build_id,
                     TestFlip.patchset_id, TestFlip.job, TestFlip.recovered, TestFlip.failed_at)
              .where(TestFlip.finished_at >= since).cte("flips_window"))
    recovered = (select(window.c.test_id, window.c.patchset_id, window.c.job)
                 .where(window.c.kind == "recheck", window.c.recovered.is_(True)).distinct()
                 .cte("flips_recovered"))
    counted = (select(window).outerjoin(recovered, and_(
        recovered.c.test_id == window.c.test_id, recovered.c.patchset_id == window.c.patchset_id,
        recovered.c.job == window.c.job))
        .where(or_(window.c.kind == "rerun", recovered.c.test_id.is_not(None)))
        .cte("flips_counted"))
    reruns = func.sum(case((counted.c.kind == "rerun", 1), else_=0))
    top = (select(counted.c.test_id, reruns.label("reruns"), func.count().label("flips"),
                  func.max(counted.c.failed_at).label("last_failed"))
           .group_by(counted.c.test_id).order_by(func.count().desc(), counted.c.test_id)
           .limit(limit).cte("flips_top"))
    rows = session.execute(select(top.c.test_id, top.c.reruns, top.c.flips, top.c.last_failed,
                                  counted.c.build_id, counted.c.from_build_id)
                           .join(counted, counted.c.test_id == top.c.test_id))
    totals: dict[str, tuple[int, int, datetime | None]] = {}
    builds: dict[str, set[int]] = {}
    for test_id, reruns_, flips, last_failed, build_id, from_build_id in rows:
        totals[test_id] = (int(reruns_), int(flips) - int(reruns_), last_failed)
        builds.setdefault(test_id, set()).update(
            b for b in (build_id, from_build_id) if b is not None)
    found = [FlakyTest(test_id, rerun, recheck, tuple(sorted(builds[test_id], reverse=True)),
                       last_failed)
             for test_id, (rerun, recheck, last_failed) in totals.items()]
    # In Python: the database's collation may order test ids otherwise.
    found.sort(key=lambda f: (-f.flips, f.test_id))
    return found
