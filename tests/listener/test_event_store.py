"""listener.event_store: what the intake's hot path stores is what the ORM would store."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from ci.db import transaction
from ci.models import Event
from listener.event_insert import Received, copy_text
from listener.event_store import INVALID_TYPE, EventStore

HOSTILE = "Zoë Ñúñez 李 — \"quoted\" \\ back\\slash \t tab 👍 \u2028"


def _line(number: int, comment: str = HOSTILE) -> bytes:
    return orjson.dumps({"type": "comment-added", "eventCreatedOn": 1700000000 + number,
                         "comment": comment, "author": {"username": "zoë"},
                         "change": {"number": number, "project": "openstack/nova"},
                         "patchSet": {"number": 1}})


def test_lines_come_back_as_the_text_gerrit_sent_on_either_engine(
        sessions: sessionmaker[Session]) -> None:
    # JSON whitespace may hold a tab or a CR between tokens (COPY escapes them).
    lines = [_line(1), _line(2).replace(b"{", b"{\t", 1) + b"\r", b"not json \\ \xff\xfe"]
    store = EventStore(sessions)
    store.add_all(lines)
    store.add("{\"type\": \"x\", \"lone\": \"\ud800\"}")
    assert store.flush() == 4
    with transaction(sessions) as session:
        rows = session.execute(select(Event.type, Event.raw).order_by(Event.id)).all()
    assert rows[0] == ("comment-added", lines[0].decode())
    assert rows[1] == ("comment-added", lines[1].decode())
    assert rows[2] == (INVALID_TYPE, "not json \\ \ufffd\ufffd")
    assert rows[3][0] == INVALID_TYPE and "\\ud800" in rows[3][1]
    assert all(isinstance(raw, str) for _, raw in rows)


def test_received_at_is_written_as_the_orm_writes_it(sessions: sessionmaker[Session]) -> None:
    # Queries compare and order received_at as stored: one format for every row.
    store = EventStore(sessions)
    store.add(_line(1))
    store.flush()
    with transaction(sessions) as session:
        session.add(Event(type="x", raw="{}", received_at=datetime(2026, 1, 2, 3, 4, 5, 6, UTC)))
    with transaction(sessions) as session:
        if session.get_bind().dialect.name == "sqlite":
            fast, orm = session.execute(text("SELECT received_at FROM events ORDER BY id")
                                        ).scalars().all()
            assert len(fast) == len(orm) == len("2026-01-02 03:04:05.000006")
        stamps = session.scalars(select(Event.received_at).order_by(Event.id)).all()
    assert stamps[0].tzinfo is not None
    assert abs((stamps[0] - datetime.now(UTC)).total_seconds()) < 60


def test_a_chunk_of_duplicates_leaves_nothing_pending(sessions: sessionmaker[Session]) -> None:
    store = EventStore(sessions)
    store.add_all([_line(1), _line(2)])
    assert store.flush() == 2
    for _ in range(3):
        assert store.add_all([_line(1), _line(2)]) == []
        assert store.flush() == 0 and store.pending == 0
    assert store._pending == []


def test_a_full_batch_is_committed_within_a_chunk(sessions: sessionmaker[Session]) -> None:
    flushes: list[int] = []
    store = EventStore(sessions, batch_size=3, on_flush=flushes.append)
    store.add_all([_line(i) for i in range(8)])
    assert flushes == [3, 3] and store.pending == 2


def test_copy_text_escapes_what_copy_would_read_as_structure() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    block = copy_text([Received(at, ["t\\ab"], [b'{"a":"\\n"}\t\r'])])
    assert block == b't\\\\ab\t{"a":"\\\\n"}\\t\\r\t2026-01-02T03:04:05+00:00\n'


def test_a_chunk_read_but_not_yet_taken_already_deduplicates_catch_up(
        sessions: sessionmaker[Session]) -> None:
    # The reader thread reads a chunk; before the writer takes it, catch-up makes
    # up the same event (and the other way round): each is stored once.
    store = EventStore(sessions)
    chunk = store.read_chunk([_line(1)])
    assert store.add(_line(1)) is None
    assert store.add(_line(2)) is not None
    later = store.read_chunk([_line(2), _line(3)])
    assert [e.type for e in later.events] == ["comment-added"]
    store.take(chunk)
    store.take(later)
    assert store.flush() == 3
    with transaction(sessions) as session:
        raws = session.scalars(select(Event.raw).order_by(Event.id)).all()
    assert [orjson.loads(raw)["change"]["number"] for raw in raws] == [2, 1, 3]


def test_take_commits_full_batches_and_keeps_the_rest(sessions: sessionmaker[Session]) -> None:
    flushes: list[int] = []
    store = EventStore(sessions, batch_size=4, on_flush=flushes.append)
    store.take(store.read_chunk([_line(i) for i in range(3)]))
    store.take(store.read_chunk([_line(i) for i in range(3, 13)]))
    assert flushes == [4, 4, 4] and store.pending == 1
    store.flush()
    with transaction(sessions) as session:
        raws = session.scalars(select(Event.raw).order_by(Event.id)).all()
    assert [orjson.loads(raw)["change"]["number"] for raw in raws] == list(range(13))


def test_dropped_output_is_flagged_on_its_chunk(sessions: sessionmaker[Session]) -> None:
    store = EventStore(sessions)
    assert not store.read_chunk([_line(1)]).dropped_output
    assert store.read_chunk([b'{"type":"dropped-output"}', _line(2)]).dropped_output


def test_a_large_batch_is_stored_whole_and_in_order(sessions: sessionmaker[Session]) -> None:
    # More rows than one SQLite statement takes (500): full statements and the rest.
    store = EventStore(sessions, batch_size=5000)
    store.take(store.read_chunk([_line(i, comment=f"é {i}") for i in range(1234)]))
    assert store.flush() == 1234
    with transaction(sessions) as session:
        raws = session.scalars(select(Event.raw).order_by(Event.id)).all()
    assert [orjson.loads(raw)["comment"] for raw in raws] == [f"é {i}" for i in range(1234)]
