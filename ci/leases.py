"""Named turns shared by every process: one holder per interval, on any engine.

`take_turn` is one short transaction on a row of `leases`: a conditional
UPDATE that succeeds only once the row's time is up, so of N processes
asking at once exactly one gets the turn (PostgreSQL re-checks the WHERE
after the row lock; SQLite's `BEGIN IMMEDIATE` serialises writers). No
advisory lock is needed, so the same code serves SQLite and PostgreSQL, and
a holder that dies gives up nothing: the next turn is due when its time is.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ci.models import Lease, utcnow

HEALTH_CHECKS = "health-checks"


def take_turn(session: Session, name: str, holder: str, seconds: float,
              now: datetime | None = None) -> bool:
    """True if `holder` gets turn `name` now; the next turn is then `seconds` away.

    Runs in the caller's transaction; commit it at once (it is the lock).
    """
    now = now or utcnow()
    until = now + timedelta(seconds=seconds)
    result = session.execute(
        update(Lease).where(Lease.name == name, Lease.expires_at <= now)
        .values(holder=holder, expires_at=until))
    # An UPDATE's result is a CursorResult (rowcount), which Session.execute does not say.
    if cast("CursorResult[Any]", result).rowcount == 1:
        return True
    if session.scalar(select(Lease.name).where(Lease.name == name)) is not None:
        return False
    try:  # the first turn ever: whoever inserts the row has it
        with session.begin_nested():
            session.add(Lease(name=name, holder=holder, expires_at=until))
    except IntegrityError:
        return False
    return True


def holder_of(session: Session, name: str) -> str | None:
    """Who took the latest turn `name` (for the operator), or None."""
    return session.scalar(select(Lease.holder).where(Lease.name == name))
