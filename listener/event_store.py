"""The `events` table's writer: raw lines stored in batches, duplicates dropped.

One transaction per batch, never one per event: a commit per event caps intake
far below a Gerrit burst (bench/listener_throughput.py measures it). The
listener's reader thread reads each received chunk (`read_chunk`) and its
writer buffers it (`take`) and commits whenever the reader has nothing more
buffered, so a quiet stream's one event is stored at once and batches grow
only under load. Each line is decoded once and only what de-duplication needs
is read of it (`listener.events.Peek`); the line's own bytes are what is
stored, through the driver (listener/event_insert.py), with no Python object
made per row on the way.
It remembers recent events (listener/event_memory.py) so a line Gerrit sends
twice, or one that catch-up made up and the stream also delivered, is stored
once; listener/stream.py feeds it from the stream and from catch-up.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

import orjson
from sqlalchemy import Engine, select
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ci.db import transaction
from ci.models import Event, utcnow
from listener.event_insert import Received, insert_lines
from listener.event_memory import RecentEvents
from listener.events import (
    CATCH_UP_SOURCE,
    ParseError,
    Peek,
    decode,
    peek,
)
from listener.wal import WalWriter, is_wal_file

logger = logging.getLogger(__name__)

# Gerrit and the CI host may disagree a little; beyond this a timestamp is suspect.
PLAUSIBLE_SKEW = 600
# What a line that cannot be stored as it is becomes (the scheduler acknowledges it).
INVALID_TYPE = "invalid"
_MAX_RETRY_DELAY = 30.0


@dataclass(frozen=True, slots=True)
class Chunk:
    """One received chunk, read: the lines to store, what was read of each, and
    whether Gerrit said it dropped events (the listener then catches up)."""

    lines: Received
    events: list[Peek | ParseError]
    dropped_output: bool


class EventStore:
    """Buffers raw lines and writes them to `events` one transaction per batch.

    `batch_size` caps a transaction (a longer burst is committed in several);
    the caller flushes whenever its input runs dry.
    """

    def __init__(self, sessions: sessionmaker[Session], *, batch_size: int = 4000,
                 remember: int = 10000, on_flush: Callable[[int], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sessions = sessions
        self.batch_size = batch_size
        self.remember = remember
        self.on_flush = on_flush
        self.clock = clock
        # What is buffered, as received; `_count` lines in all.
        self._pending: list[Received] = []
        self._count = 0
        self._retry_at = 0.0
        self._retry_delay = 0.0
        self.implausible = 0  # events whose Gerrit timestamp was far from our clock
        self._skew_logged_at = 0.0
        # The de-duplication memory, read and written by both threads under the lock.
        self._lock = threading.Lock()
        self._memory = RecentEvents(remember)
        # When the newest committed line was received (None: not known yet).
        self._last_received: datetime | None = None
        self.stored = 0
        self.duplicates = 0
        self.flushes = 0
        # On a SQLite file, once started: the writer's own connection (no
        # checkpoints on its commits) and the thread checkpointing for it.
        self.wal: WalWriter | None = None

    def start_checkpoints(self) -> None:
        """On a SQLite file in WAL mode, commit on a connection of the store's own
        that never checkpoints, a thread checkpointing instead (listener/wal.py)."""
        bind = self.sessions.kw.get("bind")
        if self.wal is None and isinstance(bind, Engine) and is_wal_file(bind):
            self.wal = WalWriter(bind)
        if self.wal is not None:
            self.wal.start()

    def close(self) -> None:
        """Stop the checkpoint thread (after a last checkpoint) and let go of the
        writer's connection; a later flush commits as before `start_checkpoints`."""
        wal, self.wal = self.wal, None
        if wal is not None:
            wal.close()

    def load(self) -> None:
        """Remember recent events (for de-duplication and catch-up) after a restart."""
        with transaction(self.sessions) as session:
            rows = session.execute(select(Event.raw, Event.received_at)
                                   .order_by(Event.id.desc()).limit(self.remember)).all()
        if rows:
            self._last_received = rows[0][1]
        with self._lock:
            for raw, _received in reversed(rows):
                data = decode(raw)
                if not isinstance(data, ParseError):
                    self._memory.note(peek(data))

    def last_event_ts(self) -> int | None:
        """When, on this host's clock, the newest stored event was received (None: none).

        Catch-up starts from here. It is the CI's own observation, never
        Gerrit's `eventCreatedOn`: one event with a millisecond or future
        timestamp (a broken plugin, a clock ahead) would otherwise shrink every
        later catch-up window to a second. Kept in memory, set by every
        commit (the rows carry it), read from the table only before the first.
        """
        received = self._last_received
        if received is None:
            with transaction(self.sessions) as session:
                received = session.scalar(
                    select(Event.received_at).order_by(Event.id.desc()).limit(1))
        if received is None:
            return None
        ts, now = int(received.timestamp()), int(time.time())
        if ts > now:
            logger.warning("the newest event was received %s s in the future (this host's "
                           "clock went back?): catching up from now", ts - now)
            return now
        return ts

    def add(self, line: bytes | str) -> Peek | ParseError | None:
        """Buffer one raw line; returns what was read of it, or None for a duplicate."""
        with self._lock:
            accepted = self._add(line, self._batch(utcnow()))
        if accepted is not None:
            self._count += 1
            if self._count >= self.batch_size:
                self.flush()
        return accepted

    def add_all(self, lines: Iterable[bytes | str]) -> list[Peek | ParseError]:
        """Buffer the lines of one received chunk (one receive time); returns the
        ones that were not duplicates. Commits a full batch on the way."""
        chunk = self.read_chunk(lines)
        self.take(chunk)
        return chunk.events

    def read_chunk(self, lines: Iterable[bytes | str]) -> Chunk:
        """Read and de-duplicate one received chunk without buffering it; `take`
        buffers it. Thread-safe: the listener's reader thread reads chunks while
        its writer commits the previous ones (SQLite and the commit run outside
        the interpreter lock, so the two overlap on two cores)."""
        lines_read = Received(utcnow())
        with self._lock:
            events = [item for line in lines
                      if (item := self._add(line, lines_read)) is not None]
        return Chunk(lines_read, events,
                     any(event.type == "dropped-output" for event in events))

    def take(self, chunk: Chunk) -> None:
        """Buffer a chunk `read_chunk` read, committing each full batch on the way."""
        lines, start = chunk.lines, 0
        while start < len(lines):
            room = self.batch_size - self._count
            # No room left only while flushes fail: buffer the rest until one works.
            end = len(lines) if room <= 0 else min(len(lines), start + room)
            part = lines if start == 0 and end == len(lines) else Received(
                lines.at, lines.kinds[start:end], lines.raws[start:end])
            self._pending.append(part)
            self._count += end - start
            start = end
            if self._count >= self.batch_size:
                self.flush()

    def _batch(self, received: datetime) -> Received:
        """Where lines received at `received` are buffered."""
        pending = self._pending
        if pending and pending[-1].at is received:
            return pending[-1]
        batch = Received(received)
        pending.append(batch)
        return batch

    def _add(self, line: bytes | str, batch: Received) -> Peek | ParseError | None:
        # The hot path: one orjson parse, the peek, the de-duplication memory
        # (under `_lock`); the line joins `batch` unless it is a duplicate.
        if isinstance(line, str):
            try:
                raw = line.encode()
            except UnicodeEncodeError as exc:  # a lone surrogate: not JSON, nor storable
                return self._add_invalid(line, str(exc), batch)
        else:
            raw = bytes(line)
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return self._add_invalid(raw.decode("utf-8", "replace"), str(exc), batch)
        if not isinstance(data, dict):
            return self._add_invalid(raw.decode("utf-8", "replace"),
                                     f"not a JSON object but {type(data).__name__}", batch)
        item = peek(data)
        if not self._memory.admit(item):
            self.duplicates += 1
            logger.debug("duplicate %s event dropped", item.type)
            return None
        created_on = item.created_on
        if created_on is not None and abs(created_on - time.time()) > PLAUSIBLE_SKEW \
                and item.source != CATCH_UP_SOURCE:
            self._implausible(created_on)
        # Valid JSON is valid UTF-8 and has no NUL (orjson refuses both): the
        # bytes are stored as they came.
        batch.kinds.append(item.type[:64])
        batch.raws.append(raw)
        return item

    def _add_invalid(self, text: str, error: str, batch: Received) -> ParseError:
        """Buffer a line that is not a JSON object, typed invalid (the scheduler
        acknowledges it): nothing Gerrit sent is silently lost."""
        stored = text
        if "\x00" in stored:
            # PostgreSQL refuses NUL in text, and one bad line must not stop
            # every later one: each NUL is written `\x00` (a raw NUL is never
            # valid JSON, and `\x` keeps it so).
            stored = stored.replace("\x00", "\\x00")
        batch.kinds.append(INVALID_TYPE)
        # A lone surrogate (from a str line) is written as its escape.
        batch.raws.append(stored.encode("utf-8", "backslashreplace"))
        return ParseError(text, error)

    def _implausible(self, created_on: int) -> None:
        """Log Gerrit timestamps that cannot be right (milliseconds, far from our clock);
        they are never used for the catch-up window, only reported."""
        skew = created_on - time.time()
        self.implausible += 1
        now = self.clock()
        if now - self._skew_logged_at >= 600 or self.implausible == 1:
            self._skew_logged_at = now
            logger.warning("event with an implausible eventCreatedOn %s (%+.0f s from this "
                           "host's clock; %s such events so far): not trusted for catch-up",
                           created_on, skew, self.implausible)

    def seen_patchset(self, change: int, patchset: int) -> bool:
        """A patchset-created for it was stored (or is buffered, or read) recently."""
        with self._lock:
            return self._memory.seen_patchset(change, patchset)

    def seen_change(self, change: int) -> bool:
        """Some event of the change was stored (or is buffered, or read) recently."""
        with self._lock:
            return self._memory.seen_change(change)

    def last_status_event(self, change: int) -> str | None:
        """The type of the change's newest remembered abandoned/merged/restored event."""
        with self._lock:
            return self._memory.last_status_event(change)

    @property
    def pending(self) -> int:
        """Lines buffered, not yet committed."""
        return self._count

    def seconds_to_retry(self) -> float:
        """How long a failed flush still waits before the next attempt (0: none pending)."""
        return max(0.0, self._retry_at - self.clock()) if self._count else 0.0

    def flush(self) -> int:
        """Commit every buffered line in one transaction.

        A database that is down or busy keeps the lines buffered, and the next
        flush waits (1 s, doubling to 30 s) before it tries again, whoever
        asks. A batch refused for its data (a value the database will not take)
        is stored line by line instead, the refused lines as invalid ones.
        """
        if not self._count:
            self._pending.clear()  # a chunk of duplicates only leaves an empty batch
            return 0
        if self.clock() < self._retry_at:
            return 0
        batches = [batch for batch in self._pending if batch.raws]
        count = self._count
        try:
            self._insert(batches)
        except (OperationalError, InterfaceError):
            self._retry_delay = min(max(1.0, self._retry_delay * 2), _MAX_RETRY_DELAY)
            self._retry_at = self.clock() + self._retry_delay
            logger.exception("storing %s events failed; retrying in %.0f s", count,
                             self._retry_delay)
            return 0
        except (SQLAlchemyError, ValueError):
            logger.exception("a batch of %s events was refused; storing them one by one",
                             count)
            if not self._insert_each(batches):
                self._retry_delay = min(max(1.0, self._retry_delay * 2), _MAX_RETRY_DELAY)
                self._retry_at = self.clock() + self._retry_delay
                return 0
        self._pending = []
        self._count = 0
        self._retry_delay = 0.0
        self._last_received = batches[-1].at
        self.flushes += 1
        self.stored += count
        logger.debug("stored %s events", count)
        if self.on_flush is not None:
            self.on_flush(count)
        return count

    def _insert(self, batches: list[Received]) -> None:
        wal = self.wal
        if wal is not None:
            with wal.transaction() as conn:
                insert_lines(conn, batches)
            wal.wrote(sum(len(raw) for batch in batches for raw in batch.raws))
            return
        with transaction(self.sessions) as session:
            insert_lines(session.connection(), batches)

    def _insert_each(self, batches: list[Received]) -> bool:
        """Store lines one at a time, a refused one as an ASCII-escaped invalid line.

        False when the database itself failed meanwhile (what was stored stays
        stored and leaves the buffer; the rest is retried).
        """
        rows = [(kind, raw, batch.at) for batch in batches
                for kind, raw in zip(batch.kinds, batch.raws, strict=True)]
        for index, (kind, raw, at) in enumerate(rows):
            try:
                try:
                    self._insert([Received(at, [kind], [raw])])
                except (OperationalError, InterfaceError):
                    raise
                except (SQLAlchemyError, ValueError):
                    safe = raw.decode("utf-8", "backslashreplace").encode("ascii",
                                                                           "backslashreplace")
                    logger.error("event line refused by the database; stored as invalid: %.200s",
                                 safe.decode("ascii"))
                    self._insert([Received(at, [INVALID_TYPE], [safe])])
            except (OperationalError, InterfaceError):
                logger.exception("storing events failed")
                self._pending = [Received(at, [kind], [raw]) for kind, raw, at in rows[index:]]
                self._count = len(rows) - index
                self.stored += index
                return False
            except (SQLAlchemyError, ValueError):
                logger.exception("an event line could not be stored even escaped; dropped")
        return True
