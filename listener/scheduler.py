"""The trigger: stored events → builds, one event at a time, in id order.

The listener only stores raw lines; this decides. Each event is handled in
two steps: first whatever Gerrit must tell us (the changed files, a change
we have never seen) is fetched *outside* any database transaction, so a slow
Gerrit never holds SQLite's write lock (listener/gather.py); then a
transaction creates the builds and marks the event processed (acknowledge =
act), for up to GROUP_SIZE consecutive events at once.

A transient failure (Gerrit unreachable, the database busy or down) leaves
the event unprocessed and retries it with backoff, for a time budget; later
events of the same change wait behind it, so an abandon is never applied
before the upload it follows. A permanent one (Gerrit says the patch set does
not exist, an answer we cannot use, a bug of ours) — or a transient one past
its budget — marks the event failed with the reason (`failed_at`, `outcome`):
it is acknowledged and never holds back any other event. The read window
pages past events that wait, so no number of them can hide newer ones.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import paramiko
from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ci.changes import ChangeInfo
from ci.config import Config
from ci.db import transaction
from ci.errors import HypervCIError, TransientError
from ci.models import Change, Event, utcnow
from ci.queue import abort_change
from ci.queue_batch import QueueRequest, queue_requests
from listener.events import (
    ChangeAbandoned,
    ChangeEvent,
    ChangeMerged,
    ChangeRestored,
    CommentAdded,
    GerritEvent,
    Parsed,
    ParseError,
    PatchsetCreated,
    parse_event,
)
from listener.filters import jobs_for
from listener.gather import Gatherer, GerritLookup, Target

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Ready:
    """An event whose lookups are done, waiting to be acted on with its group."""

    event_id: int
    event: Parsed
    target: Target
    number: int | None


_EVENTS = cast(Table, Event.__table__)

# Events acted on in one transaction at most (see Scheduler._act).
GROUP_SIZE = 500

# What a handler returns: the event's outcome, or the builds it asks for (their
# outcome is known once the group's requests are queued together).
Outcome = str | QueueRequest


@dataclass
class _Retry:
    failures: int
    due: float
    change: int | None
    first: float  # when the event first failed (the retry budget runs from here)


def is_transient(exc: BaseException) -> bool:
    """Whether asking again later may succeed (else retrying cannot help).

    The CI's own exceptions say it by their branch (ci/errors.py); the
    libraries' are named here: the database's and the transport's.
    """
    if isinstance(exc, TransientError):
        return True  # Gerrit unreachable, its link lost
    if isinstance(exc, HypervCIError):
        return False  # no such patch set, a bad config, ...
    if isinstance(exc, OperationalError | InterfaceError):
        return True  # database down, busy or locked
    if isinstance(exc, DBAPIError):
        return bool(exc.connection_invalidated)
    return isinstance(exc, OSError | EOFError | paramiko.SSHException)


class Scheduler:
    """Processes stored events; `run` loops until stopped, `run_once` is one pass."""

    def __init__(self, config: Config, sessions: sessionmaker[Session], lookup: GerritLookup,
                 *, batch: int = 500, backoff: float = 2.0, max_backoff: float = 300.0,
                 retry_budget: float = 86400.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.sessions = sessions
        self.lookup = lookup
        self.batch = batch
        self.backoff = backoff
        self.max_backoff = max_backoff
        # A Gerrit outage can last hours (maintenance); past this an event is failed.
        self.retry_budget = retry_budget
        self.failed = 0  # events given up on by this process
        self.clock = clock
        self._retry: dict[int, _Retry] = {}
        self._wake = threading.Event()
        self.gatherer = Gatherer(config, sessions, lookup)

    # -- the loop ----------------------------------------------------------------------------

    def wake(self) -> None:
        """New events were stored: look now instead of at the next poll."""
        self._wake.set()

    def run(self, stop: threading.Event, poll_interval: float = 1.0) -> None:
        """Process events until `stop` is set (a database outage is waited out)."""
        while not stop.is_set():
            try:
                done = self.run_once()
            except SQLAlchemyError:
                logger.exception("scheduler: database error; retrying in %s s", poll_interval)
                done = 0
            if not done:
                self._wake.wait(poll_interval)
                self._wake.clear()

    def run_once(self) -> int:
        """One pass over the pending events that are due; returns how many were handled.

        Reads in pages after the last id seen (keyset), so events that wait —
        behind a retry, or behind an earlier event of their change — never
        fill the window and hide newer ones. Stops after `batch` handled.
        """
        now = self.clock()
        waiting = {eid for eid, r in self._retry.items() if r.due > now}
        blocked = {r.change for eid, r in self._retry.items()
                   if eid in waiting and r.change is not None}
        done, after = 0, 0
        while done < self.batch:
            query = (select(Event.id, Event.raw)
                     .where(Event.processed_at.is_(None), Event.id > after)
                     .order_by(Event.id).limit(self.batch))
            with transaction(self.sessions) as session:
                rows = session.execute(query).all()
            page = [(event_id, parse_event(raw)) for event_id, raw in rows]
            self.gatherer.prefetch_files([event for eid, event in page if eid not in waiting])
            group: list[_Ready] = []
            for event_id, event in page:
                after = event_id
                number = event.number if isinstance(event, ChangeEvent) else None
                if group and (len(group) >= GROUP_SIZE or (
                        number is not None and self.gatherer.reads_database(event)
                        and any(ready.number == number for ready in group))):
                    # Its lookup must see what the earlier events of its change wrote.
                    done += self._act(group, blocked)
                    group = []
                if event_id in waiting or (number is not None and number in blocked):
                    if number is not None:
                        blocked.add(number)  # its later events wait behind it
                    continue
                try:
                    target = self.gatherer.gather(event)
                except Exception as exc:
                    if self._failure(event_id, event, exc, "Gerrit lookup failed"):
                        done += 1
                    elif number is not None:
                        blocked.add(number)
                    continue
                group.append(_Ready(event_id, event, target, number))
            if group:
                done += self._act(group, blocked)
            if len(rows) < self.batch:
                break
        self.gatherer.prefetched.clear()
        return done

    def _act(self, group: list[_Ready], blocked: set[int]) -> int:
        """Act on gathered events in one transaction (each event still marked
        processed with the builds it made: acknowledge = act); returns how many.

        One transaction for many events spares a commit and two statements an
        event (a catch-up queues a thousand uploads at once). If anything in it
        fails, nothing of it was stored, and each event is retried on its own,
        so one bad event never fails the others.
        """
        if len(group) > 1:
            try:
                outcomes = self._act_together(group)
            except Exception:
                logger.info("a group of %s events failed together; acting on each alone",
                            len(group), exc_info=True)
            else:
                for ready, outcome in zip(group, outcomes, strict=True):
                    self._retry.pop(ready.event_id, None)
                    if outcome is not None:
                        logger.info("event %s (%s): %s", ready.event_id, ready.event.type,
                                    outcome)
                return len(group)
        done = 0
        for ready in group:
            if ready.number is not None and ready.number in blocked:
                continue  # an earlier event of its change failed just now
            if self._act_alone(ready.event_id, ready.event, ready.target):
                done += 1
            elif ready.number is not None:
                blocked.add(ready.number)
        return done

    def _act_together(self, group: list[_Ready]) -> list[str | None]:
        with transaction(self.sessions) as session:
            return self._act_in(session, group)

    def _act_in(self, session: Session, group: list[_Ready]) -> list[str | None]:
        """Run the group's handlers in order and mark each event processed with its
        outcome (None: it already was), in the caller's transaction.

        The uploads' and rechecks' builds are queued together (ci.queue_batch),
        in a few statements whatever their number; an event of a change with
        requests pending sends them first, so it sees what they wrote (an
        abandon after its upload aborts that build). The event rows are
        locked and marked by one Core statement each for the whole group.
        """
        waiting = set(session.scalars(
            select(_EVENTS.c.id)
            .where(_EVENTS.c.id.in_([r.event_id for r in group]),
                   _EVENTS.c.processed_at.is_(None))
            .with_for_update()))
        outcomes: list[str | None] = [None] * len(group)
        pending: list[tuple[int, QueueRequest]] = []

        def send() -> None:
            done = queue_requests(session, [request for _i, request in pending])
            for (index, _request), outcome in zip(pending, done, strict=True):
                outcomes[index] = outcome
            pending.clear()

        for index, ready in enumerate(group):
            if ready.event_id not in waiting:
                continue
            if pending and ready.number is not None and any(
                    request.info.number == ready.number for _i, request in pending):
                send()
            result = self._handler(ready.event)(session, ready.event, ready.target)
            if isinstance(result, QueueRequest):
                pending.append((index, result))
            else:
                outcomes[index] = result
        if pending:
            send()
        marks = [{"b_id": ready.event_id, "outcome": outcome[:500]}
                 for ready, outcome in zip(group, outcomes, strict=True) if outcome is not None]
        if marks:
            session.execute(update(_EVENTS).where(_EVENTS.c.id == bindparam("b_id"))
                            .values(processed_at=utcnow(), outcome=bindparam("outcome")), marks)
        return outcomes

    def process(self, event_id: int, event: Parsed) -> bool:
        """Handle one stored event; False if it stays pending (retried later).

        True when it was acted on, or failed for good (see `_give_up`).
        """
        try:
            target = self.gatherer.gather(event)
        except Exception as exc:
            return self._failure(event_id, event, exc, "Gerrit lookup failed")
        return self._act_alone(event_id, event, target)

    def _act_alone(self, event_id: int, event: Parsed, target: Target) -> bool:
        number = event.number if isinstance(event, ChangeEvent) else None
        ready = _Ready(event_id, event, target, number)
        try:
            with transaction(self.sessions) as session:
                (outcome,) = self._act_in(session, [ready])
        except Exception as exc:
            return self._failure(event_id, event, exc, "storing its outcome failed")
        self._retry.pop(event_id, None)
        if outcome is not None:
            logger.info("event %s (%s): %s", event_id, event.type, outcome)
        return True

    def _failure(self, event_id: int, event: Parsed, exc: Exception, what: str) -> bool:
        """Retry a transient failure within the budget; give up on anything else."""
        reason = f"{what}: {type(exc).__name__}: {exc}"
        previous = self._retry.get(event_id)
        now = self.clock()
        if is_transient(exc) and (previous is None or now - previous.first < self.retry_budget):
            failures = previous.failures + 1 if previous else 1
            delay = min(self.backoff * 2 ** (failures - 1), self.max_backoff)
            number = event.number if isinstance(event, ChangeEvent) else None
            self._retry[event_id] = _Retry(failures, now + delay, number,
                                           previous.first if previous else now)
            logger.warning("event %s: %s; retry in %.0f s", event_id, reason, delay)
            return False
        if not is_transient(exc):
            logger.error("event %s (%s): %s; not retried", event_id, event.type, reason,
                         exc_info=not isinstance(exc, HypervCIError | ValueError))
        else:
            logger.error("event %s (%s): %s; gave up after %.0f s of retries",
                         event_id, event.type, reason, self.retry_budget)
        return self._give_up(event_id, reason)

    def _give_up(self, event_id: int, reason: str) -> bool:
        """Mark the event failed with its reason; False if even that cannot be stored."""
        try:
            with transaction(self.sessions) as session:
                row = session.get(Event, event_id, with_for_update=True)
                if row is not None and row.processed_at is None:
                    row.processed_at = row.failed_at = utcnow()
                    row.outcome = ("failed: " + reason.replace("\x00", ""))[:500]
        except SQLAlchemyError:
            logger.exception("event %s: cannot mark it failed; retrying later", event_id)
            self._retry[event_id] = _Retry(1, self.clock() + self.max_backoff, None,
                                           self.clock())
            return False
        self._retry.pop(event_id, None)
        self.failed += 1
        return True

    def _handler(self, event: Parsed) -> Callable[[Session, Any, Target], Outcome]:
        """Dispatch by type name: `patchset-created` → `on_patchset_created`."""
        if isinstance(event, ParseError):
            return self.on_invalid
        name = "on_" + event.type.replace("-", "_")
        handler = getattr(self, name, None) if name.isidentifier() else None
        return handler if callable(handler) else self.on_other

    # -- step 2: the handlers, each inside the event's transaction -----------------------------

    def on_patchset_created(self, session: Session, event: PatchsetCreated,
                            target: Target) -> Outcome:
        """Queue every job whose project, branch and files match."""
        if target.info is None:
            return target.note
        return self._request(target.info,
                             "catch-up" if event.source == "catch-up" else "patchset-created")

    def on_comment_added(self, session: Session, event: CommentAdded,
                         target: Target) -> Outcome:
        """A recheck queues the matching jobs again."""
        if target.info is None:
            return target.note
        return self._request(target.info, "recheck")

    def on_change_abandoned(self, session: Session, event: ChangeAbandoned,
                            target: Target) -> str:
        """Abandoned: stop its builds."""
        return self._close(session, event, "ABANDONED", "change abandoned")

    def on_change_merged(self, session: Session, event: ChangeMerged, target: Target) -> str:
        """Merged: testing it further is moot; stop its builds."""
        return self._close(session, event, "MERGED", "change merged")

    def on_change_restored(self, session: Session, event: ChangeRestored,
                           target: Target) -> str:
        """Nothing to build (a recheck asks for that); the change is open again."""
        self._set_status(session, event.number, "NEW")
        return "change restored"

    def on_dropped_output(self, session: Session, event: GerritEvent, target: Target) -> str:
        """Recorded for the operator; the listener already ran the catch-up."""
        return "events were dropped by Gerrit; the listener catches up by query"

    def on_other(self, session: Session, event: GerritEvent, target: Target) -> str:
        """Every type without its own handler."""
        return f"ignored: {event.type}"

    def on_invalid(self, session: Session, event: ParseError, target: Target) -> str:
        """A stored line that is not JSON: kept for inspection, acknowledged."""
        return f"ignored: not a JSON object ({event.error})"

    def _request(self, info: ChangeInfo, reason: str) -> QueueRequest:
        """The builds to queue, decided from the event (the filters) and the database
        (ci.queue_batch, together with the rest of the group)."""
        return QueueRequest(info, tuple(jobs_for(self.config, info, info.files)), reason)

    def _close(self, session: Session, event: ChangeEvent, status: str, why: str) -> str:
        if event.number is None:
            return "ignored: the event names no change"
        aborted = abort_change(session, event.number, why)
        self._set_status(session, event.number, status)
        return f"{why}: aborted {len(aborted)} build(s)"

    @staticmethod
    def _set_status(session: Session, number: int | None, status: str) -> None:
        change = session.scalar(select(Change).where(Change.number == number))
        if change is not None:
            change.status = status
