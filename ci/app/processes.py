"""Where every hyperv-ci process is wired: one function per kind.

A process opens the database once (engine, schema check, sessions), starts
the timers it owes the CI (the reaper in the listener and in every worker,
the heartbeat file when asked), runs its part until a `stop` Event is set,
and closes what it opened. `run_listener`, `run_worker` and `run_dashboard`
are those processes; `listen`, `work` and `start_dashboard` are their parts,
which the demo runs side by side in one process (ci/app/demo.py).

SIGINT and SIGTERM set the Event (`stop_on_signals`); a second signal exits
at once. Callers that run a process on a thread (the tests) pass their own
Event instead: signal handlers can only be installed from the main thread.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from ci.baseline import start_schedule
from ci.config import Config, GerritConfig
from ci.db import ensure_schema, make_engine, make_sessionmaker
from ci.gerrit import GerritClient
from ci.gerrit_rest import GerritRestClient
from ci.heartbeat import Pulse, database_probe
from ci.reaper import start_reaper
from ci.report import ReviewClient, send_pending
from ci.wakeup import hub_of, start_wakeups
from dashboard import create_app
from dashboard.server import RunningServer, start_in_thread
from listener.scheduler import Scheduler
from listener.stream import Listener
from runners.worker import Worker

logger = logging.getLogger("hyperv-ci")


def stop_on_signals() -> threading.Event:
    """An Event set by SIGINT/SIGTERM (the second signal exits at once)."""
    stop = threading.Event()

    def _handler(signum: int, _frame: object) -> None:
        if stop.is_set():
            raise SystemExit(128 + signum)
        logger.info("signal %s: stopping", signum)
        stop.set()

    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)
    return stop


@dataclass(frozen=True)
class Heartbeat:
    """The file a process touches while its database answers (`hyperv-ci alive`)."""

    path: Path
    interval: float = 15.0


@dataclass(frozen=True)
class Database:
    """A process's one engine and the sessions every part of it shares."""

    engine: Engine
    sessions: sessionmaker[Session]


def open_database(config: Config) -> Database:
    """Connect and make sure the schema is current (ci.db waits for `db upgrade`)."""
    engine = make_engine(config.database.sqlalchemy_url())
    ensure_schema(engine)
    return Database(engine, make_sessionmaker(engine))


def start_timers(config: Config, sessions: sessionmaker[Session], stop: threading.Event, *,
                 heartbeat: Heartbeat | None = None) -> None:
    """The process's wakeups (a committed build or report wakes its waiters here:
    ci/wakeup.py, LISTEN on PostgreSQL), the reaper (a dead worker's build is
    reaped whatever this process is doing) and, if asked, the heartbeat; all
    end with `stop`."""
    if hub_of(sessions) is None:
        start_wakeups(sessions.kw["bind"], sessions, stop)
    start_reaper(sessions, config.worker.max_attempts, config.worker.lease_seconds, stop)
    # Scheduled baseline builds: every process tries, a period's run is queued once.
    start_schedule(config, sessions, stop)
    if heartbeat is not None:
        Pulse(heartbeat.path, database_probe(config.database.sqlalchemy_url()),
              heartbeat.interval).start(stop)


@contextmanager
def _process(config: Config, stop: threading.Event, *, timers: bool = True,
             heartbeat: Heartbeat | None = None) -> Iterator[Database]:
    """The database and timers of one process; on the way out `stop` is set
    (a part that failed stops the others) and the engine closed."""
    database = open_database(config)
    try:
        if timers:
            start_timers(config, database.sessions, stop, heartbeat=heartbeat)
        yield database
    finally:
        stop.set()
        database.engine.dispose()


# -- the parts ---------------------------------------------------------------------------------


def listen(config: Config, sessions: sessionmaker[Session], stop: threading.Event) -> None:
    """Gerrit's stream into the events table, and the scheduler turning events into
    builds (woken by every commit), until `stop`."""
    scheduler = Scheduler(config, sessions, GerritClient(config.gerrit))
    listener = Listener(config, sessions, lambda: GerritClient(config.gerrit),
                        on_flush=lambda _n: scheduler.wake())
    thread = threading.Thread(target=scheduler.run, args=(stop,), name="scheduler")
    thread.start()
    try:
        listener.run(stop)
    finally:
        stop.set()
        scheduler.wake()
        thread.join()


def review_client(gerrit: GerritConfig) -> ReviewClient:
    """The client votes go out through: `gerrit review` over SSH, or REST."""
    if gerrit.report == "rest":
        return GerritRestClient(gerrit)
    return GerritClient(gerrit)


def work(config: Config, sessions: sessionmaker[Session], stop: threading.Event,
         name: str | None = None) -> None:
    """Run builds until `stop`; the outbox is sent from the worker's own thread,
    so a vote never waits behind a running build. Both wake on the process's
    wakeups (`start_timers`) and poll slowly besides."""

    def report() -> None:
        send_pending(sessions, lambda: review_client(config.gerrit), config)

    Worker(config, sessions, name=name).run(stop, report=report, wakeup=hub_of(sessions))


def start_dashboard(config: Config, sessions: sessionmaker[Session], host: str,
                    port: int) -> RunningServer:
    """The dashboard on waitress's threads; port 0 picks a free one."""
    server, _thread, _port = start_in_thread(create_app(config, sessions=sessions), host, port)
    return server


# -- the processes -----------------------------------------------------------------------------


def run_listener(config: Config, stop: threading.Event | None = None, *,
                 heartbeat: Heartbeat | None = None) -> None:
    """`hyperv-ci listen`: the stream, the scheduler and a reaper, until `stop`."""
    stop = stop if stop is not None else stop_on_signals()
    with _process(config, stop, heartbeat=heartbeat) as database:
        listen(config, database.sessions, stop)


def run_worker(config: Config, stop: threading.Event | None = None, *, name: str | None = None,
               heartbeat: Heartbeat | None = None) -> None:
    """`hyperv-ci worker`: builds, the outbox and a reaper, until `stop`."""
    stop = stop if stop is not None else stop_on_signals()
    with _process(config, stop, heartbeat=heartbeat) as database:
        work(config, database.sessions, stop, name)


def run_dashboard(config: Config, host: str | None = None, port: int | None = None,
                  stop: threading.Event | None = None) -> None:
    """`hyperv-ci dashboard`: serve until `stop` (the dashboard reaps nothing)."""
    stop = stop if stop is not None else stop_on_signals()
    host = host if host is not None else config.dashboard.host
    port = port if port is not None else config.dashboard.port
    with _process(config, stop, timers=False) as database:
        server = start_dashboard(config, database.sessions, host, port)
        try:
            stop.wait()
        finally:
            server.close()
    logger.info("dashboard stopped")
