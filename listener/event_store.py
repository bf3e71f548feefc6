"""The `events` table's writer: raw lines stored in batches, duplicates dropped.

One transaction per batch, never one per event: a commit per event caps intake
far below a Gerrit burst (bench/listener_throughput.py measures it). The
writer hands over whole received chunks (`add_all`) and commits whenever the
reader has nothing more buffered, so a quiet stream's one event is stored at
once and batches grow only under load. Each line is decoded once and only
what de-duplication needs is read of it (`listener.events.Peek`); rows go in
with one SQLAlchemy Core executemany, not the ORM.
It remembers recent events so a line Gerrit sends twice, or one that catch-up
made up and the stream also delivered, is stored once; listener/stream.py
feeds it from the stream and from catch-up.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ci.db import transaction
from ci.models import Event, utcnow
from listener.catchup import same_comment
from listener.events import (
    CATCH_UP_SOURCE,
    ParseError,
    Peek,
    decode,
    peek,
)

if TYPE_CHECKING:
    import psycopg

logger = logging.getLogger(__name__)

# Gerrit and the CI host may disagree a little; beyond this a timestamp is suspect.
PLAUSIBLE_SKEW = 600
# What a line that cannot be stored as it is becomes (the scheduler acknowledges it).
INVALID_TYPE = "invalid"
_MAX_RETRY_DELAY = 30.0
# Executed on the connection (Core): the ORM never sees these rows.
_INSERT_EVENTS = insert(Event)
_CLOSING = frozenset({"change-abandoned", "change-merged", "change-restored"})

StoreKey = tuple[object, ...]


class EventStore:
    """Buffers raw lines and writes them to `events` one transaction per batch.

    `batch_size` caps a transaction (a longer burst is committed in several);
    the caller flushes whenever its input runs dry.
    """

    def __init__(self, sessions: sessionmaker[Session], *, batch_size: int = 1000,
                 remember: int = 10000, on_flush: Callable[[int], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sessions = sessions
        self.batch_size = batch_size
        self.remember = remember
        self.on_flush = on_flush
        self.clock = clock
        self._rows: list[dict[str, Any]] = []
        self._retry_at = 0.0
        self._retry_delay = 0.0
        self.implausible = 0  # events whose Gerrit timestamp was far from our clock
        self._skew_logged_at = 0.0
        self._seen: OrderedDict[StoreKey, None] = OrderedDict()
        self._patchsets: OrderedDict[tuple[int, int], None] = OrderedDict()
        # (change, author, text) -> [(timestamp, made up by catch-up)] of comment-added.
        self._comments: OrderedDict[tuple[int, str, str], list[tuple[int, bool]]] = \
            OrderedDict()
        # change -> its newest abandoned/merged/restored event type (None: none seen).
        self._changes: OrderedDict[int, str | None] = OrderedDict()
        # When the newest committed line was received (None: not known yet).
        self._last_received: datetime | None = None
        self.stored = 0
        self.duplicates = 0
        self.flushes = 0

    def load(self) -> None:
        """Remember recent events (for de-duplication and catch-up) after a restart."""
        with transaction(self.sessions) as session:
            rows = session.execute(select(Event.raw, Event.received_at)
                                   .order_by(Event.id.desc()).limit(self.remember)).all()
        if rows:
            self._last_received = rows[0][1]
        for raw, _received in reversed(rows):
            data = decode(raw)
            if not isinstance(data, ParseError):
                self._note(peek(data))

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
        accepted = self._add(line, utcnow())
        if len(self._rows) >= self.batch_size:
            self.flush()
        return accepted

    def add_all(self, lines: Iterable[bytes | str]) -> list[Peek | ParseError]:
        """Buffer the lines of one received chunk (one receive time); returns the
        ones that were not duplicates. Commits a full batch on the way."""
        received = utcnow()
        accepted = []
        for line in lines:
            item = self._add(line, received)
            if item is not None:
                accepted.append(item)
            if len(self._rows) >= self.batch_size:
                self.flush()
        return accepted

    def _add(self, line: bytes | str, received: datetime) -> Peek | ParseError | None:
        data = decode(line)
        if isinstance(data, ParseError):
            item: Peek | ParseError = data
            kind = INVALID_TYPE
        else:
            item = peek(data)
            key = _store_key(item)
            if (key is not None and key in self._seen) or self._known_comment(item):
                self.duplicates += 1
                logger.debug("duplicate %s event dropped", item.type)
                return None
            self._note(item)
            if item.source != CATCH_UP_SOURCE:
                self._check_clock(item.created_on)
            kind = item.type[:64]
        text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
        if "\x00" in text:
            # PostgreSQL refuses NUL in text, and one bad line must not stop
            # every later one: kept as an invalid line with each NUL written
            # `\x00` (a raw NUL is never valid JSON, and `\x` keeps it so).
            text, kind = text.replace("\x00", "\\x00"), INVALID_TYPE
        self._rows.append({"type": kind, "raw": text, "received_at": received})
        return item

    def _check_clock(self, created_on: int | None) -> None:
        """Log Gerrit timestamps that cannot be right (milliseconds, far from our clock);
        they are never used for the catch-up window, only reported."""
        if created_on is None:
            return
        skew = created_on - time.time()
        if abs(skew) <= PLAUSIBLE_SKEW:
            return
        self.implausible += 1
        now = self.clock()
        if now - self._skew_logged_at >= 600 or self.implausible == 1:
            self._skew_logged_at = now
            logger.warning("event with an implausible eventCreatedOn %s (%+.0f s from this "
                           "host's clock; %s such events so far): not trusted for catch-up",
                           created_on, skew, self.implausible)

    def seen_patchset(self, change: int, patchset: int) -> bool:
        """A patchset-created for it was stored (or is buffered) recently."""
        return (change, patchset) in self._patchsets

    def seen_change(self, change: int) -> bool:
        """Some event of the change was stored (or is buffered) recently."""
        return change in self._changes

    def last_status_event(self, change: int) -> str | None:
        """The type of the change's newest remembered abandoned/merged/restored event."""
        return self._changes.get(change)

    @staticmethod
    def _comment_key(event: Peek) -> tuple[int, str, str] | None:
        if event.number is None:
            return None
        return (event.number, event.author, event.comment.strip())

    def _known_comment(self, event: Peek) -> bool:
        """A made-up comment the stream delivered (or the other way round): the two
        timestamps differ by a second or so, so the exact dedup key misses it."""
        if event.type != "comment-added" or event.created_on is None:
            return False
        key = self._comment_key(event)
        made_up = event.source == CATCH_UP_SOURCE
        return key is not None and any(
            (made_up or was_made_up) and same_comment(ts, event.created_on)
            for ts, was_made_up in self._comments.get(key, ()))

    def _note(self, event: Peek) -> None:
        key = _store_key(event)
        if key is None:
            return  # not a change event: nothing to remember of it
        remember = self.remember
        self._seen[key] = None
        if len(self._seen) > remember:
            _bound(self._seen, remember)
        number = event.number
        assert number is not None  # a store key names the change
        if event.type == "patchset-created" and event.patchset is not None:
            self._patchsets[(number, event.patchset)] = None
            if len(self._patchsets) > remember:
                _bound(self._patchsets, remember)
        if event.type == "comment-added" and event.created_on is not None:
            comment = (number, event.author, event.comment.strip())
            self._comments.setdefault(comment, []).append(
                (event.created_on, event.source == CATCH_UP_SOURCE))
            self._comments.move_to_end(comment)
            if len(self._comments) > remember:
                _bound(self._comments, remember)
        status = event.type if event.type in _CLOSING else None
        self._changes[number] = status or self._changes.get(number)
        self._changes.move_to_end(number)
        if len(self._changes) > remember:
            _bound(self._changes, remember)

    @property
    def pending(self) -> int:
        """Lines buffered, not yet committed."""
        return len(self._rows)

    def seconds_to_retry(self) -> float:
        """How long a failed flush still waits before the next attempt (0: none pending)."""
        return max(0.0, self._retry_at - self.clock()) if self._rows else 0.0

    def flush(self) -> int:
        """Commit every buffered line in one transaction.

        A database that is down or busy keeps the lines buffered, and the next
        flush waits (1 s, doubling to 30 s) before it tries again, whoever
        asks. A batch refused for its data (a value the database will not take)
        is stored line by line instead, the refused lines as invalid ones.
        """
        if not self._rows or self.clock() < self._retry_at:
            return 0
        rows = self._rows
        try:
            self._insert(rows)
        except (OperationalError, InterfaceError):
            self._retry_delay = min(max(1.0, self._retry_delay * 2), _MAX_RETRY_DELAY)
            self._retry_at = self.clock() + self._retry_delay
            logger.exception("storing %s events failed; retrying in %.0f s", len(rows),
                             self._retry_delay)
            return 0
        except (SQLAlchemyError, ValueError):
            # ValueError: the driver could not even encode a value (psycopg
            # raises UnicodeEncodeError for a lone surrogate, unwrapped).
            logger.exception("a batch of %s events was refused; storing them one by one",
                             len(rows))
            if not self._insert_each(rows):
                self._retry_delay = min(max(1.0, self._retry_delay * 2), _MAX_RETRY_DELAY)
                self._retry_at = self.clock() + self._retry_delay
                return 0
        self._rows = []
        self._retry_delay = 0.0
        self._last_received = rows[-1]["received_at"]
        self.flushes += 1
        self.stored += len(rows)
        logger.debug("stored %s events", len(rows))
        if self.on_flush is not None:
            self.on_flush(len(rows))
        return len(rows)

    def _insert(self, rows: list[dict[str, Any]]) -> None:
        with transaction(self.sessions) as session:
            connection = session.connection()
            if connection.dialect.name == "postgresql":
                _copy(connection, rows)
            else:
                # Core, one executemany: the ORM's per-row bookkeeping buys nothing here.
                connection.execute(_INSERT_EVENTS, rows)

    def _insert_each(self, rows: list[dict[str, Any]]) -> bool:
        """Store rows one at a time, a refused one as an ASCII-escaped invalid line.

        False when the database itself failed meanwhile (what was stored stays
        stored and leaves the buffer; the rest is retried).
        """
        for index, row in enumerate(rows):
            try:
                try:
                    self._insert([row])
                except (OperationalError, InterfaceError):
                    raise
                except (SQLAlchemyError, ValueError):
                    safe = row["raw"].encode("ascii", "backslashreplace").decode("ascii")
                    logger.error("event line refused by the database; stored as invalid: %.200s",
                                 safe)
                    self._insert([{**row, "type": INVALID_TYPE, "raw": safe}])
            except (OperationalError, InterfaceError):
                logger.exception("storing events failed")
                self._rows = rows[index:]
                self.stored += index
                return False
            except (SQLAlchemyError, ValueError):
                logger.exception("an event line could not be stored even escaped; dropped")
        return True


_COPY_EVENTS = "COPY events (type, raw, received_at) FROM STDIN"


def _copy(connection: Connection, rows: list[dict[str, Any]]) -> None:
    """The rows through PostgreSQL's COPY, in the session's transaction (about 1.5×
    executemany's rate for these rows: bench/listener_throughput.py). psycopg's
    own errors are raised as SQLAlchemy's, so `flush` tells an outage (retry the
    batch later) from a refused value (store line by line) as for executemany."""
    dbapi = connection.dialect.dbapi
    raw = cast("psycopg.Connection[Any]", connection.connection.dbapi_connection)
    assert dbapi is not None
    try:
        with raw.cursor() as cursor, cursor.copy(_COPY_EVENTS) as copy:
            for row in rows:
                copy.write_row((row["type"], row["raw"], row["received_at"]))
    except dbapi.Error as exc:
        raise DBAPIError.instance(_COPY_EVENTS, None, exc, dbapi.Error) from exc


def _store_key(event: Peek) -> StoreKey | None:
    """`listener.events.dedup_key` of the line, plus a comment's text: one reviewer's
    two comments of one second (catch-up's timestamps are whole seconds: "lgtm"
    then "recheck") are two events."""
    if event.number is None or not event.is_change_event:
        return None
    key = (event.type, event.number, event.patchset, event.created_on, event.actor)
    return (*key, event.comment) if event.type == "comment-added" else key


def _bound(memory: OrderedDict[Any, Any], size: int) -> None:
    """Forget the oldest entries beyond `size`."""
    while len(memory) > size:
        memory.popitem(last=False)
