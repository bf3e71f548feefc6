"""ci/leases.py: a named turn goes to one holder per interval, on both engines."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from ci.leases import holder_of, take_turn
from ci.models import utcnow


def test_one_turn_per_interval_whatever_the_number_of_askers(
        sessions: sessionmaker[Session]) -> None:
    start = utcnow()
    turns: list[tuple[float, str]] = []
    # Four holders ask every quarter interval for ten intervals (a 60 s interval).
    for tick in range(40):
        now = start + timedelta(seconds=15 * tick)
        for holder in ("w1", "w2", "w3", "w4"):
            with sessions() as session, session.begin():
                if take_turn(session, "health-checks", holder, 60, now=now):
                    turns.append((15 * tick, holder))
    assert [at for at, _holder in turns] == [60 * i for i in range(10)]
    with sessions() as session:
        assert holder_of(session, "health-checks") == turns[-1][1]
        # Other names are other turns.
        assert take_turn(session, "something-else", "w2", 60, now=start)
