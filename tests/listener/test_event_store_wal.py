"""listener.wal: the listener's SQLite writer commits without checkpoints; a
thread of its own checkpoints the WAL (and keeps it from growing for ever)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from ci.config import Config
from listener.event_store import EventStore
from listener.stream import Listener
from listener.wal import (
    PASSIVE,
    RESTART,
    TRUNCATE,
    Checkpointed,
    CheckpointState,
    WalWriter,
    next_mode,
)
from tests.listener.test_stream import wait_for

NOW = int(time.time())
PAD = "Zoë Ñúñez 李 — 👍 " * 150  # ~3.5 KB of non-ASCII a line


def _lines(start: int, count: int) -> list[bytes]:
    return [orjson.dumps({"type": "comment-added", "comment": PAD, "eventCreatedOn": NOW,
                          "change": {"number": n, "project": "openstack/nova"},
                          "patchSet": {"number": 1}, "author": {"username": f"u{n}"}})
            for n in range(start, start + count)]


def _engine(sessions: sessionmaker[Session]) -> Engine:
    bind = sessions.kw["bind"]
    assert isinstance(bind, Engine)
    return bind


def _wal_frames(sessions: sessionmaker[Session]) -> int:
    """The WAL's frames since it last started over, from a connection of the test's
    own (the PASSIVE checkpoint that tells copies them too)."""
    path = _engine(sessions).url.database
    assert path
    with sqlite3.connect(path) as conn:
        _busy, log, _done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return int(log)


def _write(store: EventStore, batches: int, size: int = 50) -> None:
    for _ in range(batches):
        store.add_all(_lines(store.stored + store.duplicates, size))
        assert store.flush() == size


def test_the_writers_connection_never_checkpoints(
        sqlite_sessions: sessionmaker[Session]) -> None:
    # 80 commits of ~45 pages: ~3,600 pages, past SQLite's 1,000-page automatic checkpoint.
    store = EventStore(sqlite_sessions)
    store.wal = WalWriter(_engine(sqlite_sessions))  # its thread not started: no checkpoint
    _write(store, 80)
    assert _wal_frames(sqlite_sessions) > 3000  # every commit since the start is still in it
    store.close()


def test_without_it_the_engines_commits_checkpoint(
        sqlite_sessions: sessionmaker[Session]) -> None:
    # What the test above tells apart: the engine's connections checkpoint in a commit.
    store = EventStore(sqlite_sessions)
    _write(store, 80)
    assert _wal_frames(sqlite_sessions) < 1100


def test_the_checkpoint_thread_keeps_the_wal_short_while_the_listener_runs(
        config: Config, sqlite_sessions: sessionmaker[Session]) -> None:
    chunks = [_lines(i * 50, 50) for i in range(80)]

    class Client:
        def stream_chunks(self, stop: threading.Event, *,
                          poll_timeout: float = 0.2) -> Iterator[list[bytes] | None]:
            yield from chunks
            while not stop.wait(0.05):
                yield None

        def query(self, _q: str, /, **_kw: Any) -> list[dict[str, Any]]:
            return []

        def close(self) -> None:
            pass

    store = EventStore(sqlite_sessions, batch_size=50)
    wal = store.wal = WalWriter(_engine(sqlite_sessions), frames=200)
    listener = Listener(config, sqlite_sessions, Client, store=store)
    stop = threading.Event()
    thread = threading.Thread(target=listener.run, args=(stop,))
    thread.start()
    try:
        wait_for(lambda: store.stored == 4000)
        assert wal._conn is not None
        assert wal._conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
        wait_for(lambda: wal.state.last is not None and wal.state.last.done > 0)
        assert wal.checkpoints[PASSIVE] > 0
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert store.wal is None  # closed with the listener, after a last checkpoint
    # ~3,600 pages were written; the WAL started over, so the file holds fewer.
    wal_file = Path(f"{_engine(sqlite_sessions).url.database}-wal")
    assert not wal_file.exists() or wal_file.stat().st_size < 3000 * wal.page_size


def test_a_reader_holding_the_wal_calls_for_a_restart(
        sqlite_sessions: sessionmaker[Session]) -> None:
    store = EventStore(sqlite_sessions)
    wal = store.wal = WalWriter(_engine(sqlite_sessions), restart_frames=500, busy_ms=1)
    _write(store, 2)
    path = _engine(sqlite_sessions).url.database
    assert path
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM events").fetchone()  # its snapshot: 100 rows
    _write(store, 20)
    first = wal.checkpoint()
    assert first is not None and first.mode == PASSIVE and not first.complete
    # The reader keeps the frames after its snapshot from the database file: RESTART next.
    blocked = wal.checkpoint()
    assert blocked is not None and blocked.mode == RESTART and not blocked.complete
    reader.execute("COMMIT")
    reader.close()
    done = wal.checkpoint()
    assert done is not None and done.mode == RESTART and done.complete
    _write(store, 1)
    assert _wal_frames(sqlite_sessions) < 100  # the WAL started over
    store.close()


def _state(log: int, done: int, *, written: int = 0, busy: bool = False,
           long: bool = False) -> CheckpointState:
    return CheckpointState(written, Checkpointed(PASSIVE, busy, log, done), long)


def test_next_mode() -> None:
    assert next_mode(CheckpointState(), restart_frames=100) == PASSIVE
    assert next_mode(_state(50, 50, written=10), restart_frames=100) == PASSIVE
    assert next_mode(_state(50, 20), restart_frames=100) == PASSIVE  # left some: again
    assert next_mode(_state(100, 20, written=10), restart_frames=100) == RESTART
    assert next_mode(_state(150, 150, long=True), restart_frames=100) == RESTART
    # Quiet: nothing to do, but a WAL that grew long is truncated once.
    assert next_mode(_state(50, 50), restart_frames=100) is None
    assert next_mode(_state(50, 50, long=True), restart_frames=100) == TRUNCATE
    assert next_mode(_state(50, 50, busy=True), restart_frames=100) == PASSIVE
