"""The reaper on a timer (ci/reaper.py): concurrent passes, and a dead worker's
build reaped while every surviving worker is busy."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from ci import nodes as ci_nodes
from ci import queue
from ci.db import ensure_schema, make_engine, make_sessionmaker
from ci.models import Build, BuildState, Node, NodeState, OfflineCause, utcnow
from ci.reaper import reap_once

ROOT = Path(__file__).resolve().parents[2]


def enqueue(sessions: sessionmaker[Session], number: int) -> int:
    with sessions() as session, session.begin():
        patchset = queue.upsert_patchset(session, queue.ChangeInfo(
            number=number, project="openstack/nova", branch="unmaintained/2023.1",
            patchset=1, subject="Hyper-V: « réparer » 实例"))
        build = queue.enqueue(session, patchset, "unit", "patchset-created")
        assert build is not None
        return build.id


def test_concurrent_reapers_reap_each_build_once(sessions: sessionmaker[Session]) -> None:
    """Eight processes' timers firing together: every dead build reaped once, one retry each."""
    with sessions() as session, session.begin():
        session.add_all(Node(name=f"hv-{i}", label="hyperv", state=NodeState.READY)
                        for i in range(12))
    ids = [enqueue(sessions, 20000 + i) for i in range(12)]
    with sessions() as session, session.begin():
        for _ in ids:
            build = queue.claim_next(session, "dead", 5, reserve=lambda s, b: ci_nodes.reserve(
                s, b.id, ["hyperv"]) is not None)
            assert build is not None
        session.execute(update(Build).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    counts: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def reaper() -> None:
        try:
            start.wait()
            counts.append(reap_once(sessions, 3))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=reaper) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert sum(counts) == len(ids)
    with sessions() as session:
        rows = list(session.scalars(select(Build).order_by(Build.id)))
        nodes = list(session.scalars(select(Node)))
    assert sorted(b.id for b in rows if b.state == BuildState.ERROR) == ids
    assert sorted(b.retry_of_id for b in rows if b.state == BuildState.QUEUED) == ids
    assert {(n.state, n.offline_cause, n.build_id) for n in nodes} == {
        (NodeState.OFFLINE, OfflineCause.WORKER_LOST, None)}


def write_config(tmp_path: Path) -> Path:
    # The job holds its worker for two minutes: the survivor stays busy throughout.
    data: dict[str, Any] = {
        "database": {"url": f"sqlite:///{tmp_path / 'ci.db'}"},
        "gerrit": {"host": "127.0.0.1", "username": "ci", "key_file": "/nonexistent/key",
                   "known_hosts": "/nonexistent/known_hosts"},
        "projects": [{"name": "openstack/nova", "jobs": ["unit"]}],
        "jobs": {"unit": {"type": "local", "timeout": 600,
                          "command": [sys.executable, "-c", "import time; time.sleep(120)"]}},
        "logs": {"dir": str(tmp_path / "logs"), "url": "http://logs.example.org/"},
        "reporter": {"enabled": False},
        "worker": {"lease_seconds": 6, "max_attempts": 3, "poll_interval": 0.2},
    }
    path = tmp_path / "hyperv-ci.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def wait_for(what: str, predicate: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def test_a_dead_worker_is_reaped_while_every_survivor_is_busy(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    engine = make_engine(f"sqlite:///{tmp_path / 'ci.db'}")
    ensure_schema(engine)
    sessions = make_sessionmaker(engine)
    first, second = enqueue(sessions, 10001), enqueue(sessions, 10002)
    procs = {}
    for name in ("doomed", "survivor"):
        with (tmp_path / f"{name}.log").open("ab") as out:
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "ci.app.cli", "-c", str(config), "worker", "--name", name],
                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def running() -> dict[int, str | None]:
        with sessions() as session:
            return {b.id: b.worker for b in session.scalars(
                select(Build).where(Build.state == BuildState.RUNNING))}

    try:
        held = wait_for("both builds to run", lambda: len(running()) == 2 and running(), 60)
        doomed_build = next(b for b, w in held.items() if w == "doomed")
        busy_build = next(b for b, w in held.items() if w == "survivor")
        # The dead worker's build also held a node (reserved with it, as a job's would be).
        with sessions() as session, session.begin():
            session.add(Node(name="hv-1", label="hyperv", state=NodeState.READY))
            session.flush()
            assert ci_nodes.reserve(session, doomed_build, ["hyperv"])
        procs["doomed"].send_signal(signal.SIGKILL)
        procs["doomed"].wait(timeout=10)

        def reaped() -> Build | None:
            with sessions() as session:
                build = session.get(Build, doomed_build)
                assert build is not None
                return build if build.state == BuildState.ERROR else None

        build = wait_for("the dead worker's build to be reaped", reaped, 60)
        with sessions() as session:
            node = session.scalar(select(Node).where(Node.name == "hv-1"))
            assert node is not None
            busy = session.get(Build, busy_build)
            assert busy is not None
            retry = session.scalar(select(Build).where(Build.retry_of_id == doomed_build))
        # Reaped by the survivor's timer while its own build still runs: not after it.
        assert busy.state == BuildState.RUNNING and busy.worker == "survivor"
        assert build.summary == "worker doomed stopped renewing its lease"
        assert retry is not None and retry.state == BuildState.QUEUED
        assert (node.state, node.offline_cause, node.build_id, node.dirty_build_id) == (
            NodeState.OFFLINE, OfflineCause.WORKER_LOST, None, doomed_build)
        assert {first, second} == {doomed_build, busy_build}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
