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
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from ci.config import Config
from ci.db import transaction
from ci.gerrit import GerritClient
from ci.models import Build, Change, Event, Patchset
from listener.catchup import close_is_new, synthetic_close, synthetic_comments
from listener.event_store import EventStore
from listener.events import CommentAdded, parse_event
from listener.scheduler import Scheduler
from listener.stream import Listener
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

    def stream_chunks(self, stop: threading.Event, *, poll_timeout: float = 1.0,
                      tick: float = 0.2) -> Iterator[list[bytes] | None]:
        for chunk in super().stream_chunks(stop, poll_timeout=poll_timeout, tick=tick):
            yield None if chunk is None else [
                line for line in chunk
                if orjson.loads(line).get("change", {}).get("number") not in self.lose]


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
        # The real client's 30 s connect timeout: a reconnect that reaches the
        # simulated Gerrit while it stops is refused or closed at once, never
        # left waiting for a banner (sim/gerrit.py stop()).
        return Listener(stream_config, sqlite_sessions,
                        lambda: client(stream_config.gerrit), **kw)
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
    assert types == ["project-created", "ref-updated", "patchset-created", "comment-added"]
    # Catch-up starts from when this host received the newest event, on its own clock.
    assert abs((listener.store.last_event_ts() or 0) - time.time()) < 60
    assert listener.catch_ups == 0  # a fresh database has nothing to catch up


def test_quiet_stream_flushes_a_partial_batch(
        make_listener: Callable[..., Listener], sim_gerrit: SimGerrit,
        sqlite_sessions: sessionmaker[Session]) -> None:
    flushes: list[int] = []
    store = EventStore(sqlite_sessions, batch_size=1000, on_flush=flushes.append)
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
    # The catch-up query asked for the files, and the made-up upload keeps them.
    made_up = parse_event(orjson.dumps(stored(sqlite_sessions)[1]))
    assert made_up.change is not None  # type: ignore[union-attr]
    assert made_up.change.files == tuple(HYPERV_FILES)  # type: ignore[union-attr]


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
    store = EventStore(sqlite_sessions, batch_size=200, on_flush=flushes.append)
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
    assert abs((store.last_event_ts() or 0) - time.time()) < 60  # received now, not 2023
    # A restarted listener remembers what it stored.
    again = EventStore(sqlite_sessions)
    again.load()
    assert again.add(lines[449]) is None
    assert again.seen_patchset(3, 1) and not again.seen_patchset(3, 2)


# -- catch-up of comments and closed changes ------------------------------------------------------

def _builds(sessions: sessionmaker[Session]) -> list[tuple[int, int, str, str]]:
    """(change, patchset, state, reason) of every build, oldest first."""
    with transaction(sessions) as session:
        rows = session.execute(select(Change.number, Patchset.number, Build.state, Build.reason)
                               .join(Build.patchset).join(Patchset.change).order_by(Build.id))
        return [(c, p, state, reason) for c, p, state, reason in rows]


def test_catch_up_recovers_rechecks_abandons_and_merges_once(
        make_config: Callable[..., Config], sim_gerrit: SimGerrit,
        client_key: tuple[Path, str], sqlite_url: str,
        sqlite_sessions: sessionmaker[Session]) -> None:
    # silence_timeout=1: the quiet stream reconnects every second, so one run
    # catches up several times over the same window.
    config = make_config(database_url=sqlite_url, host="127.0.0.1", port=sim_gerrit.port,
                         key_file=str(client_key[0]),
                         known_hosts=str(sim_gerrit.known_hosts_file), silence_timeout=1)
    scheduler = Scheduler(config, sqlite_sessions, GerritClient(config.gerrit))

    def listener() -> Listener:
        return Listener(config, sqlite_sessions, lambda: GerritClient(config.gerrit),
                        backoff=0.1, max_backoff=0.5)

    state = sim_gerrit.state
    with Running(listener()):
        a = state.push("openstack/nova", files=HYPERV_FILES, subject="A")["change"]
        b = state.push("openstack/nova", files=HYPERV_FILES, subject="B")["change"]
        c = state.push("openstack/compute-hyperv", subject="C")["change"]
        # Delivered by the stream: a later catch-up must not store it again.
        state.comment(a, 1, "looks good to me")
        wait_for(lambda: len(stored(sqlite_sessions)) == 3
                 and stored(sqlite_sessions, "comment-added"))
    scheduler.run_once()
    with transaction(sqlite_sessions) as session:  # as if a worker had run A's build
        build = session.scalars(select(Build).join(Patchset).join(Change)
                                .where(Change.number == a)).one()
        build.state = "succeeded"
    # The listener is down: a recheck, an abandon and a merge happen.
    state.comment(a, 1, "recheck")
    state.abandon(b, reason="not needed")
    state.merge(c)

    with Running(listener()) as running:
        wait_for(lambda: running.catch_ups >= 3)
    with Running(listener()) as running:  # restarted: remembers only what is stored
        wait_for(lambda: running.catch_ups >= 2)
    scheduler.run_once()

    comments = [e["comment"] for e in stored(sqlite_sessions, "comment-added")]
    assert comments == ["Patch Set 1:\n\nlooks good to me", "Patch Set 1:\n\nrecheck"]
    [abandoned] = stored(sqlite_sessions, "change-abandoned")
    [merged] = stored(sqlite_sessions, "change-merged")
    assert (abandoned["change"]["number"], abandoned["source"]) == (b, "catch-up")
    assert (merged["change"]["number"], merged["source"]) == (c, "catch-up")
    assert _builds(sqlite_sessions) == [
        (a, 1, "succeeded", "patchset-created"),
        (b, 1, "aborted", "patchset-created"),
        (c, 1, "aborted", "patchset-created"),
        (c, 1, "aborted", "patchset-created"),
        (a, 1, "queued", "recheck"),
    ]


def test_catch_up_survives_a_database_error(
        make_listener: Callable[..., Listener], sim_gerrit: SimGerrit,
        sqlite_sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch) -> None:
    with Running(make_listener()):
        sim_gerrit.state.push("openstack/nova", files=HYPERV_FILES, subject="before")
        wait_for(lambda: stored(sqlite_sessions))
    missed = sim_gerrit.state.push("openstack/nova", files=HYPERV_FILES, subject="missed")
    listener = make_listener(catch_up_retry=0.2)
    real = listener.store.last_event_ts
    calls: list[int] = []

    def locked_once() -> int | None:
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("SELECT value FROM listener_state", {},
                                   Exception("database is locked"))
        return real()

    monkeypatch.setattr(listener.store, "last_event_ts", locked_once)
    running = Running(listener)
    with running:
        wait_for(lambda: listener.catch_ups >= 1)
        after = sim_gerrit.state.push("openstack/nova", files=HYPERV_FILES, subject="after")
        wait_for(lambda: len(stored(sqlite_sessions)) >= 3)
        assert running.thread.is_alive()
    assert len(calls) >= 2 and listener.connections == 1  # retried, not reconnected
    assert stored_changes(sqlite_sessions)[1:] == [(missed["change"], 1, "catch-up"),
                                                   (after["change"], 1, "stream")]


def test_a_database_busy_at_start_delays_the_listener_but_does_not_end_it(
        make_listener: Callable[..., Listener], sim_gerrit: SimGerrit,
        sqlite_sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch) -> None:
    listener = make_listener(catch_up_retry=0.2)
    real = listener.store.load
    calls: list[int] = []

    def locked_once() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("SELECT", {}, Exception("database is locked"))
        real()

    monkeypatch.setattr(listener.store, "load", locked_once)
    running = Running(listener)
    with running:
        pushed = sim_gerrit.state.push("openstack/nova", files=HYPERV_FILES, subject="after")
        wait_for(lambda: any(c[0] == pushed["change"] for c in stored_changes(sqlite_sessions)))
        assert running.thread.is_alive() and len(calls) == 2


def test_comment_rows_become_comment_added_events() -> None:
    """A real `--comments` row (gerrit.wikimedia.org 2.14, via perceval), trimmed."""
    lucas = {"name": "Lucas Werkmeister (WMDE)", "email": "lucas.werkmeister@example.com",
             "username": "lucaswerkmeister-wmde"}
    bot = {"name": "jenkins-bot", "email": "", "username": "jenkins-bot"}
    hashar = {"name": "Hashar", "email": "hashar@example.com", "username": "hashar"}
    patchset = {"number": 1, "revision": "f1121171bd3ad170723638f90d95ce2030d1b2e0",
                "ref": "refs/changes/19/415319/1", "uploader": lucas, "createdOn": 1519834597,
                "approvals": [{"type": "Verified", "value": "2"}]}
    row = {"project": "mediawiki/extensions/Wikibase", "branch": "wmf/1.31.0-wmf.23",
           "number": 415319, "status": "NEW", "lastUpdated": 1520260948,
           "patchSets": [patchset],
           "comments": [
               {"timestamp": 1519834597, "reviewer": lucas,
                "message": "Patch Set 1: Cherry Picked from branch master."},
               {"timestamp": 1519899816, "reviewer": lucas, "message": "Patch Set 1:\n\nrecheck"},
               {"timestamp": 1519901019, "reviewer": bot,
                "message": "Patch Set 1:\n\nMain test build failed."},
               {"timestamp": 1519915295, "reviewer": hashar,
                "message": "Removed Verified-1 by jenkins-bot <>\n"},
               {"timestamp": 1519915296, "reviewer": lucas, "message": "Patch Set 7:\n\nrecheck"},
           ]}
    events = [parse_event(line) for line in synthetic_comments(row, since=1519899816)]
    assert all(isinstance(e, CommentAdded) and e.source == "catch-up" for e in events)
    # Older than `since`, not a review message, or a patch set the row lacks: skipped.
    assert [(e.created_on, e.author.username, e.comment, e.change.patchset,
             e.change.revision, e.change.branch) for e in events
            if isinstance(e, CommentAdded) and e.change] == [
        (1519899816, "lucaswerkmeister-wmde", "Patch Set 1:\n\nrecheck", 1,
         patchset["revision"], "wmf/1.31.0-wmf.23"),
        (1519901019, "jenkins-bot", "Patch Set 1:\n\nMain test build failed.", 1,
         patchset["revision"], "wmf/1.31.0-wmf.23"),
    ]
    assert synthetic_close(row) is None  # open
    closed = parse_event(synthetic_close(row | {"status": "ABANDONED",
                                                "currentPatchSet": patchset}) or b"")
    assert (closed.type, closed.created_on) == ("change-abandoned", 1520260948)


@pytest.mark.parametrize(("last", "stored_status", "seen", "new"), [
    (None, None, False, False),                    # never heard of: nothing to abort
    (None, "NEW", False, True),                    # built, its close missed
    (None, None, True, True),                      # upload stored, not yet scheduled
    (None, "ABANDONED", False, False),             # close already applied
    ("change-abandoned", "NEW", True, False),      # close stored, not yet applied
    ("change-restored", "ABANDONED", True, True),  # restored, then abandoned again
    ("change-merged", "MERGED", True, True),       # asked about an abandon: differs
])
def test_close_is_new(last: str | None, stored_status: str | None, seen: bool,
                      new: bool) -> None:
    assert close_is_new("change-abandoned", last_status_event=last,
                        stored_status=stored_status, seen=seen) is new


def test_made_up_comment_matches_the_streamed_one_a_second_apart(
        sqlite_sessions: sessionmaker[Session]) -> None:
    def comment(ts: int, source: str = "stream", text: str = "Patch Set 1:\n\nrecheck") -> bytes:
        return orjson.dumps({"type": "comment-added", "source": source, "eventCreatedOn": ts,
                             "change": {"number": 7, "project": "p"}, "patchSet": {"number": 1},
                             "author": {"username": "zoë"}, "comment": text})

    store = EventStore(sqlite_sessions)
    assert store.add(comment(1000)) is not None
    # Gerrit stamps the event and the stored message a moment apart.
    assert store.add(comment(1001, "catch-up")) is None
    assert store.add(comment(1003, "catch-up", "Patch Set 1:\n\nrecheck please")) is not None
    # The same reviewer's other comment of the same second is another event.
    assert store.add(comment(1000, text="Patch Set 1:\n\nlooks good")) is not None
    assert store.add(comment(5000, "catch-up")) is not None  # a recheck an hour later
    assert store.add(comment(5001)) is None  # ... which the stream then delivers
    assert store.add(comment(1002)) is not None  # two streamed comments are never merged
    store.flush()
    again = EventStore(sqlite_sessions)
    again.load()  # after a restart, from the table
    assert again.add(comment(999, "catch-up")) is None


# Named ids: values computed from the clock would differ between pytest-xdist's
# workers, which must collect the same tests.
@pytest.mark.parametrize("created_on", [int(time.time() * 1000), int(time.time()) + 86400 * 30],
                         ids=["milliseconds", "a-month-ahead"])
def test_a_bad_gerrit_timestamp_never_shrinks_the_catch_up_window(
        make_listener: Callable[..., Listener], sim_gerrit: SimGerrit,
        client_key: tuple[Path, str], tmp_path: Path,
        sqlite_sessions: sessionmaker[Session], created_on: int) -> None:
    # One event with a millisecond (or a month-ahead) eventCreatedOn, of any
    # project, then an outage with pushes: every push is caught up afterwards.
    running = Running(make_listener())
    with running as listener:
        sim_gerrit.state.emit_raw(orjson.dumps({
            "type": "ref-updated", "eventCreatedOn": created_on,
            "refUpdate": {"project": "openstack/neutron", "refName": "refs/heads/master",
                          "oldRev": "0" * 40, "newRev": "1" * 40}}).decode())
        wait_for(lambda: stored(sqlite_sessions, "ref-updated"))
        port = sim_gerrit.port
        sim_gerrit.stop()
        restarted = SimGerrit(tmp_path / "sim", port=port, users={"hyperv-ci": client_key[1]})
        missed = [restarted.state.push("openstack/nova", files=HYPERV_FILES, subject=f"m{i}")
                  for i in range(3)]
        time.sleep(2.5)  # the old window (`-age:1s`) would now miss every one of them
        restarted.start()
        try:
            wait_for(lambda: listener.catch_ups >= 1 and len(stored(sqlite_sessions)) >= 3)
        finally:
            running.__exit__()
            restarted.stop()
    assert sorted(c[0] for c in stored_changes(sqlite_sessions)) == [m["change"] for m in missed]
    assert listener.store.implausible == 1


@pytest.mark.postgres
def test_a_nul_line_on_postgresql_is_kept_as_invalid_and_storage_goes_on(
        pg_url: str) -> None:
    from ci.db import ensure_schema, make_engine, make_sessionmaker

    engine = make_engine(pg_url)
    ensure_schema(engine)
    sessions = make_sessionmaker(engine)
    try:
        store = EventStore(sessions, batch_size=1000)
        good = orjson.dumps({"type": "patchset-created", "eventCreatedOn": 1700000000,
                             "change": {"number": 5, "project": "openstack/nova",
                                        "subject": "NUL escaped \u0000 in JSON"},
                             "patchSet": {"number": 1}})
        store.add(b'{"type":"patchset-created","change":{"subject":"raw \x00 NUL"}}')
        store.add(good)
        assert store.flush() == 2  # one transaction: nothing retried, nothing lost
        with transaction(sessions) as session:
            rows = session.execute(select(Event.type, Event.raw).order_by(Event.id)).all()
        assert rows[0] == ("invalid", '{"type":"patchset-created","change":{"subject":"raw '
                                      '\\x00 NUL"}}')
        assert rows[1] == ("patchset-created", good.decode())
        # A batch the database refuses for its data is stored line by line.
        store.add(orjson.dumps({"type": "comment-added", "comment": "ok"}))
        store.add("{\"type\": \"comment-added\", \"comment\": \"lone \ud800 surrogate\"}")
        assert store.flush() == 2
        with transaction(sessions) as session:
            rows = session.execute(select(Event.type, Event.raw).order_by(Event.id)).all()
        assert [r[0] for r in rows[2:]] == ["comment-added", "invalid"]
        assert "\\ud800" in rows[3][1]
    finally:
        engine.dispose()


def test_a_failing_flush_always_waits_before_it_retries(tmp_path: Path) -> None:
    from ci.db import make_engine, make_sessionmaker

    attempts: list[int] = []
    # A server that refuses connections: every flush fails as an outage does.
    engine = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/none")
    real = make_sessionmaker(engine)

    def sessions() -> Session:
        attempts.append(1)
        return real()

    now = [100.0]
    store = EventStore(sessions, batch_size=1000,  # type: ignore[arg-type]
                       clock=lambda: now[0])
    store.add(orjson.dumps({"type": "comment-added", "comment": "x"}))
    for _ in range(50):  # the quiet-stream path asks for a flush on every idle tick
        assert store.flush() == 0
    assert len(attempts) == 1
    now[0] += 1.0
    store.flush()
    store.flush()
    assert len(attempts) == 2
    now[0] += 1.0  # the wait doubles: 2 s now
    store.flush()
    assert len(attempts) == 2 and store.pending == 1
    engine.dispose()
