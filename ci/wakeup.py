"""Wake, don't poll: a committed change wakes the processes waiting for it.

A transaction that makes work for someone (queues a build, queues a report)
calls `announce(session, CHANNEL)`. The wakeup is delivered only after the
transaction commits, never for one that rolls back:

- on PostgreSQL, `announce` runs `SELECT pg_notify(channel, '')` inside the
  transaction. PostgreSQL holds a notification back until its transaction
  commits and drops it on rollback, and folds repeats of one channel and
  payload within a transaction into one (NOTIFY, PostgreSQL documentation:
  https://www.postgresql.org/docs/current/sql-notify.html). Every process
  that LISTENs on the channel (`PgListener`, a dedicated autocommit
  connection) hears it, whichever process committed;
- in the same process (the demo on SQLite, and as a shortcut on PostgreSQL)
  an `after_commit` hook signals the process's `Wakeup` hub, which the
  session carries in `Session.info` (`install`).

A waiter waits for its channel *or* its poll interval, whichever comes first:
the slow poll stays as the fallback, so a lost notification (a listener
connection that dropped, a process without a hub) delays work, never loses it.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from sqlalchemy import Engine, event, func, select
from sqlalchemy.orm import Session, sessionmaker

logger = logging.getLogger(__name__)

#: A build was queued (or nodes freed up for one): workers look for work.
BUILDS = "hyperv_ci_builds"
#: A report was queued: the reporter sends the outbox.
REPORTS = "hyperv_ci_reports"
#: Gerrit events were stored: the scheduler turns them into builds.
EVENTS = "hyperv_ci_events"
ALL_CHANNELS = (BUILDS, REPORTS, EVENTS)
# Channels whose work any one consumer does whole (a reporter sends every due
# report): a process that consumes one itself need not wake the others. That
# keeps NOTIFY off every build's record: a committing NOTIFY takes a
# cluster-wide lock held through the commit, which serialises the committers
# (PreCommit_Notify in PostgreSQL's src/backend/commands/async.c).
LOCAL_CONSUMER_ENOUGH = frozenset({REPORTS})

_HUB_KEY = "hyperv_ci.wakeup"
_ANNOUNCED_KEY = "hyperv_ci.wakeup.announced"


class Wakeup:
    """One process's signals, one counter per channel; thread-safe.

    `signal` bumps a channel's counter; a `Waiter` remembers the counter it
    last saw, so a signal sent while its owner was busy is not missed.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._counts: dict[str, int] = {}
        self._consumers: set[str] = set()
        self._closed = False

    def signal(self, *channels: str) -> None:
        with self._cond:
            for channel in channels:
                self._counts[channel] = self._counts.get(channel, 0) + 1
            self._cond.notify_all()

    def signal_all(self) -> None:
        """Wake every waiter: after a lost LISTEN connection anything may have been missed."""
        with self._cond:
            for channel in self._counts:
                self._counts[channel] += 1
            self._cond.notify_all()

    def close(self) -> None:
        """Release every waiter now and from now on (the process is stopping)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def waiter(self, channel: str) -> Waiter:
        """A consumer of `channel` in this process."""
        with self._cond:
            seen = self._counts.setdefault(channel, 0)
            self._consumers.add(channel)
        return Waiter(self, channel, seen)

    def register(self, channel: str) -> None:
        """Count `channel`'s signals without consuming it (for `signal_all`)."""
        with self._cond:
            self._counts.setdefault(channel, 0)

    def consumes(self, channel: str) -> bool:
        return channel in self._consumers

    def close_when(self, stop: threading.Event) -> threading.Thread:
        """Close the hub once `stop` is set (a waiter must not sleep through a shutdown)."""
        def _watch() -> None:
            stop.wait()
            self.close()

        thread = threading.Thread(target=_watch, name="wakeup-stop", daemon=True)
        thread.start()
        return thread


class Waiter:
    """One consumer's view of a channel: `wait` returns early once it was signalled."""

    def __init__(self, hub: Wakeup, channel: str, seen: int) -> None:
        self._hub = hub
        self.channel = channel
        self._seen = seen  # the channel's count when this waiter was made

    def wait(self, timeout: float) -> bool:
        """Sleep up to `timeout` seconds; True if signalled (or the hub closed) meanwhile."""
        hub = self._hub
        with hub._cond:
            woke = hub._cond.wait_for(
                lambda: hub._closed or hub._counts[self.channel] != self._seen, timeout)
            self._seen = hub._counts[self.channel]
        return bool(woke)


def install(sessions: sessionmaker[Session], hub: Wakeup) -> None:
    """Make every session of `sessions` signal `hub` after it commits an announcement."""
    info = dict(sessions.kw.get("info") or {})
    info[_HUB_KEY] = hub
    sessions.configure(info=info)


def hub_of(sessions: sessionmaker[Session]) -> Wakeup | None:
    """The hub `install` gave these sessions, if any."""
    hub = (sessions.kw.get("info") or {}).get(_HUB_KEY)
    return hub if isinstance(hub, Wakeup) else None


def announce(session: Session, channel: str) -> None:
    """Wake `channel`'s waiters once the caller's transaction commits.

    Once per channel and transaction: a scheduler pass that queues fifty
    builds sends one notification. A channel in LOCAL_CONSUMER_ENOUGH that
    this process consumes is signalled here only.
    """
    announced: set[str] = session.info.setdefault(_ANNOUNCED_KEY, set())
    if channel in announced:
        return
    announced.add(channel)
    hub = session.info.get(_HUB_KEY)
    here = (channel in LOCAL_CONSUMER_ENOUGH and isinstance(hub, Wakeup)
            and hub.consumes(channel))
    if not here and session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_notify(channel, "")))


def _after_commit(session: Session) -> None:
    channels = session.info.pop(_ANNOUNCED_KEY, set())
    hub = session.info.get(_HUB_KEY)
    if channels and isinstance(hub, Wakeup):
        hub.signal(*channels)


def _after_rollback(session: Session) -> None:
    # A real rollback (not a savepoint's): PostgreSQL dropped the notifications too.
    session.info.pop(_ANNOUNCED_KEY, None)


# On the Session class, once: listening on each announcing session cost every
# build's two transactions ~0.1 ms each (SQLAlchemy builds a per-instance
# dispatcher); a session that announced nothing pops an absent key.
event.listen(Session, "after_commit", _after_commit)
event.listen(Session, "after_rollback", _after_rollback)


class PgListener:
    """LISTENs on PostgreSQL channels over a connection of its own and signals a hub.

    The connection is autocommit (a LISTEN inside an open transaction would
    hear nothing until it ended) and is not taken from the engine's pool.
    When it drops, every channel is signalled (notifications sent meanwhile
    are lost) and it reconnects; the waiters' poll covers the gap.
    """

    def __init__(self, engine: Engine, hub: Wakeup, channels: tuple[str, ...],
                 reconnect_seconds: float = 2.0) -> None:
        self.engine = engine
        self.hub = hub
        self.channels = channels
        self.reconnect_seconds = reconnect_seconds
        self.listening = threading.Event()  # set while LISTEN is in effect (tests wait on it)
        self._conn: Any = None

    def _connect(self) -> Any:
        import psycopg
        from psycopg import sql

        # The dialect turns the engine's URL (password included) into psycopg's arguments.
        cargs, cparams = self.engine.dialect.create_connect_args(self.engine.url)
        conn = psycopg.connect(*cargs, **cparams, autocommit=True)
        for channel in self.channels:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        return conn

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self._conn = self._connect()
                self.listening.set()
                # Whatever was committed before LISTEN took effect has not been heard.
                self.hub.signal(*self.channels)
                while not stop.is_set():
                    # A short timeout so `stop` is seen; notifications end it early.
                    for note in self._conn.notifies(timeout=0.5):
                        self.hub.signal(note.channel)
            except Exception as exc:
                if stop.is_set():
                    break
                logger.warning("wakeup: LISTEN connection lost (%s); reconnecting in %.0f s",
                               str(exc).splitlines()[0][:200] if str(exc) else
                               type(exc).__name__, self.reconnect_seconds)
                self.listening.clear()
                self.hub.signal_all()
                stop.wait(self.reconnect_seconds)
            finally:
                self._close()
        self.listening.clear()

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                logger.debug("wakeup: closing the LISTEN connection failed", exc_info=True)

    def backend_pid(self) -> int | None:
        """The server process of the LISTEN connection (for pg_terminate_backend in tests)."""
        conn = self._conn
        return None if conn is None else int(conn.info.backend_pid)

    def start(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(stop,), name="wakeup-listen",
                                  daemon=True)
        thread.start()
        return thread


def start_wakeups(engine: Engine, sessions: sessionmaker[Session], stop: threading.Event,
                  channels: tuple[str, ...] = ALL_CHANNELS) -> Wakeup:
    """A process's hub: installed in its sessions, closed with `stop`, and on
    PostgreSQL fed by a LISTEN connection so other processes' commits wake it too."""
    hub = Wakeup()
    for channel in channels:
        hub.register(channel)  # so signal_all reaches its waiters
    install(sessions, hub)
    hub.close_when(stop)
    if engine.dialect.name == "postgresql":
        PgListener(engine, hub, channels).start(stop)
    return hub
