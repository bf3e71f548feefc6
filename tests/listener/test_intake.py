"""The listener's intake: chunks in, a commit whenever the reader runs dry."""

from __future__ import annotations

import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from ci.config import Config
from ci.db import transaction
from ci.gerrit import GerritClient
from ci.models import Event
from listener.event_store import EventStore
from listener.events import ParseError, Peek, dedup_key, parse_event, peek_line
from listener.stream import Listener
from sim.gerrit import SimGerrit
from tests.listener.test_stream import wait_for

FIXTURES = Path(__file__).parent.parent / "fixtures" / "gerrit"


@pytest.fixture
def sim_gerrit(tmp_path: Path, client_key: tuple[Path, str]) -> Iterator[SimGerrit]:
    """The suite's simulated Gerrit, queueing a whole burst for a stream (a real
    Gerrit drops past 128 events beyond the SSH window: docs/event-stream.md)."""
    sim = SimGerrit(tmp_path / "sim", users={"hyperv-ci": client_key[1]},
                    stream_queue_size=10000).start()
    yield sim
    sim.stop()


def _count(sessions: sessionmaker[Session]) -> int:
    with transaction(sessions) as session:
        return int(session.scalar(select(func.count()).select_from(Event)) or 0)


class _Running:
    """A Listener on a thread; the test waits on the simulated Gerrit, not the listener,
    for the stream to be open (a quiet stream tells the listener nothing for a while)."""

    def __init__(self, listener: Listener, sim: SimGerrit) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(target=listener.run, args=(self.stop,))
        self.sim = sim

    def __enter__(self) -> None:
        self.thread.start()
        wait_for(lambda: self.sim.state.subscriber_count() >= 1)

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()


def test_a_quiet_streams_single_event_is_stored_without_a_window(
        stream_config: Config, sim_gerrit: SimGerrit,
        sqlite_sessions: sessionmaker[Session]) -> None:
    # No quiet tick for an hour and a batch of 1000: only "the reader has
    # nothing more buffered" can commit this one line.
    flushes: list[int] = []
    store = EventStore(sqlite_sessions, batch_size=1000, on_flush=flushes.append)
    listener = Listener(stream_config, sqlite_sessions,
                        lambda: GerritClient(stream_config.gerrit), store=store,
                        poll_timeout=3600)
    with _Running(listener, sim_gerrit):
        sim_gerrit.state.emit_raw(orjson.dumps({
            "type": "comment-added", "eventCreatedOn": 1700000000, "comment": "recheck",
            "change": {"number": 5, "project": "openstack/nova"}, "patchSet": {"number": 1},
            "author": {"username": "zoë", "name": "Zoë Ñúñez"}}))
        wait_for(lambda: _count(sqlite_sessions) == 1, timeout=10)
    assert flushes == [1]


def test_a_burst_is_committed_in_few_growing_batches(
        stream_config: Config, sim_gerrit: SimGerrit,
        sqlite_sessions: sessionmaker[Session]) -> None:
    flushes: list[int] = []
    store = EventStore(sqlite_sessions, batch_size=1000, on_flush=flushes.append)
    listener = Listener(stream_config, sqlite_sessions,
                        lambda: GerritClient(stream_config.gerrit), store=store)
    lines = [orjson.dumps({"type": "patchset-created", "eventCreatedOn": 1700000000 + i,
                           "change": {"number": 1000 + i, "project": "openstack/nova",
                                      "subject": "Hyper-V: 修复 " + "é" * 900},
                           "patchSet": {"number": 1}}) for i in range(3000)]
    with _Running(listener, sim_gerrit):
        for line in lines:
            sim_gerrit.state.emit_raw(line)
        wait_for(lambda: store.stored == len(lines), timeout=30)
    assert _count(sqlite_sessions) == len(lines)
    # One transaction per chunk handed over at most, never one per line.
    assert sum(flushes) == len(lines) and len(flushes) <= len(lines) // 50
    assert max(flushes) <= 1000


def test_chunks_keep_lines_whole_across_reads(sim_gerrit: SimGerrit, stream_config: Config
                                              ) -> None:
    # Lines of 30 KB arrive split over several reads; each comes out whole, once.
    lines = [orjson.dumps({"type": "ref-updated", "n": i, "pad": "ü" * 15000})
             for i in range(40)]
    client = GerritClient(stream_config.gerrit)
    stop = threading.Event()
    got: list[bytes] = []
    chunks = 0

    def read() -> None:
        nonlocal chunks
        for chunk in client.stream_chunks(stop, poll_timeout=0.05, tick=0.05):
            if chunk is None:
                continue
            chunks += 1
            got.extend(chunk)
            if len(got) >= len(lines):
                stop.set()

    thread = threading.Thread(target=read)
    thread.start()
    wait_for(lambda: sim_gerrit.state.subscriber_count() >= 1)
    for line in lines:
        sim_gerrit.state.emit_raw(line)
    thread.join(timeout=20)
    stop.set()
    assert got == lines and chunks < len(lines)


def _fixture_lines() -> Iterator[bytes]:
    for path in sorted(FIXTURES.glob("events__*")):
        text = path.read_bytes().strip()
        if path.suffix == ".jsonl":
            yield from (line for line in text.splitlines() if line.strip())
        else:
            yield text


@pytest.mark.parametrize("line", list(_fixture_lines()), ids=lambda line: str(zlib.crc32(line)))
def test_the_peek_keys_every_real_event_as_the_typed_parse_does(line: bytes) -> None:
    """The hot path's light read and the scheduler's full parse agree on identity."""
    seen = peek_line(line)
    typed = parse_event(line)
    if isinstance(typed, ParseError):
        assert isinstance(seen, ParseError)
        return
    assert isinstance(seen, Peek)
    key = dedup_key(typed)
    light = None if seen.number is None or not seen.is_change_event else (
        seen.type, seen.number, seen.patchset, seen.created_on, seen.actor)
    assert light == key
    assert seen.type == typed.type and seen.source == typed.source
