"""The reaper on a timer: every worker process and the listener run one.

A dead worker's build must not wait for a survivor to finish its own
(hours-long) build before it is reaped, so reaping runs from a thread of its
own, whatever the process is doing. Each pass is one short transaction
(`ci.queue.reap_expired`), safe to run from any number of processes at once.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy.orm import Session, sessionmaker

from ci import queue

logger = logging.getLogger(__name__)


def reap_interval(lease_seconds: int) -> float:
    """Seconds between two passes: a lapsed lease is seen within a few seconds,
    and never more often than the heartbeat renews (a third of the lease)."""
    return max(0.5, min(10.0, lease_seconds / 6))


def reap_once(sessions: sessionmaker[Session], max_attempts: int) -> int:
    """One pass; returns the number of builds reaped."""
    with sessions() as session, session.begin():
        return len(queue.reap_expired(session, max_attempts))


def reap_loop(sessions: sessionmaker[Session], max_attempts: int, interval: float,
              stop: threading.Event) -> None:
    """Reap every `interval` seconds until `stop` (a failed pass is logged and retried)."""
    while not stop.wait(interval):
        try:
            reap_once(sessions, max_attempts)
        except Exception:
            logger.exception("reaping expired builds failed; retrying in %.1fs", interval)


def start_reaper(sessions: sessionmaker[Session], max_attempts: int, lease_seconds: int,
                 stop: threading.Event) -> threading.Thread:
    """Start the reaper thread (a daemon: it holds no state worth finishing)."""
    thread = threading.Thread(
        target=reap_loop, args=(sessions, max_attempts, reap_interval(lease_seconds), stop),
        name="reaper", daemon=True)
    thread.start()
    return thread
