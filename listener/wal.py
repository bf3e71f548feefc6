"""The listener's SQLite writer without WAL checkpoints on its commit path.

SQLite checkpoints a WAL database inside the commit that leaves the WAL
`wal_autocheckpoint` pages long (1000 by default): that commit copies the
WAL's pages into the database file and syncs it while the writer holds the
write lock, and intake stalls behind it (a third of SQLite's own cost for the
listener's rows). https://www.sqlite.org/wal.html, "Checkpointing" and
"Application-Initiated Checkpoints": an application may turn the automatic
checkpoint off and run checkpoints in a separate thread or process, so the
thread doing the updates never blocks on that sync. So the listener's writer
commits on a connection of its own with `PRAGMA wal_autocheckpoint=0`, and a
thread with another connection checkpoints: PASSIVE, after every `frames`
pages the writer wrote or every `interval` seconds.

The same page, "Avoiding Excessively Large WAL Files": a checkpoint cannot
copy frames past the oldest reader's snapshot (the scheduler and the
dashboard read concurrently), and the WAL starts over from its beginning
only when a checkpoint has copied all of it and no reader still uses it;
under a writer that never pauses, a PASSIVE checkpoint never catches up. So
when one leaves the WAL `restart_frames` long, the next is RESTART (it waits
for readers and takes the write lock, with a short busy timeout so the
writer waits for it briefly at most), and once the stream is quiet after a
long WAL, one TRUNCATE gives its disk space back. Durability is unchanged: a
commit is in the WAL (synchronous=NORMAL: durable against a process crash)
whether or not a checkpoint copied it since.

Only for a SQLite file in WAL mode; anything else keeps the engine's own
connections and behaviour.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

logger = logging.getLogger(__name__)

PASSIVE, RESTART, TRUNCATE = "PASSIVE", "RESTART", "TRUNCATE"
# A PASSIVE checkpoint per this many pages written: SQLite's own default.
FRAMES = 1000
# A WAL this long after a checkpoint calls for a RESTART (64 MB of 4 KB pages).
RESTART_FRAMES = 16000
INTERVAL = 1.0
# How long a RESTART/TRUNCATE waits for readers and the write lock (ms): the
# writer may wait this long behind one, never the 30 s the engine allows.
CHECKPOINT_BUSY_MS = 50


@dataclass(frozen=True, slots=True)
class Checkpointed:
    """What `PRAGMA wal_checkpoint(mode)` answered: busy, the WAL's frames and
    how many of them are in the database file now."""

    mode: str
    busy: bool
    log: int
    done: int

    @property
    def complete(self) -> bool:
        return not self.busy and self.done >= self.log


@dataclass(slots=True)
class CheckpointState:
    """What the checkpoint thread knows when it decides (see `next_mode`)."""

    pages_written: int = 0  # pages the writer wrote since the last checkpoint
    last: Checkpointed | None = None
    long_since_truncate: bool = False  # the WAL was `restart_frames` long since


def next_mode(state: CheckpointState, *, restart_frames: int) -> str | None:
    """The checkpoint to run now, or None: nothing was written and nothing is left."""
    last = state.last
    if last is not None and last.log >= restart_frames:
        return RESTART
    if state.pages_written or last is None or not last.complete:
        return PASSIVE
    return TRUNCATE if state.long_since_truncate else None


def is_wal_file(engine: Engine) -> bool:
    """A SQLite database in a file, in WAL mode (an in-memory one has no WAL)."""
    if engine.dialect.name != "sqlite" or engine.url.database in (None, "", ":memory:"):
        return False
    # The driver's connection: an engine's would begin (BEGIN IMMEDIATE) first.
    raw = engine.raw_connection()
    try:
        mode = raw.driver_connection.execute(  # type: ignore[union-attr]
            "PRAGMA journal_mode").fetchone()[0]
    finally:
        raw.close()
    return str(mode).lower() == "wal"


class WalWriter:
    """The writer's own connection (no automatic checkpoints) and the thread that
    checkpoints for it. `start` before writing, `close` when done."""

    def __init__(self, engine: Engine, *, frames: int = FRAMES,
                 restart_frames: int = RESTART_FRAMES, interval: float = INTERVAL,
                 busy_ms: int = CHECKPOINT_BUSY_MS) -> None:
        self.engine = engine
        self.frames = frames
        self.restart_frames = restart_frames
        self.interval = interval
        self.busy_ms = busy_ms
        self.page_size = 4096
        self.state = CheckpointState()
        self.checkpoints: dict[str, int] = {PASSIVE: 0, RESTART: 0, TRUNCATE: 0}
        self._conn: Connection | None = None
        self._configured: Any = None  # the DBAPI connection set to autocheckpoint=0
        self._checkpointer: Any = None  # the checkpoint thread's pooled DBAPI connection
        self._lock = threading.Lock()  # around `state`
        # The writer's turn: held around each of its transactions, and by a
        # RESTART/TRUNCATE, which a writer committing back to back would
        # otherwise keep from the write lock for the whole burst.
        self._turn = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="wal-checkpoint",
                                            daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the thread after a last checkpoint; the connections go back."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            self._wake.set()
            thread.join()
        if self._checkpointer is not None:
            # Its busy timeout is ours: it is closed rather than pooled.
            self._checkpointer.invalidate()
            self._checkpointer = None
        conn, self._conn = self._conn, None
        if conn is not None:
            # The pool gets it back as the engine made it (autocheckpoint on).
            conn.invalidate()
            conn.close()
            self._configured = None

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One transaction on the writer's connection (BEGIN IMMEDIATE, as the
        engine begins them): commit on success, roll back on any exception."""
        if self._conn is None:
            self._conn = self.engine.connect()
        conn = self._conn
        with self._turn, conn.begin():
            raw = conn.connection.dbapi_connection  # a new one after a reconnect
            if raw is not self._configured:
                # A connection setting, in force at once (not transactional).
                conn.exec_driver_sql("PRAGMA wal_autocheckpoint=0")
                self.page_size = int(conn.exec_driver_sql("PRAGMA page_size").scalar_one())
                self._configured = raw
            yield conn

    def wrote(self, nbytes: int) -> None:
        """The writer committed about `nbytes`: wake the thread every `frames` pages."""
        with self._lock:
            self.state.pages_written += max(1, nbytes // self.page_size)
            due = self.state.pages_written >= self.frames
        if due:
            self._wake.set()

    def _run(self) -> None:
        while True:
            stopping = self._stop.is_set()
            self.checkpoint()
            if stopping:
                return
            self._wake.wait(self.interval)
            self._wake.clear()

    def checkpoint(self) -> Checkpointed | None:
        """Run the checkpoint `next_mode` calls for, if any (the thread's step)."""
        with self._lock:
            mode = next_mode(self.state, restart_frames=self.restart_frames)
            written, self.state.pages_written = self.state.pages_written, 0
        if mode is None:
            return None
        try:
            if mode == PASSIVE:
                done = self._pragma(mode)  # beside the writer's commits
            else:
                with self._turn:  # between two of them
                    done = self._pragma(mode)
        except (SQLAlchemyError, self.engine.dialect.loaded_dbapi.Error):
            logger.exception("WAL checkpoint (%s) failed; retrying", mode)
            with self._lock:
                self.state.pages_written += written
            if self._checkpointer is not None:
                self._checkpointer.invalidate()
                self._checkpointer = None
            return None
        self.checkpoints[mode] += 1
        with self._lock:
            state = self.state
            state.last = done
            if done.log >= self.restart_frames:
                state.long_since_truncate = True
            elif mode == TRUNCATE and done.complete:
                state.long_since_truncate = False
        if done.log >= self.restart_frames and mode != PASSIVE and not done.complete:
            logger.warning("WAL checkpoint (%s) left %s frames: readers held it", mode,
                           done.log)
        return done

    def _pragma(self, mode: str) -> Checkpointed:
        if self._checkpointer is None:
            self._checkpointer = self.engine.raw_connection()
            self._checkpointer.driver_connection.execute(f"PRAGMA busy_timeout={self.busy_ms:d}")
        cursor = self._checkpointer.driver_connection.cursor()
        try:
            # `mode` is one of the three constants above, never outside text.
            busy, log, done = cursor.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        finally:
            cursor.close()
        return Checkpointed(mode, bool(busy), int(log), int(done))
