"""The processes as ci/app/processes.py wires them: the listener (stream, scheduler,
reaper) against the simulated Gerrit, the dashboard in its own process."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from ci import queue
from ci.app.processes import run_listener
from ci.config import Config, parse_config
from ci.db import ensure_schema, make_engine, make_sessionmaker
from ci.models import Build, BuildState, Event, utcnow
from sim.gerrit import SimGerrit, make_client_identity
from tests.dashboard.conftest import make_config as make_dashboard_config
from tests.listener.conftest import config_data

SUBJECT = "Hyper-V: 修复实例名的 unicode 问题 — naïve café"
HYPERV_FILES = {"nova/virt/hyperv/vmops.py": "# vmops\n"}


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


@pytest.fixture
def gerrit(tmp_path: Path) -> Iterator[tuple[SimGerrit, Path]]:
    key, public = make_client_identity(tmp_path / "client", "hyperv-ci")
    server = SimGerrit(tmp_path / "sim", users={"hyperv-ci": public}).start()
    yield server, key
    server.stop()


@pytest.fixture
def listener_config(gerrit: tuple[SimGerrit, Path], sqlite_url: str) -> Config:
    server, key = gerrit
    data = config_data(sqlite_url, host="127.0.0.1", port=server.port, key_file=str(key),
                       known_hosts=str(server.known_hosts_file), keepalive=5)
    # A short lease: the reaper's timer fires about every second.
    data["worker"] = {"lease_seconds": 6}
    return parse_config(data)


@pytest.fixture
def sessions(sqlite_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(sqlite_url)
    ensure_schema(engine)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture
def listening(listener_config: Config, gerrit: tuple[SimGerrit, Path],
              sessions: sessionmaker[Session]) -> Iterator[SimGerrit]:
    """`run_listener` on a thread (the test's own stop Event: no signal handler)."""
    stop = threading.Event()
    thread = threading.Thread(target=run_listener, args=(listener_config, stop))
    thread.start()
    server = gerrit[0]
    try:
        # Connected once a probe line gets stored (events before that are Gerrit's past).
        wait_for(lambda: _probe(server, sessions))
        yield server
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()


def _probe(server: SimGerrit, sessions: sessionmaker[Session]) -> bool:
    server.emit_raw('{"type":"ref-updated","refUpdate":{"refName":"refs/heads/probe"}}')
    time.sleep(0.1)
    with sessions() as session:
        return session.scalar(select(Event.id).where(Event.type == "ref-updated")) is not None


def _builds(sessions: sessionmaker[Session]) -> list[tuple[str, str]]:
    with sessions() as session:
        return [(job, state) for job, state in
                session.execute(select(Build.job, Build.state).order_by(Build.id))]


def test_the_listener_turns_an_upload_into_a_build(
        listening: SimGerrit, sessions: sessionmaker[Session]) -> None:
    listening.state.push("openstack/nova", files=HYPERV_FILES, subject=SUBJECT)
    listening.state.push("openstack/nova", files={"nova/compute/api.py": "x"})
    assert wait_for(lambda: _builds(sessions)) == [("hyperv-tempest", "queued")]

    def all_processed() -> bool:
        with sessions() as session:
            return session.scalar(select(Event.id).where(Event.processed_at.is_(None))) is None
    wait_for(all_processed)


def test_the_listener_reaps_a_dead_workers_build(
        listening: SimGerrit, sessions: sessionmaker[Session]) -> None:
    """The listener process runs a reaper: no worker is running here at all."""
    listening.state.push("openstack/nova", files=HYPERV_FILES, subject=SUBJECT)
    wait_for(lambda: _builds(sessions))
    with sessions() as session, session.begin():
        build = queue.claim_next(session, "dead-worker", 6)
        assert build is not None
        session.execute(update(Build).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    assert wait_for(lambda: _builds(sessions)[0][1] == BuildState.ERROR)
    # ... and its retry is queued.
    assert wait_for(lambda: len(_builds(sessions)) == 2)


DASHBOARD = """
import logging, sys
from ci.config import parse_config
from ci.app.processes import run_dashboard
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
data = {data!r}
run_dashboard(parse_config(data), "127.0.0.1", 0)
print("clean exit", flush=True)
"""


def _start_dashboard(tmp_path: Path, sqlite_url: str) -> tuple[subprocess.Popen[str], int]:
    data = make_dashboard_config(tmp_path).model_dump(mode="json")
    data["database"] = {"url": sqlite_url}  # an empty file: the process upgrades it
    proc = subprocess.Popen([sys.executable, "-c", DASHBOARD.format(data=data)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        found = re.search(r"dashboard serving on http://127\.0\.0\.1:(\d+)/", line)
        if found:
            return proc, int(found.group(1))
    proc.kill()
    raise AssertionError(f"the server never said where it listens: {proc.communicate()}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_the_dashboard_serves_until_a_signal(tmp_path: Path, sqlite_url: str,
                                             signum: int) -> None:
    proc, port = _start_dashboard(tmp_path, sqlite_url)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=10) as r:
            assert r.status == 200
            assert json.loads(r.read())["queued"] == []
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert out == "clean exit\n"
    assert "dashboard stopped" in err


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used, from its own counters."""
    fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_an_idle_dashboard_uses_almost_no_cpu(tmp_path: Path, sqlite_url: str) -> None:
    # waitress's loop once spun at a zero timeout: 29-74 % of a core while idle.
    proc, port = _start_dashboard(tmp_path, sqlite_url)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
            assert r.status == 200
        before = _cpu_seconds(proc.pid)
        time.sleep(10)
        used = _cpu_seconds(proc.pid) - before
        assert used < 0.2, f"idle dashboard used {used:.2f} s of CPU in 10 s"
    finally:
        proc.kill()
        proc.communicate()
