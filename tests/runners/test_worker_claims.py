"""The worker's database cost per build (issue 14): from claim to recorded
result at most 8 statements and 3 commits, for a job that runs no step.

Counted with SQLAlchemy's engine events, on both engines. SQLite's
`BEGIN IMMEDIATE` (ci/db.py) is left out: it is how SQLite starts the
transaction PostgreSQL's driver starts without a statement of its own.
Each step a job records adds its own two commits (its row when it starts,
its result when it ends), so the dashboard shows it live.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, select
from sqlalchemy.orm import Session, sessionmaker

from ci import report as report_module
from ci.models import Build, BuildState, Report, TestResult
from ci.wakeup import REPORTS, Wakeup, install
from runners.base import BuildContext, JobResult, Outcome, Runner, TestOutcome
from runners.worker import Worker
from tests.ci.test_wakeup import enqueue, make_config

MAX_STATEMENTS = 8
MAX_COMMITS = 3


class NoopRunner(Runner[None]):
    """A job that runs nothing and reports `tests` (a no-op job)."""

    def __init__(self, tests: list[TestOutcome], tested_commit: str | None = None) -> None:
        self.tests = tests
        self.tested_commit = tested_commit

    def prepare(self, ctx: BuildContext) -> None:
        return None

    def run(self, ctx: BuildContext, prepared: None) -> JobResult:
        return JobResult(Outcome.SUCCEEDED, "nothing to do", list(self.tests),
                         tested_commit=self.tested_commit)


@dataclass
class Counts:
    statements: list[str] = field(default_factory=list)
    commits: int = 0
    verdict: list[str] = field(default_factory=list)  # sent by ci.verdict_record.assess
    in_verdict: bool = False


@contextmanager
def counting(engine: Engine) -> Iterator[Counts]:
    counts = Counts()

    def on_execute(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.strip().upper() != "BEGIN IMMEDIATE":
            counts.statements.append(statement.split("\n")[0][:120])
            if counts.in_verdict:
                counts.verdict.append(counts.statements[-1])

    def on_commit(_conn: Any) -> None:
        counts.commits += 1

    event.listen(engine, "before_cursor_execute", on_execute)
    event.listen(engine, "commit", on_commit)
    try:
        yield counts
    finally:
        event.remove(engine, "before_cursor_execute", on_execute)
        event.remove(engine, "commit", on_commit)


def run_counted(engine: Engine, sessions: sessionmaker[Session], tmp_path: Path,
                monkeypatch: pytest.MonkeyPatch, with_tests: bool = True,
                ) -> tuple[Counts, Worker, int]:
    """One no-op build from claim to recorded result, its statements counted
    (those the verdict's `assess` sends marked apart)."""
    tests = [TestOutcome(f"tempest.api.test_{i}", "success", 0.1) for i in range(50)]
    tests.append(TestOutcome("tempest.api.test_flaky", "flaky", 0.2, "Traceback: früh", 1))
    if not with_tests:
        tests = []
    config = make_config(tmp_path)
    # As `work` wires it: this process's reporter thread consumes the reports.
    hub = Wakeup()
    install(sessions, hub)
    hub.waiter(REPORTS)
    build_id = enqueue(sessions, 601)
    worker = Worker(config, sessions, name="w1", runner_factory=lambda _c, _j: NoopRunner(tests))
    with counting(engine) as counts:
        real_assess = report_module.assess

        def assess(*args: Any, **kwargs: Any) -> Any:
            counts.in_verdict = True
            try:
                return real_assess(*args, **kwargs)
            finally:
                counts.in_verdict = False

        monkeypatch.setattr(report_module, "assess", assess)
        assert worker.run_once()
    # And it did the whole job: result, tests, report (naming the flaky test).
    with sessions() as session:
        build = session.get(Build, build_id)
        assert build is not None and build.state == BuildState.SUCCEEDED
        assert build.log_url and build.log_path
        stored = session.scalars(select(TestResult).where(TestResult.build_id == build_id))
        assert len(list(stored)) == len(tests)
        (report,) = session.scalars(select(Report))
        assert ("tempest.api.test_flaky" in report.message) == with_tests
        assert report.vote == 1
    return counts, worker, build_id


def test_the_workers_own_path_costs_6_statements_and_2_commits(
    engine: Engine, sessions: sessionmaker[Session], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Claim (SELECT, UPDATE), finish (UPDATE, SELECT), tests, report: the
    worker's and the queue's own statements, the verdict's set apart."""
    counts, worker, _build = run_counted(engine, sessions, tmp_path, monkeypatch)
    own = [s for s in counts.statements if s not in counts.verdict]
    assert len(own) <= 6, "\n".join(own)
    assert counts.commits <= 2, "\n".join(counts.statements)
    with counting(engine) as idle:
        assert not worker.run_once()
    assert idle.commits <= 1 and len(idle.statements) <= 1, idle.statements


def test_claim_to_recorded_result_costs_at_most_8_statements_and_3_commits(
    engine: Engine, sessions: sessionmaker[Session], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counts, _worker, _build = run_counted(engine, sessions, tmp_path, monkeypatch)
    listing = "\n".join(counts.statements)
    assert len(counts.statements) <= MAX_STATEMENTS, listing
    assert counts.commits <= MAX_COMMITS, listing


def test_the_tested_commit_costs_no_statement_of_its_own(
    engine: Engine, sessions: sessionmaker[Session], tmp_path: Path,
) -> None:
    """The job's tested commit (a merge, a baseline's tip) is written by the
    finishing UPDATE, not by an UPDATE of its own flushed before the verdict's SELECT."""
    config = make_config(tmp_path)
    hub = Wakeup()
    install(sessions, hub)
    hub.waiter(REPORTS)
    counted = []
    for number, commit in ((602, None), (603, "c0ffee" * 6 + "ab12")):
        build_id = enqueue(sessions, number)
        worker = Worker(config, sessions, name="w1",
                        runner_factory=lambda _c, _j, commit=commit: NoopRunner([], commit))
        with counting(engine) as counts:
            assert worker.run_once()
        counted.append(counts.statements)
        with sessions() as session:
            build = session.get(Build, build_id)
            assert build is not None and build.state == BuildState.SUCCEEDED
            assert build.tested_commit == commit
    without, with_commit = counted
    assert len(with_commit) == len(without), "\n".join(with_commit)


def test_a_build_without_results_costs_the_verdict_no_statement(
    engine: Engine, sessions: sessionmaker[Session], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nothing of its own to classify or flip: the verdict's SELECT is left out,
    and the build is still reported (its +1)."""
    counts, _worker, _build = run_counted(engine, sessions, tmp_path, monkeypatch,
                                          with_tests=False)
    assert counts.verdict == [], "\n".join(counts.verdict)
