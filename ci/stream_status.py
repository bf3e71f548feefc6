"""The event stream's standing error, kept where the dashboard can show it.

The listener records why Gerrit refused its connection (a host key that no
longer matches known_hosts, a key the account no longer accepts) and clears
it once the stream connects again; the status page and `/api/status` show it
meanwhile. A quiet retry would leave the CI deaf with nobody told.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete
from sqlalchemy.orm import Session

from ci.models import ListenerState, utcnow

STREAM_ERROR_KEY = "stream_error"


@dataclass(frozen=True)
class StreamError:
    message: str
    at: datetime


def record(session: Session, message: str, at: datetime | None = None) -> None:
    """Keep `message` as the stream's standing error (replacing any older one)."""
    when = at or utcnow()
    session.merge(ListenerState(key=STREAM_ERROR_KEY, value=json.dumps(
        {"message": message, "at": when.isoformat()}, ensure_ascii=False)))


def clear(session: Session) -> None:
    """The stream connected: no standing error any more."""
    session.execute(delete(ListenerState).where(ListenerState.key == STREAM_ERROR_KEY))


def read(session: Session) -> StreamError | None:
    """The standing error, if any."""
    row = session.get(ListenerState, STREAM_ERROR_KEY)
    if row is None:
        return None
    try:
        data = json.loads(row.value)
        return StreamError(str(data["message"]), datetime.fromisoformat(data["at"]))
    except (ValueError, KeyError, TypeError):
        return StreamError(row.value, utcnow())
