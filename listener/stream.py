"""Gerrit's event stream → the `events` table, durably and without losing events.

Kept thin on purpose (research/model-codebases.md): read a line, parse it
once, drop duplicates, store it; deciding what to build is the scheduler's
job. A reader thread follows `gerrit stream-events` (reconnecting with
backoff 1 s → 60 s; the client's keepalive and silence watchdog end a dead
stream) and hands lines through a bounded queue to the writer, which
commits in batches (by size, after a short deadline, and whenever the stream
goes quiet): one transaction per batch, never one per event
(research/listener-throughput.md).

Gerrit replays nothing after a reconnect and drops events when a client is
slow (`dropped-output`), so after every (re)connect and every dropped-output
the writer *catches up*: it queries the open changes of the watched
projects updated since the last event and stores a synthetic
`patchset-created` (marked `"source": "catch-up"`) for each current
patchset it has never seen.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import orjson
from sqlalchemy import insert, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ci.config import Config
from ci.db import ensure_schema, make_engine, make_sessionmaker, transaction
from ci.gerrit import GerritClient, GerritError
from ci.models import Change, Event, ListenerState, Patchset, utcnow
from listener.events import (
    CATCH_UP_SOURCE,
    DedupKey,
    DroppedOutput,
    Parsed,
    ParseError,
    PatchsetCreated,
    dedup_key,
    parse_event,
)
from listener.filters import watched_projects
from listener.scheduler import Scheduler

logger = logging.getLogger(__name__)

LAST_EVENT_TS = "last_event_ts"
# Catch up a little before the last event: clocks and event order are not exact.
CATCH_UP_SLACK = 300


class StreamClient(Protocol):
    """What the listener needs of ci.gerrit.GerritClient (one per connection)."""

    def stream_events(self, stop: threading.Event, *,
                      poll_timeout: float = ...) -> Iterator[bytes | None]: ...

    def query(self, q: str, /, *, current_patch_set: bool = ...) -> list[dict[str, Any]]: ...

    def close(self) -> None: ...


class EventStore:
    """Buffers raw lines and writes them to `events` one transaction per batch."""

    def __init__(self, sessions: sessionmaker[Session], *, batch_size: int = 200,
                 max_delay: float = 0.2, remember: int = 10000,
                 on_flush: Callable[[int], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sessions = sessions
        self.batch_size = batch_size
        self.max_delay = max_delay
        self.remember = remember
        self.on_flush = on_flush
        self.clock = clock
        self._rows: list[dict[str, Any]] = []
        self._first_at = 0.0
        self._retry_at = 0.0
        self._newest_ts: int | None = None
        self._seen: OrderedDict[DedupKey, None] = OrderedDict()
        self._patchsets: OrderedDict[tuple[int, int], None] = OrderedDict()
        self.stored = 0
        self.duplicates = 0

    def load(self) -> None:
        """Remember recent events (for de-duplication and catch-up) after a restart."""
        with transaction(self.sessions) as session:
            raws = session.scalars(select(Event.raw).order_by(Event.id.desc())
                                   .limit(self.remember)).all()
        for raw in reversed(raws):
            event = parse_event(raw)
            if not isinstance(event, ParseError):
                self._note(event)

    def last_event_ts(self) -> int | None:
        """Gerrit's time of the newest stored event (ListenerState), if any."""
        with transaction(self.sessions) as session:
            state = session.get(ListenerState, LAST_EVENT_TS)
            return int(state.value) if state is not None else None

    def add(self, line: bytes | str) -> Parsed | None:
        """Buffer one raw line; returns its parse, or None for a duplicate."""
        event = parse_event(line)
        if not isinstance(event, ParseError):
            key = dedup_key(event)
            if key is not None and key in self._seen:
                self.duplicates += 1
                logger.debug("duplicate %s event dropped", event.type)
                return None
            self._note(event)
            if event.source != CATCH_UP_SOURCE:
                ts = event.created_on or int(time.time())
                self._newest_ts = max(ts, self._newest_ts or 0)
        text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
        if not self._rows:
            self._first_at = self.clock()
        self._rows.append({"type": event.type[:64], "raw": text, "received_at": utcnow()})
        if len(self._rows) >= self.batch_size:
            self.flush()
        return event

    def seen_patchset(self, change: int, patchset: int) -> bool:
        """A patchset-created for it was stored (or is buffered) recently."""
        return (change, patchset) in self._patchsets

    def _note(self, event: Any) -> None:
        key = dedup_key(event)
        if key is not None:
            self._seen[key] = None
            if len(self._seen) > self.remember:
                self._seen.popitem(last=False)
        if isinstance(event, PatchsetCreated) and event.change is not None:
            self._patchsets[(event.change.number, event.change.patchset)] = None
            if len(self._patchsets) > self.remember:
                self._patchsets.popitem(last=False)

    @property
    def pending(self) -> int:
        """Lines buffered, not yet committed."""
        return len(self._rows)

    def due(self) -> bool:
        """The oldest buffered line has waited `max_delay`."""
        now = self.clock()
        return bool(self._rows) and now >= self._retry_at and (
            now - self._first_at >= self.max_delay)

    def seconds_to_deadline(self) -> float | None:
        """How long the buffer may still wait before it must be flushed (None: empty)."""
        if not self._rows:
            return None
        return max(0.0, self._first_at + self.max_delay - self.clock())

    def flush(self) -> int:
        """Commit every buffered line (and the newest event time) in one transaction.

        On a database error the lines stay buffered and the next flush retries.
        """
        if not self._rows:
            return 0
        rows, newest = self._rows, self._newest_ts
        try:
            with transaction(self.sessions) as session:
                session.execute(insert(Event), rows)
                if newest is not None:
                    state = session.get(ListenerState, LAST_EVENT_TS)
                    if state is None:
                        session.add(ListenerState(key=LAST_EVENT_TS, value=str(newest)))
                    elif int(state.value) < newest:
                        state.value = str(newest)
        except SQLAlchemyError:
            self._retry_at = self.clock() + 1.0
            logger.exception("storing %s events failed; will retry", len(rows))
            return 0
        self._rows = []
        self.stored += len(rows)
        logger.debug("stored %s events", len(rows))
        if self.on_flush is not None:
            self.on_flush(len(rows))
        return len(rows)


# Markers passed from the reader to the writer besides raw lines (bytes).
_CATCH_UP = object()
_QUIET = object()
_ENDED = object()


class Listener:
    """Follows Gerrit's event stream into the database until stopped.

    `client_factory` makes one client per connection (and per catch-up);
    `on_flush` (ignored if a `store` is given) is told after every commit.
    """

    def __init__(self, config: Config, sessions: sessionmaker[Session],
                 client_factory: Callable[[], StreamClient], *,
                 store: EventStore | None = None, backoff: float = 1.0,
                 max_backoff: float = 60.0, poll_timeout: float = 0.2,
                 queue_size: int = 20000, on_flush: Callable[[int], None] | None = None) -> None:
        self.config = config
        self.sessions = sessions
        self.client_factory = client_factory
        self.store = store or EventStore(sessions, on_flush=on_flush)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.poll_timeout = poll_timeout
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self.connections = 0
        self.catch_ups = 0

    def run(self, stop: threading.Event) -> None:
        """Read and store events until `stop` is set; returns within about a second."""
        self.store.load()
        # The reader stops on `halt`, which the writer sets once `stop` is set (or it
        # failed), then drains the queue so nothing read is left unstored.
        halt = threading.Event()
        reader = threading.Thread(target=self._read, args=(halt,), name="gerrit-stream",
                                  daemon=True)
        reader.start()
        try:
            self._write(stop, halt)
        finally:
            halt.set()
            self._drain(reader)
            self.store.flush()

    def _drain(self, reader: threading.Thread, limit: float = 5.0) -> None:
        """Store what the reader still hands over until it ends (or `limit` passes:
        a reader stuck connecting to a dead host must not delay shutdown)."""
        deadline = time.monotonic() + limit
        while (left := deadline - time.monotonic()) > 0:
            try:
                item = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if item is _ENDED:
                reader.join()
                return
            if isinstance(item, bytes):
                self.store.add(item)
        logger.warning("event stream reader did not stop within %s s; leaving it", limit)

    # -- the reader thread -------------------------------------------------------------------

    def _put(self, item: object, halt: threading.Event) -> None:
        while not halt.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _read(self, halt: threading.Event) -> None:
        delay = self.backoff
        try:
            while not halt.is_set():
                client = self.client_factory()
                connected = False
                try:
                    for line in client.stream_events(halt, poll_timeout=self.poll_timeout):
                        if not connected:
                            # The stream is open: what was missed before now can be queried.
                            connected, delay = True, self.backoff
                            self.connections += 1
                            logger.info("event stream connected (connection %s)",
                                        self.connections)
                            self._put(_CATCH_UP, halt)
                        self._put(_QUIET if line is None else line, halt)
                except GerritError as exc:
                    logger.warning("event stream: %s; reconnecting in %s s", exc, delay)
                except Exception:
                    # Whatever broke, the listener must come back rather than die.
                    logger.exception("event stream failed; reconnecting in %s s", delay)
                finally:
                    client.close()
                if halt.wait(delay):
                    break
                delay = min(delay * 2, self.max_backoff)
        finally:
            self._queue.put(_ENDED)

    # -- the writer (the caller's thread) -----------------------------------------------------

    def _write(self, stop: threading.Event, halt: threading.Event) -> None:
        store = self.store
        catch_up_at: float | None = None
        while not stop.is_set():
            wait = store.seconds_to_deadline()
            try:
                item = self._queue.get(timeout=0.2 if wait is None else min(wait, 0.2))
            except queue.Empty:
                item = _QUIET if store.pending else None
            if item is _ENDED:  # the reader cannot end before halt; put it back for run()
                self._queue.put(item)
                return
            if isinstance(item, bytes):
                event = store.add(item)
                if isinstance(event, DroppedOutput):
                    logger.warning("Gerrit dropped events (dropped-output); catching up")
                    catch_up_at = time.monotonic()
            elif item is _QUIET:
                store.flush()
            elif item is _CATCH_UP:
                catch_up_at = time.monotonic()
            if store.due():
                store.flush()
            if catch_up_at is not None and time.monotonic() >= catch_up_at:
                store.flush()
                catch_up_at = None if self.catch_up() else time.monotonic() + 5.0
        halt.set()

    def catch_up(self) -> bool:
        """Store what the stream missed since the last event; False if Gerrit failed."""
        since = self.store.last_event_ts()
        if since is None:
            logger.info("no previous event recorded: nothing to catch up")
            return True
        age = max(1, int(time.time()) - since + CATCH_UP_SLACK)
        projects = sorted({p.name for p in self.config.projects})
        client = self.client_factory()
        rows: list[dict[str, Any]] = []
        try:
            for name in projects:
                rows += client.query(f"status:open project:{name} -age:{age}s",
                                     current_patch_set=True)
        except GerritError as exc:
            logger.warning("catch-up query failed: %s; retrying in 5 s", exc)
            return False
        finally:
            client.close()
        try:
            added = self._store_missed(rows)
        except SQLAlchemyError:
            logger.exception("catch-up could not read the database; retrying in 5 s")
            return False
        self.catch_ups += 1
        logger.info("catch-up since %s: %s open change(s), %s missed patchset(s)", since,
                    len(rows), added)
        return True

    def _store_missed(self, rows: list[dict[str, Any]]) -> int:
        candidates = []
        for row in rows:
            current = row.get("currentPatchSet")
            event = _synthetic_patchset_created(row, current) if current else None
            parsed = parse_event(event) if event else None
            if not isinstance(parsed, PatchsetCreated) or parsed.change is None:
                continue
            info = parsed.change
            if watched_projects(self.config, info.project, info.branch) and \
                    not self.store.seen_patchset(info.number, info.patchset):
                candidates.append((info.number, info.patchset, event))
        if not candidates:
            return 0
        with transaction(self.sessions) as session:
            known = {(number, ps) for number, ps in session.execute(
                select(Change.number, Patchset.number).join(Change)
                .where(Change.number.in_({c[0] for c in candidates})))}
        added = 0
        for number, ps, event in candidates:
            if (number, ps) not in known and self.store.add(event) is not None:
                logger.info("catch-up: %s,%s was missed", number, ps)
                added += 1
        self.store.flush()
        return added


def _synthetic_patchset_created(row: dict[str, Any], current: dict[str, Any]) -> bytes:
    """The patchset-created Gerrit would have sent, built from a query row."""
    change = {k: v for k, v in row.items()
              if k not in ("currentPatchSet", "patchSets", "comments", "type")}
    patchset = {k: v for k, v in current.items() if k not in ("approvals", "files")}
    return orjson.dumps({
        "type": "patchset-created",
        "source": CATCH_UP_SOURCE,
        "change": change,
        "patchSet": patchset,
        "uploader": current.get("uploader", {}),
        "project": row.get("project"),
        "refName": f"refs/heads/{row.get('branch', '')}",
        "eventCreatedOn": current.get("createdOn") or int(time.time()),
    })


def run_listener(config: Config, stop: threading.Event) -> None:
    """`hyperv-ci listen`: the stream listener plus the scheduler, until `stop` is set."""
    engine = make_engine(config.database.sqlalchemy_url())
    ensure_schema(engine)
    sessions = make_sessionmaker(engine)
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
        engine.dispose()
