"""Never a vote on a closed change: the listener, scheduler, worker and reporter
against the simulated Gerrit, with the change abandoned or merged mid-way.

Seen by the stream (or by catch-up after an outage), a close aborts the running
build, which then records nothing and reports nothing. A close the CI never
heard of is stopped by the reporter, which asks Gerrit before it sends.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ci.app.processes import run_listener
from ci.config import Config, parse_config
from ci.db import ensure_schema, make_engine, make_sessionmaker, transaction
from ci.gerrit import GerritClient
from ci.models import Build, BuildState, Event, Report, ReportState
from ci.report import send_pending
from runners.worker import Worker
from sim.gerrit import SimGerrit, make_client_identity

HYPERV_FILES = {"nova/virt/hyperv/vmops.py": "# vmops 修复\n"}
# The job: says it started, then runs until the test releases it (or it is killed).
GATED = (
    "import os, pathlib, time\n"
    "gate = pathlib.Path(os.environ['GATE_DIR'])\n"
    "change = os.environ['HYPERV_CI_CHANGE']\n"
    "(gate / f'started-{change}').touch()\n"
    "while not (gate / f'release-{change}').exists():\n"
    "    time.sleep(0.05)\n"
)


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


class Loop:
    """The simulated Gerrit, the listener (startable and stoppable), a worker, the reporter."""

    def __init__(self, root: Path) -> None:
        key, public = make_client_identity(root / "id", "hyperv-ci")
        self.gerrit = SimGerrit(root / "sim", users={"hyperv-ci": public}).start()
        self.gate = root / "gate"
        self.gate.mkdir()
        self.config: Config = parse_config({
            "database": {"url": f"sqlite:///{root / 'hyperv-ci.db'}"},
            "gerrit": {"host": "127.0.0.1", "port": self.gerrit.port, "username": "hyperv-ci",
                       "key_file": str(key), "known_hosts": str(self.gerrit.known_hosts_file),
                       "keepalive": 5},
            "projects": [{"name": "openstack/nova", "files": ["^nova/virt/hyperv/"],
                          "jobs": ["hyperv-tempest"]}],
            "jobs": {"hyperv-tempest": {"type": "local", "command": [sys.executable, "-c", GATED],
                                        "env": {"GATE_DIR": str(self.gate)}, "timeout": 120}},
            "logs": {"dir": str(root / "logs"), "url": "http://logs.example.org/"},
            # The heartbeat (lease / 3) is how an abort reaches a running build.
            "worker": {"lease_seconds": 5, "poll_interval": 0.1},
        })
        self.engine = make_engine(self.config.database.sqlalchemy_url())
        ensure_schema(self.engine)
        self.sessions: sessionmaker[Session] = make_sessionmaker(self.engine)
        self._listener: tuple[threading.Thread, threading.Event] | None = None
        self._worker: threading.Thread | None = None

    # -- the processes ---------------------------------------------------------------------

    def start_listener(self) -> None:
        stop = threading.Event()
        thread = threading.Thread(target=run_listener, args=(self.config, stop), daemon=True)
        connected = self.gerrit.state.subscriber_count()
        thread.start()
        self._listener = (thread, stop)
        assert self.gerrit.wait_for_streams(connected + 1, timeout=30)

    def stop_listener(self) -> None:
        assert self._listener is not None
        thread, stop = self._listener
        stop.set()
        thread.join(timeout=20)
        assert not thread.is_alive(), "the listener did not stop"
        # The server drops the stream a moment after the client closed it: wait,
        # or the next start_listener counts the old stream as already there.
        deadline = time.monotonic() + 20
        while self.gerrit.state.subscriber_count() and time.monotonic() < deadline:
            time.sleep(0.05)
        self._listener = None

    def run_build(self) -> None:
        """One worker pass in the background: claims the queued build and runs it."""
        worker = Worker(self.config, self.sessions, name="w1")
        self._worker = threading.Thread(target=worker.run_once, daemon=True)
        self._worker.start()

    def wait_build_done(self) -> None:
        assert self._worker is not None
        self._worker.join(timeout=60)
        assert not self._worker.is_alive(), "the build did not end"

    def report(self) -> int:
        return send_pending(self.sessions, lambda: GerritClient(self.config.gerrit), self.config)

    def close(self) -> None:
        if self._listener is not None:
            self.stop_listener()
        if self._worker is not None:
            (self.gate / "release-all").touch()
            for path in self.gate.glob("started-*"):
                (self.gate / path.name.replace("started-", "release-")).touch()
            self._worker.join(timeout=30)
        self.gerrit.stop()
        self.engine.dispose()

    # -- what happened ---------------------------------------------------------------------

    def push(self) -> int:
        return int(self.gerrit.state.push("openstack/nova", files=HYPERV_FILES,
                                          subject="Hyper-V: 修复 — Zoë")["change"])

    def started(self, change: int) -> bool:
        return (self.gate / f"started-{change}").exists()

    def release(self, change: int) -> None:
        (self.gate / f"release-{change}").touch()

    def builds(self) -> list[tuple[str, str]]:
        with transaction(self.sessions) as session:
            return [(state, summary) for state, summary in
                    session.execute(select(Build.state, Build.summary).order_by(Build.id))]

    def reports(self) -> list[tuple[str, str, int]]:
        with transaction(self.sessions) as session:
            return [(r.state, r.last_error, r.attempts)
                    for r in session.scalars(select(Report).order_by(Report.id))]

    def outcome(self, kind: str) -> str | None:
        """The scheduler's outcome for the stored event of this type, once processed."""
        with transaction(self.sessions) as session:
            return session.scalar(select(Event.outcome).where(
                Event.type == kind, Event.processed_at.is_not(None)))

    def votes(self, change: int) -> list[dict[str, Any]]:
        return [r for r in self.gerrit.state.reviews() if r["change"] == change]


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[Loop]:
    running = Loop(tmp_path)
    try:
        yield running
    finally:
        running.close()


def test_an_abandon_during_a_build_aborts_it_and_nothing_is_voted(loop: Loop) -> None:
    loop.start_listener()
    change = loop.push()
    wait_for(lambda: loop.builds() == [(BuildState.QUEUED, "")], what="the build")
    loop.run_build()
    wait_for(lambda: loop.started(change), what="the job to start")
    loop.gerrit.state.abandon(change)
    # Never released: only the abort (scheduler → build row → heartbeat → job) ends it.
    loop.wait_build_done()
    assert loop.builds() == [(BuildState.ABORTED, "change abandoned")]
    assert loop.outcome("change-abandoned") == "change abandoned: aborted 1 build(s)"
    assert loop.reports() == []
    assert loop.report() == 0
    assert loop.votes(change) == []


def test_an_abandon_missed_during_an_outage_is_caught_up_and_aborts_the_build(
        loop: Loop) -> None:
    loop.start_listener()
    change = loop.push()
    wait_for(lambda: loop.builds() == [(BuildState.QUEUED, "")], what="the build")
    loop.stop_listener()  # the listener is down ...
    loop.run_build()
    wait_for(lambda: loop.started(change), what="the job to start")
    loop.gerrit.state.abandon(change)  # ... while the change is abandoned
    loop.start_listener()  # back: its catch-up finds the abandon
    loop.wait_build_done()
    assert loop.builds() == [(BuildState.ABORTED, "change abandoned")]
    assert loop.reports() == []
    assert loop.report() == 0
    assert loop.votes(change) == []


def test_an_abandon_the_listener_never_saw_stops_the_vote(loop: Loop) -> None:
    loop.start_listener()
    change = loop.push()
    wait_for(lambda: loop.builds() == [(BuildState.QUEUED, "")], what="the build")
    loop.stop_listener()  # down for the rest of the test: the abandon is never stored
    loop.run_build()
    wait_for(lambda: loop.started(change), what="the job to start")
    loop.gerrit.state.abandon(change)
    loop.release(change)
    loop.wait_build_done()
    assert loop.builds() == [(BuildState.SUCCEEDED, "command succeeded")]
    assert loop.report() == 0
    assert loop.reports() == [(ReportState.NOT_SENT, "change closed (ABANDONED)", 1)]
    assert loop.votes(change) == []


def test_a_merge_after_the_build_finished_stops_its_pending_vote(loop: Loop) -> None:
    # What the demo did: the build ended, its report waited for the reporter's
    # next pass, the change closed meanwhile (the scheduler had no build left to
    # abort), and the vote went out on the closed change.
    loop.start_listener()
    change = loop.push()
    wait_for(lambda: loop.builds() == [(BuildState.QUEUED, "")], what="the build")
    loop.release(change)
    loop.run_build()
    loop.wait_build_done()
    assert loop.builds() == [(BuildState.SUCCEEDED, "command succeeded")]
    loop.gerrit.state.merge(change)
    assert wait_for(lambda: loop.outcome("change-merged"), what="the merge event") == (
        "change merged: aborted 0 build(s)")
    assert loop.report() == 0
    assert loop.reports() == [(ReportState.NOT_SENT, "change closed (MERGED)", 1)]
    assert loop.votes(change) == []
