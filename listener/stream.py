"""Gerrit's event stream → the `events` table, durably and without losing events.

Kept thin on purpose, as Zuul's Gerrit driver keeps its reader: read a line, decode
only what de-duplication needs, drop duplicates, store it; deciding what to
build (and the full typed parse) is the scheduler's job. A reader thread
follows `gerrit stream-events` (reconnecting with backoff 1 s → 60 s; the
client's keepalive and silence watchdog end a dead stream), reads and
de-duplicates each received chunk of lines (`EventStore.read_chunk`: the
parsing overlaps the writer's inserts and commits, which run outside the
interpreter lock) and hands it through a bounded queue to the writer. The writer
takes whatever is queued and commits as soon as the queue is empty: a quiet
stream's one event is committed at once, with no fixed window, and under
load the batches grow by themselves (up to the store's batch size). One
transaction per batch, never one per event (a commit per event caps intake
far below what a burst from Gerrit delivers).

Gerrit replays nothing after a reconnect and drops events when a client is
slow (`dropped-output`), so after every (re)connect and every dropped-output
the writer *catches up*: it queries the watched projects' changes updated
since the last event and stores the events it never saw, made up from the
rows (listener/catchup.py): `patchset-created` for current patchsets,
`comment-added` for review messages (rechecks), `change-abandoned` /
`change-merged` for changes that closed. A database or Gerrit failure during
catch-up is logged and the catch-up retried later; the stream goes on.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ci import stream_status
from ci.config import Config
from ci.db import transaction
from ci.gerrit_errors import GerritError, GerritRefused
from ci.models import Change, Patchset
from listener.catchup import (
    close_is_new,
    synthetic_close,
    synthetic_comments,
    synthetic_patchset_created,
)
from listener.event_store import PLAUSIBLE_SKEW, Chunk, EventStore
from listener.events import (
    ChangeAbandoned,
    ChangeEvent,
    ChangeMerged,
    CommentAdded,
    PatchsetCreated,
    parse_event,
)
from listener.filters import watched_projects

logger = logging.getLogger(__name__)

# Catch up a little before the last event: clocks and event order are not exact.
CATCH_UP_SLACK = 300


class StreamClient(Protocol):
    """What the listener needs of ci.gerrit.GerritClient (one per connection)."""

    def stream_chunks(self, stop: threading.Event, *,
                      poll_timeout: float = ...) -> Iterator[list[bytes] | None]: ...

    def query(self, q: str, /, *, current_patch_set: bool = ..., patch_sets: bool = ...,
              files: bool = ..., comments: bool = ...) -> list[dict[str, Any]]: ...

    def close(self) -> None: ...


# Markers passed from the reader to the writer besides chunks of raw lines.
_CATCH_UP = object()
_ENDED = object()
# The writer's longest wait for input: how soon it notices `stop`.
_IDLE_WAIT = 0.2


class Listener:
    """Follows Gerrit's event stream into the database until stopped.

    `client_factory` makes one client per connection (and per catch-up);
    `on_flush` (ignored if a `store` is given) is told after every commit; a
    catch-up that failed is retried `catch_up_retry` seconds later.
    """

    def __init__(self, config: Config, sessions: sessionmaker[Session],
                 client_factory: Callable[[], StreamClient], *,
                 store: EventStore | None = None, backoff: float = 1.0,
                 max_backoff: float = 60.0, poll_timeout: float = 0.2,
                 queue_size: int = 256, on_flush: Callable[[int], None] | None = None,
                 catch_up_retry: float = 5.0) -> None:
        self.config = config
        self.sessions = sessions
        self.client_factory = client_factory
        self.store = store or EventStore(sessions, on_flush=on_flush)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.poll_timeout = poll_timeout
        self.catch_up_retry = catch_up_retry
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self.connections = 0
        self.catch_ups = 0
        # Clear a refusal a previous run recorded, once connected.
        self._refused = True

    def run(self, stop: threading.Event) -> None:
        """Read and store events until `stop` is set; returns within about a second."""
        while True:
            try:
                self.store.load()
                break
            except SQLAlchemyError:
                # A database that is busy or restarting must not end the listener.
                logger.exception("cannot read the stored events; retrying in %s s",
                                 self.catch_up_retry)
                if stop.wait(self.catch_up_retry):
                    return
        # The reader stops on `halt`, which the writer sets once `stop` is set (or it
        # failed), then drains the queue so nothing read is left unstored.
        halt = threading.Event()
        reader = threading.Thread(target=self._read, args=(halt,), name="gerrit-stream",
                                  daemon=True)
        reader.start()
        self.store.start_checkpoints()
        try:
            self._write(stop, halt)
        finally:
            halt.set()
            self._drain(reader)
            self.store.flush()
            self.store.close()

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
            if isinstance(item, Chunk):
                self.store.take(item)
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
                    for chunk in client.stream_chunks(halt, poll_timeout=self.poll_timeout):
                        if not connected:
                            # The stream is open: what was missed before now can be queried.
                            connected, delay = True, self.backoff
                            self.connections += 1
                            logger.info("event stream connected (connection %s)",
                                        self.connections)
                            self._note_refusal(None)
                            self._put(_CATCH_UP, halt)
                        if chunk is not None:  # None: quiet, nothing to hand over
                            # Read here, so it overlaps the writer's commits.
                            self._put(self.store.read_chunk(chunk), halt)
                except GerritRefused as exc:
                    # Not a network blip: an operator must act (and may be under attack).
                    logger.error("event stream refused: %s; no event is received until "
                                 "this is fixed; retrying in %s s", exc, delay)
                    self._note_refusal(str(exc))
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

    def _note_refusal(self, message: str | None) -> None:
        """Show a refused connection on the status page (None: connected, clear it)."""
        if message is None and not self._refused:
            return
        try:
            with transaction(self.sessions) as session:
                if message is None:
                    stream_status.clear(session)
                else:
                    stream_status.record(session, message)
            self._refused = message is not None
        except SQLAlchemyError:
            logger.exception("cannot record the event stream's state")

    # -- the writer (the caller's thread) -----------------------------------------------------

    def _write(self, stop: threading.Event, halt: threading.Event) -> None:
        store = self.store
        catch_up_at: float | None = None
        while not stop.is_set():
            item = self._next(catch_up_at)
            while item is not None:
                if item is _ENDED:  # the reader cannot end before halt; put it back for run()
                    self._queue.put(item)
                    return
                if isinstance(item, Chunk):
                    store.take(item)
                    if item.dropped_output:
                        logger.warning("Gerrit dropped events (dropped-output); catching up")
                        catch_up_at = time.monotonic()
                elif item is _CATCH_UP:
                    catch_up_at = time.monotonic()
                if stop.is_set() or (catch_up_at is not None
                                     and time.monotonic() >= catch_up_at):
                    break  # a stream that never pauses must not hold these back
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    item = None
            # The reader has handed over everything it had (or something is due):
            # commit it now.
            store.flush()
            if catch_up_at is not None and time.monotonic() >= catch_up_at:
                catch_up_at = (None if self.catch_up()
                               else time.monotonic() + self.catch_up_retry)
        halt.set()

    def _next(self, catch_up_at: float | None) -> object | None:
        """The next item from the reader, or None after waiting as long as nothing
        else is due (a failed flush's retry, a catch-up, a look at `stop`)."""
        wait = _IDLE_WAIT
        if self.store.pending:
            wait = min(wait, self.store.seconds_to_retry())
        if catch_up_at is not None:
            wait = min(wait, max(0.0, catch_up_at - time.monotonic()))
        try:
            return self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
        except queue.Empty:
            return None

    def catch_up(self) -> bool:
        """Store what the stream missed since the last event; False if it must be retried.

        Never raises for a Gerrit or database failure: the writer thread
        carries the stream, so a locked database here must not end it.
        """
        try:
            return self._catch_up()
        except GerritError as exc:
            logger.warning("catch-up query failed: %s; retrying in %s s", exc,
                           self.catch_up_retry)
        except SQLAlchemyError:
            logger.exception("catch-up failed on the database; retrying in %s s",
                             self.catch_up_retry)
        except Exception:
            # As in the reader: whatever broke, the stream must go on being stored.
            logger.exception("catch-up failed; retrying in %s s", self.catch_up_retry)
        return False

    def _catch_up(self) -> bool:
        since = self.store.last_event_ts()
        if since is None:
            logger.info("no previous event recorded: nothing to catch up")
            return True
        age = max(1, int(time.time()) - since + CATCH_UP_SLACK)
        projects = sorted({p.name for p in self.config.projects})
        client = self.client_factory()
        opened: list[dict[str, Any]] = []
        closed: list[dict[str, Any]] = []
        try:
            for name in projects:
                # Comments need every patch set: a recheck may name an older one.
                # The files come along (Gerrit lists them under each patch set),
                # so the scheduler never asks for them change by change.
                opened += client.query(f"status:open project:{name} -age:{age}s",
                                       current_patch_set=True, patch_sets=True, files=True,
                                       comments=True)
                closed += client.query(f"status:closed project:{name} -age:{age}s",
                                       current_patch_set=True)
        finally:
            client.close()
        # `since` is on this host's clock, review messages carry Gerrit's: allow
        # for the skew the store tolerates (a message seen twice is dropped there).
        added = self._store_missed(opened, closed, since - CATCH_UP_SLACK - PLAUSIBLE_SKEW)
        self.catch_ups += 1
        logger.info("catch-up since %s: %s open and %s closed change(s), %s missed event(s)",
                    since, len(opened), len(closed), added)
        return True

    def _watched(self, row: dict[str, Any]) -> bool:
        return bool(watched_projects(self.config, str(row.get("project", "")),
                                     str(row.get("branch", ""))))

    def _store_missed(self, opened: list[dict[str, Any]], closed: list[dict[str, Any]],
                      since: int) -> int:
        """Store the made-up events of the rows that are new; returns how many."""
        lines = []
        for row in filter(self._watched, opened):
            current = row.get("currentPatchSet")
            if isinstance(current, dict):
                lines.append(synthetic_patchset_created(row, current))
            lines += synthetic_comments(row, since)
        lines += [line for row in filter(self._watched, closed)
                  if (line := synthetic_close(row)) is not None]
        events = [(event, line) for line in lines
                  if isinstance(event := parse_event(line), ChangeEvent)
                  and event.number is not None]
        numbers = {e.number for e, _ in events if not isinstance(e, CommentAdded)}
        known: set[tuple[int, int]] = set()
        status: dict[int, str] = {}
        if numbers:
            with transaction(self.sessions) as session:
                known = {(number, ps) for number, ps in session.execute(
                    select(Change.number, Patchset.number).join(Change)
                    .where(Change.number.in_(numbers)))}
                status = {number: state for number, state in session.execute(
                    select(Change.number, Change.status).where(Change.number.in_(numbers)))}
        missed = [(e, line) for e, line in events if self._is_missed(e, known, status)]
        # In Gerrit's order: an upload before the comments on it.
        missed.sort(key=lambda m: (m[0].created_on or 0, _CATCH_UP_ORDER.get(m[0].type, 0)))
        added = 0
        for event, line in missed:
            if self.store.add(line) is not None:
                logger.info("catch-up: %s of %s was missed", event.type, event.number)
                added += 1
        self.store.flush()
        return added

    def _is_missed(self, event: ChangeEvent, known: set[tuple[int, int]],
                   status: dict[int, str]) -> bool:
        """Whether a made-up event is new (`known`: stored patchsets, `status`: changes)."""
        number = event.number or 0  # made-up events always name their change
        if isinstance(event, PatchsetCreated):
            ps = event.change.patchset if event.change else 0
            return not self.store.seen_patchset(number, ps) and (number, ps) not in known
        if isinstance(event, ChangeAbandoned | ChangeMerged):
            return close_is_new(event.type,
                                last_status_event=self.store.last_status_event(number),
                                stored_status=status.get(number),
                                seen=self.store.seen_change(number))
        return True  # a comment: the store drops one it has seen (RecentEvents.admit)


# Within one second: an upload, then comments, then a close.
_CATCH_UP_ORDER = {"patchset-created": 0, "comment-added": 1, "change-abandoned": 2,
                   "change-merged": 2}
