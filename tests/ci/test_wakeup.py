"""Wakeups (ci/wakeup.py): delivered after commit only, across processes on
PostgreSQL (LISTEN/NOTIFY), in-process on SQLite; and the poll still works
when a notification is lost.

Timeouts here are generous bounds on waits, never timing assertions: the
workers poll every 30 s, so a claim seen at all within the bound was woken.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session, sessionmaker

from ci import queue
from ci.changes import ChangeInfo
from ci.config import Config, parse_config
from ci.db import ensure_schema, make_engine, make_sessionmaker
from ci.models import Build, BuildState, Report, ReportState
from ci.report import send_pending
from ci.wakeup import BUILDS, REPORTS, PgListener, Wakeup, announce, install, start_wakeups
from runners.base import BuildContext, JobResult, Outcome, Runner
from runners.worker import Worker

SLOW_POLL = 30.0  # far beyond every wait below: only a wakeup gets there in time
BOUND = 20.0


class NoopRunner(Runner[None]):
    """A job that does nothing and succeeds."""

    def prepare(self, ctx: BuildContext) -> None:
        return None

    def run(self, ctx: BuildContext, prepared: None) -> JobResult:
        return JobResult(Outcome.SUCCEEDED, "nothing to do")


def make_config(tmp_path: Path, poll: float = SLOW_POLL) -> Config:
    return parse_config({
        "gerrit": {"host": "h", "username": "hyperv-ci", "key_file": "k", "known_hosts": "kh"},
        "projects": [{"name": "openstack/nova", "jobs": ["unit"]}],
        "jobs": {"unit": {"type": "local", "command": ["true"]}},
        "logs": {"dir": str(tmp_path / "logs"), "url": "http://logs.example.org/"},
        "worker": {"lease_seconds": 30, "poll_interval": poll},
        "reporter": {"poll_interval": poll},
    })


def enqueue(sessions: sessionmaker[Session], number: int) -> int:
    with sessions() as session, session.begin():
        patchset = queue.upsert_patchset(session, ChangeInfo(
            number=number, project="openstack/nova", branch="master", patchset=1,
            subject="Réveil « sans » attente"))
        build = queue.enqueue(session, patchset, "unit", "patchset-created")
        assert build is not None
        return build.id


def state_of(sessions: sessionmaker[Session], build_id: int) -> str:
    with sessions() as session:
        build = session.get(Build, build_id)
        assert build is not None
        return build.state


def wait_for(predicate: Callable[[], bool], timeout: float = BOUND) -> bool:
    """Wait for a condition (a bound, not a timing check)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


class Gerrit:
    """The reporter's I/O seam: records reviews, every change is open."""

    def __init__(self) -> None:
        self.reviews: list[int] = []

    def review(self, project: str, change: int, patchset: int, *, message: str,
               labels: dict[str, int] | None = None, tag: str | None = None) -> None:
        self.reviews.append(change)

    def query(self, query: str, **_flags: bool) -> list[dict[str, object]]:
        return [{"number": int(t.removeprefix("change:")), "status": "NEW"}
                for t in query.split(" OR ")]


def run_worker(config: Config, sessions: sessionmaker[Session], hub: Wakeup | None,
               stop: threading.Event, gerrit: Gerrit) -> threading.Thread:
    worker = Worker(config, sessions, name="w-wake", runner_factory=lambda _c, _j: NoopRunner())
    thread = threading.Thread(target=worker.run, args=(stop,), kwargs={
        "report": lambda: send_pending(sessions, lambda: gerrit, config), "wakeup": hub},
        daemon=True)
    thread.start()
    return thread


@pytest.fixture
def two_processes(engine: Engine) -> Iterator[tuple[sessionmaker[Session], sessionmaker[Session]]]:
    """The worker's sessions and another process's (no hub of its own)."""
    other = make_engine(str(engine.url.render_as_string(hide_password=False)))
    yield make_sessionmaker(engine), make_sessionmaker(other)
    other.dispose()


def test_a_queued_build_is_claimed_and_reported_without_waiting_for_the_polls(
    db_url: str, engine: Engine, tmp_path: Path,
    two_processes: tuple[sessionmaker[Session], sessionmaker[Session]],
) -> None:
    """On SQLite the build is queued in the worker's process (its hub hears the
    commit); on PostgreSQL by another process's sessions, so only LISTEN can
    wake the worker."""
    mine, theirs = two_processes
    stop = threading.Event()
    hub = start_wakeups(engine, mine, stop)
    queue_from = theirs if db_url.startswith("postgresql") else mine
    gerrit = Gerrit()
    thread = run_worker(make_config(tmp_path), mine, hub, stop, gerrit)
    try:
        time.sleep(0.3)  # the worker found nothing and sleeps on its 30 s poll
        build_id = enqueue(queue_from, 501)
        assert wait_for(lambda: state_of(mine, build_id) == BuildState.SUCCEEDED)
        # The report queued by the build's record woke the reporter too.
        assert wait_for(lambda: gerrit.reviews == [501])
    finally:
        stop.set()
        thread.join(timeout=BOUND)
    assert not thread.is_alive()  # stop wakes the waiters: no 30 s sleep to the end


def test_a_lost_notification_delays_work_but_the_poll_finds_it(
    tmp_path: Path, sqlite_url: str,
) -> None:
    """Nothing signals this worker's hub (the build is queued by another process
    on SQLite, which has no NOTIFY): the worker's 0.3 s poll still runs it."""
    engine = make_engine(sqlite_url)
    ensure_schema(engine)
    mine, theirs = make_sessionmaker(engine), make_sessionmaker(make_engine(sqlite_url))
    stop = threading.Event()
    hub = start_wakeups(engine, mine, stop)
    gerrit = Gerrit()
    thread = run_worker(make_config(tmp_path, poll=0.3), mine, hub, stop, gerrit)
    try:
        time.sleep(0.3)
        build_id = enqueue(theirs, 502)
        assert wait_for(lambda: state_of(mine, build_id) == BuildState.SUCCEEDED)
        assert wait_for(lambda: gerrit.reviews == [502])
    finally:
        stop.set()
        thread.join(timeout=BOUND)
        engine.dispose()


def test_the_wakeup_comes_after_commit_and_never_after_rollback(sessions: sessionmaker[Session],
                                                                engine: Engine) -> None:
    hub = Wakeup()
    install(sessions, hub)
    builds, reports = hub.waiter(BUILDS), hub.waiter(REPORTS)
    with sessions() as session:
        session.begin()
        announce(session, BUILDS)
        assert not builds.wait(0)  # not yet committed
        session.rollback()
    assert not builds.wait(0)
    with sessions() as session, session.begin():
        announce(session, BUILDS)
        announce(session, BUILDS)
        assert not builds.wait(0)
    assert builds.wait(0)
    assert not builds.wait(0)  # one commit, one wakeup
    assert not reports.wait(0)  # other channels sleep on
    # A session reused for a second transaction announces again.
    with sessions() as session:
        with session.begin():
            announce(session, BUILDS)
        assert builds.wait(0)
        with session.begin():
            announce(session, BUILDS)
        assert builds.wait(0)


@pytest.mark.postgres
def test_postgres_delivers_the_notification_at_commit(pg_url: str) -> None:
    engine = make_engine(pg_url)
    ensure_schema(engine)
    sessions = make_sessionmaker(engine)
    cargs, cparams = engine.dialect.create_connect_args(engine.url)
    listener = psycopg.connect(*cargs, **cparams, autocommit=True)
    try:
        listener.execute(f"LISTEN {BUILDS}")
        with sessions() as session:
            session.begin()
            announce(session, BUILDS)
            assert list(listener.notifies(timeout=0.3)) == []  # held until commit
            session.rollback()
        assert list(listener.notifies(timeout=0.3)) == []  # dropped with the rollback
        with sessions() as session, session.begin():
            announce(session, BUILDS)
        heard = [n.channel for n in listener.notifies(timeout=BOUND, stop_after=1)]
        assert heard == [BUILDS]
    finally:
        listener.close()
        engine.dispose()


@pytest.mark.postgres
def test_a_report_wakes_other_processes_only_without_a_reporter_here(pg_url: str) -> None:
    """A process with its own reporter sends the whole outbox: no NOTIFY (whose
    commit would take PostgreSQL's cluster-wide notify lock) for its reports."""
    engine = make_engine(pg_url)
    ensure_schema(engine)
    cargs, cparams = engine.dialect.create_connect_args(engine.url)
    listener = psycopg.connect(*cargs, **cparams, autocommit=True)
    try:
        listener.execute(f"LISTEN {REPORTS}")
        with_reporter, without = make_sessionmaker(engine), make_sessionmaker(engine)
        hub = Wakeup()
        install(with_reporter, hub)
        reports = hub.waiter(REPORTS)
        with with_reporter() as session, session.begin():
            announce(session, REPORTS)
        assert reports.wait(0)
        assert list(listener.notifies(timeout=0.5)) == []
        install(without, Wakeup())  # a hub, but nobody here consumes reports
        with without() as session, session.begin():
            announce(session, REPORTS)
        heard = [n.channel for n in listener.notifies(timeout=BOUND, stop_after=1)]
        assert heard == [REPORTS]
    finally:
        listener.close()
        engine.dispose()


@pytest.mark.postgres
def test_the_listener_reconnects_after_its_connection_is_killed(pg_url: str) -> None:
    engine = make_engine(pg_url)
    ensure_schema(engine)
    sessions = make_sessionmaker(engine)
    hub = Wakeup()
    builds = hub.waiter(BUILDS)
    stop = threading.Event()
    pg = PgListener(engine, hub, (BUILDS,), reconnect_seconds=0.2)
    thread = pg.start(stop)
    try:
        assert pg.listening.wait(BOUND)
        builds.wait(0)  # the signal sent on connecting
        old = pg.backend_pid()
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": old})
        # Losing the connection wakes everyone (notifications may have been lost)...
        assert builds.wait(BOUND)
        assert wait_for(lambda: pg.listening.is_set() and pg.backend_pid() not in (None, old))
        builds.wait(0)
        # ...and the new connection hears the next commit.
        with sessions() as session, session.begin():
            announce(session, BUILDS)
        assert builds.wait(BOUND)
    finally:
        stop.set()
        thread.join(timeout=BOUND)
        engine.dispose()
    assert not thread.is_alive()


def test_claimed_builds_are_running_and_reports_pending(sessions: sessionmaker[Session],
                                                      tmp_path: Path) -> None:
    """The claim wrote state and log location in one UPDATE (nothing re-read)."""
    config = make_config(tmp_path)
    build_id = enqueue(sessions, 503)
    worker = Worker(config, sessions, name="w1", runner_factory=lambda _c, _j: NoopRunner())
    claimed = worker.claim()
    assert claimed is not None and claimed.build_id == build_id
    with sessions() as session:
        build = session.get(Build, build_id)
        assert build is not None
        assert build.state == BuildState.RUNNING and build.worker == "w1"
        assert build.log_url == f"http://logs.example.org/503/1/unit-{build_id}/"
        assert build.log_path == str(tmp_path / "logs" / f"503/1/unit-{build_id}")
        assert session.scalars(select(Report)).first() is None
    assert worker.claim() is None
    worker._execute(claimed)
    with sessions() as session:
        (report,) = session.scalars(select(Report))
        assert report.state == ReportState.PENDING
