"""listener.stream against a real SimGerrit over SSH (paramiko both sides)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ci.config import Config
from ci.db import transaction
from ci.gerrit import GerritClient
from ci.models import Build, Event, ListenerState
from listener.stream import LAST_EVENT_TS, EventStore, Listener, run_listener
from sim.gerrit import SimGerrit

SUBJECT = "Hyper-V: 修复实例名的 unicode 问题 — naïve café"
HYPERV_FILES = {"nova/virt/hyperv/vmops.py": "# vmops\n"}


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Poll until `predicate()` is truthy; fail (not skip) after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.05)
    pytest.fail(f"condition not met within {timeout} s")


def stored(sessions: sessionmaker[Session], kind: str = "patchset-created") -> list[dict[str, Any]]:
    with transaction(sessions) as session:
        raws = session.scalars(select(Event.raw).where(Event.type == kind).order_by(Event.id))
        return [orjson.loads(raw) for raw in raws]


def stored_changes(sessions: sessionmaker[Session]) -> list[tuple[int, int, str]]:
    return [(e["change"]["number"], e["patchSet"]["number"], e.get("source", "stream"))
            for e in stored(sessions)]


class LossyClient(GerritClient):
    """The real client whose stream loses the lines of the changes in `lose` (as
    Gerrit does when its per-connection queue overflows, before dropped-output)."""

    lose: ClassVar[set[int]] = set()

    def stream_events(self, stop: threading.Event, *, poll_timeout: float = 1.0,
                      tick: float = 0.2) -> Iterator[bytes | None]:
        for line in super().stream_events(stop, poll_timeout=poll_timeout, tick=tick):
            if line is None or orjson.loads(line).get("change", {}).get("number") not in self.lose:
                yield line


class Running:
    """A Listener in a thread, stopped (and checked to stop promptly) at the end."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.stop = threading.Event()
        self.thread = threading.Thread(target=listener.run, args=(self.stop,))

    def __enter__(self) -> Listener:
        self.thread.start()
        wait_for(lambda: self.listener.connections >= 1)
        return self.listener

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "the listener did not stop"


@pytest.fixture
def make_listener(stream_config: Config,
                  sqlite_sessions: sessionmaker[Session]) -> Callable[..., Listener]:
    def make(client: type[GerritClient] = GerritClient, **kw: Any) -> Listener:
        kw.setdefault("backoff", 0.1)
        kw.setdefault("max_backoff", 0.5)
        return Listener(stream_config, sqlite_sessions, lambda: client(stream_config.gerrit),
                        **kw)
    return make


def test_pushed_events_arrive_intact_and_stop_is_prompt(
        make_listener: Callable[..., Listener], sim_gerrit: SimGerrit,
        sqlite_sessions: sessionmaker[Session]) -> None:
    running = Running(make_listener())
    with running as listener:
        pushed = sim_gerrit.state.push("openstack/nova", files=HYPERV_FILES, subject=SUBJECT,
                                       owner="Zoë Ñúñez")
        sim_gerrit.state.comment(pushed["change"], 1, "recheck 中文")
        wait_for(lambda: stored(sqlite_sessions, "comment-added"))
    # Running.__exit__ checked that the listener stopped when asked.
    [event] = stored(sqlite_sessions)
    assert event["change"]["number"] == pushed["change"]
    assert event["change"]["subject"] == SUBJECT
    assert event["uploader"]["name"] == "Zoë Ñúñez"
    assert stored(sqlite_sessions, "comment-added")[0]["comment"].endswith("recheck 中文")
    with transaction(sqlite_sessions) as session:
        types = list(session.scalars(select(Event.type).order_by(Event.id)))
        state = session.get(ListenerState, LAST_EVENT_TS)
    assert types == ["project-created", "ref-updated", "patchset-created", "comment-added"]
    assert state is not None and int(state.value) == event["eventCreatedOn"]
    assert listener.catch_ups == 0  # a fresh database has nothing to catch up


def test_quiet_stream_flushes_a_partial_batch(
        make_listener: Callable[..., Listener], sim_gerrit: SimGerrit,
        sqlite_sessions: sessionmaker[Session]) -> None:
    flushes: list[int] = []
    store = EventStore(sqlite_sessions, batch_size=1000, max_delay=3600, on_flush=flushes.append)
    with Running(make_listener(store=store)):
        sim_gerrit.state.push("openstack/nova", files=HYPERV_FILES)
        wait_for(lambda: stored(sqlite_sessions))
    assert sum(flushes) == 3 and len(flushes) <= 3  # one burst, one or few transactions


def test_reconnect_after_restart_catches_up(
        make_listener: Callable[..., Listener], sim_gerrit: SimGerrit,
        client_key: tuple[Path, str], tmp_path: Path,
        sqlite_sessions: sessionmaker[Session]) -> None:
    running = Running(make_listener())
    with running as listener:
        first = sim_gerrit.state.push("openstack/nova", files=HYPERV_FILES, subject="before")
        wait_for(lambda: stored(sqlite_sessions))
        port = sim_gerrit.port
        sim_gerrit.stop()
        # While Gerrit (and so the stream) is down, a change is uploaded.
        restarted = SimGerrit(tmp_path / "sim", port=port, users={"hyperv-ci": client_key[1]})
        missed = restarted.state.push("openstack/nova", files=HYPERV_FILES, subject=SUBJECT)
        ignored = restarted.state.push("openstack/neutron", subject="not watched")
        restarted.start()
        try:
            wait_for(lambda: listener.connections >= 2 and listener.catch_ups >= 1)
            after = restarted.state.push("openstack/nova", files=HYPERV_FILES, subject="after")
            wait_for(lambda: len(stored(sqlite_sessions)) >= 3)
        finally:
            running.__exit__()
            restarted.stop()
    assert stored_changes(sqlite_sessions) == [
        (first["change"], 1, "stream"),
        (missed["change"], 1, "catch-up"),
        (after["change"], 1, "stream"),
    ]
    assert ignored["change"] not in {c[0] for c in stored_changes(sqlite_sessions)}
    assert stored(sqlite_sessions)[1]["change"]["subject"] == SUBJECT


def test_dropped_output_triggers_catch_up(
        make_listener: Callable[..., Listener], sim_gerrit: SimGerrit,
        sqlite_sessions: sessionmaker[Session]) -> None:
    LossyClient.lose = set()
    with Running(make_listener(LossyClient)) as listener:
        seen = sim_gerrit.state.push("openstack/nova", files=HYPERV_FILES)
        wait_for(lambda: stored(sqlite_sessions))
        LossyClient.lose = {seen["change"], seen["change"] + 1}
        lost = sim_gerrit.state.push("openstack/compute-hyperv", subject=SUBJECT)
        assert lost["change"] == seen["change"] + 1
        sim_gerrit.state.push("openstack/nova", change=seen["change"], files=HYPERV_FILES)
        sim_gerrit.emit_raw('{"type":"dropped-output"}')
        wait_for(lambda: len(stored(sqlite_sessions)) >= 3)
        assert listener.connections == 1  # caught up without reconnecting
    assert sorted(stored_changes(sqlite_sessions)) == [
        (seen["change"], 1, "stream"),
        (seen["change"], 2, "catch-up"),
        (lost["change"], 1, "catch-up"),
    ]
    [caught] = [e for e in stored(sqlite_sessions) if e["change"]["number"] == lost["change"]]
    assert caught["change"]["subject"] == SUBJECT and caught["source"] == "catch-up"
    assert len(stored(sqlite_sessions, "dropped-output")) == 1


def test_silent_stream_reconnects(make_config: Callable[..., Config], sim_gerrit: SimGerrit,
                                  client_key: tuple[Path, str],
                                  sqlite_sessions: sessionmaker[Session]) -> None:
    config = make_config(host="127.0.0.1", port=sim_gerrit.port, key_file=str(client_key[0]),
                         known_hosts=str(sim_gerrit.known_hosts_file), silence_timeout=1)
    listener = Listener(config, sqlite_sessions, lambda: GerritClient(config.gerrit),
                        backoff=0.1)
    with Running(listener):
        wait_for(lambda: listener.connections >= 2)


def test_event_store_batches_and_deduplicates(sqlite_sessions: sessionmaker[Session]) -> None:
    flushes: list[int] = []
    store = EventStore(sqlite_sessions, batch_size=200, max_delay=3600, on_flush=flushes.append)
    lines = [orjson.dumps({"type": "patchset-created", "eventCreatedOn": 1700000000 + i,
                           "change": {"number": i, "project": "p"},
                           "patchSet": {"number": 1}}) for i in range(450)]
    for line in lines:
        assert store.add(line) is not None
    assert flushes == [200, 200] and store.pending == 50
    assert store.add(lines[7]) is None  # the same event again (a replay after reconnect)
    assert store.add(b"not json") is not None  # kept, typed "invalid"
    assert store.flush() == 51
    assert flushes == [200, 200, 51]
    assert store.last_event_ts() == 1700000449
    # A restarted listener remembers what it stored.
    again = EventStore(sqlite_sessions)
    again.load()
    assert again.add(lines[449]) is None
    assert again.seen_patchset(3, 1) and not again.seen_patchset(3, 2)


def test_run_listener_turns_an_upload_into_a_build(
        stream_config: Config, sim_gerrit: SimGerrit,
        sqlite_sessions: sessionmaker[Session]) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=run_listener, args=(stream_config, stop))
    thread.start()
    try:
        # Connected once a probe line gets stored (events before that are Gerrit's past).
        wait_for(lambda: _probe(sim_gerrit, sqlite_sessions))
        sim_gerrit.state.push("openstack/nova", files=HYPERV_FILES, subject=SUBJECT)
        sim_gerrit.state.push("openstack/nova", files={"nova/compute/api.py": "x"})

        def builds() -> list[tuple[str, str]]:
            with transaction(sqlite_sessions) as session:
                return [tuple(r) for r in session.execute(select(Build.job, Build.state))]
        assert wait_for(builds) == [("hyperv-tempest", "queued")]
        wait_for(lambda: _all_processed(sqlite_sessions))
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()


def _probe(sim: SimGerrit, sessions: sessionmaker[Session]) -> bool:
    sim.emit_raw('{"type":"ref-updated","refUpdate":{"refName":"refs/heads/probe"}}')
    time.sleep(0.1)
    return bool(stored(sessions, "ref-updated"))


def _all_processed(sessions: sessionmaker[Session]) -> bool:
    with transaction(sessions) as session:
        return session.scalar(select(Event.id).where(Event.processed_at.is_(None))) is None
