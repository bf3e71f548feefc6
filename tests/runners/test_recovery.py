"""A lab that heals itself: real `hyperv-ci worker` processes against the simulated lab.

A worker is killed with SIGKILL while its build hangs in stack.sh (the lab's
`faults/stack-hang`); nobody touches the nodes afterwards. The reaper of
another worker reaps the build, that worker cleans the nodes (the dead
build's stack.sh is ended on the controller), checks them, puts them back,
and the retry build runs on them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ci import queue
from ci.app.cli import main
from ci.config import load_config
from ci.db import ensure_schema, make_engine, make_sessionmaker
from ci.models import Build, BuildState, Node, NodeState, OfflineCause, utcnow
from runners import pool
from runners.recovery import recover_nodes
from sim.gerrit_state import GerritState
from sim.lab import SimLab

PROJECT = "openstack/nova"
BRANCH = "unmaintained/2023.1"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[SimLab]:
    with SimLab(tmp_path / "lab", hyperv_nodes=2, use_sshd=True) as started:
        yield started


def write_config(lab: SimLab, gerrit: GerritState, tmp_path: Path, **worker: Any) -> Path:
    data = {
        "database": {"url": f"sqlite:///{tmp_path / 'ci.db'}"},
        "gerrit": {"host": "127.0.0.1", "username": "ci", "key_file": "/nonexistent/key",
                   "known_hosts": "/nonexistent/known_hosts",
                   "git_url": gerrit.root.resolve().as_uri() + "/git/{project}.git"},
        "projects": [{"name": PROJECT, "jobs": ["hyperv"]}],
        "jobs": {"hyperv": {
            "type": "devstack-hyperv", **lab.job_overrides(),
            "stack_timeout": 600, "services_timeout": 5, "command_timeout": 60,
            "tempest": {"concurrency": 2, "timeout": 120}}},
        "nodes": lab.node_configs(),
        "logs": {"dir": str(tmp_path / "logs"), "url": "http://logs.example.org/"},
        "reporter": {"enabled": False},
        "worker": {"lease_seconds": 10, "max_attempts": 3, "poll_interval": 0.2,
                   "health_interval": 2, "git_cache_dir": str(tmp_path / "git-cache"),
                   **worker},
    }
    path = tmp_path / "hyperv-ci.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def sessions_for(tmp_path: Path) -> sessionmaker[Session]:
    engine = make_engine(f"sqlite:///{tmp_path / 'ci.db'}")
    ensure_schema(engine)
    return make_sessionmaker(engine)


def enqueue_change(sessions: sessionmaker[Session], gerrit: GerritState) -> int:
    pushed = gerrit.push(PROJECT, branch=BRANCH, files={"nova/virt/hyperv/vmops.py": "# 实例\n"},
                         subject="Hyper-V: réparer « VHD »", owner="张伟")
    with sessions() as session, session.begin():
        patchset = queue.upsert_patchset(session, queue.ChangeInfo(
            number=int(pushed["change"]), project=PROJECT, branch=BRANCH,
            patchset=int(pushed["patchset"]), ref=str(pushed["ref"]),
            revision=str(pushed["revision"])))
        build = queue.enqueue(session, patchset, "hyperv", "patchset-created")
        assert build is not None
        return build.id


def start_worker(config: Path, name: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "ci.app.cli", "-c", str(config), "worker", "--name", name],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def controller_processes(root: Path) -> dict[int, str]:
    """Processes of the simulated controller: running in, or from, its tree."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            args = (proc / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(proc / "cwd")
        except (OSError, IndexError):
            continue
        if state == "Z":
            continue
        text = " ".join(a.decode(errors="replace") for a in args)
        if cwd.startswith(str(root)) or str(root) in text:
            found[int(proc.name)] = text
    return found


def wait_for(what: str, predicate: Callable[[], Any], timeout: float,
             logs: list[Path]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    tails = "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-6000:]}" for p in logs
                      if p.exists())
    pytest.fail(f"timed out waiting for {what}\n{tails}")


def builds(sessions: sessionmaker[Session]) -> list[Build]:
    with sessions() as session:
        rows = list(session.scalars(select(Build).order_by(Build.id)))
        session.expunge_all()
        return rows


def nodes(sessions: sessionmaker[Session]) -> dict[str, Node]:
    with sessions() as session:
        rows = {n.name: n for n in session.scalars(select(Node))}
        session.expunge_all()
        return rows


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_a_killed_worker_s_nodes_are_cleaned_checked_and_serve_the_retry(
        lab: SimLab, tmp_path: Path) -> None:
    gerrit = GerritState(tmp_path / "gerrit")
    config = write_config(lab, gerrit, tmp_path)
    sessions = sessions_for(tmp_path)
    first_id = enqueue_change(sessions, gerrit)
    (lab.faults_dir / "stack-hang").write_text("", encoding="utf-8")
    root = lab.state_dir / "devstack"
    logs = [tmp_path / "worker-a.log", tmp_path / "worker-b.log"]

    def hanging_stack() -> dict[int, str]:
        return {pid: args for pid, args in controller_processes(root).items()
                if "sim.devstack_node.stack stack" in args}

    def hung() -> dict[int, str]:
        # Once its last line is out it only sleeps (a line written after the
        # worker died would end it by SIGPIPE, which a real hang need not do).
        log = root / "logs" / "stack.sh.log"
        said = log.exists() and "wait_for_service" in log.read_text(encoding="utf-8")
        return hanging_stack() if said else {}

    doomed = start_worker(config, "worker-a", logs[0])
    survivor = None
    try:
        stack = wait_for("stack.sh to hang", hung, 180, logs)
        doomed.send_signal(signal.SIGKILL)  # the worker, not its session: nothing else
        doomed.wait(timeout=10)
        # The real sshd leaves a command of a dead client running: this is what
        # the recovery has to end.
        time.sleep(1)
        assert set(stack) <= set(hanging_stack())
        (lab.faults_dir / "stack-hang").unlink()

        survivor = start_worker(config, "worker-b", logs[1])
        wait_for("the retry to succeed",
                 lambda: any(b.retry_of_id == first_id and b.state == BuildState.SUCCEEDED
                             for b in builds(sessions)), 300, logs)
    finally:
        if doomed.poll() is None:
            doomed.kill()
        if survivor is not None:
            stop(survivor)

    first, retry = builds(sessions)
    assert first.state == BuildState.ERROR
    assert first.summary == "worker worker-a stopped renewing its lease"
    assert retry.attempt == 2 and retry.worker == "worker-b"
    # Unattended: every node is back, and says what happened to it.
    rows = nodes(sessions)
    assert {name: (n.state, n.offline_cause, n.build_id, n.dirty_build_id)
            for name, n in rows.items()} == {
        name: (NodeState.READY, None, None, None) for name in ("devstack-1", "hv-1", "hv-2")}
    # No process of the dead build is left on the controller (nor of the retry).
    assert not set(stack) & set(controller_processes(root))
    assert controller_processes(root) == {}
    log = logs[1].read_text(errors="replace")
    for name in ("devstack-1", "hv-1", "hv-2"):
        assert f"node {name} back in service: cleaned and checked after build {first_id}" in log
    assert "ending process group" in log  # cleanup.sh's own words, in the worker's log


def test_a_node_whose_recovery_cleanup_fails_stays_offline_with_the_reason(
        lab: SimLab, tmp_path: Path) -> None:
    """Driven in-process: the reaper, then one recovery pass; then `nodes enable`."""
    gerrit = GerritState(tmp_path / "gerrit")
    config = load_config(write_config(lab, gerrit, tmp_path))
    sessions = sessions_for(tmp_path)
    build_id = enqueue_change(sessions, gerrit)
    with sessions() as session, session.begin():
        pool.sync_nodes(session, config.nodes)
        assert queue.claim_next(session, "gone", 5, reserve=pool.PoolReserver(config))
        assert queue.reap_expired(session, 3, now=utcnow() + timedelta(seconds=60))
    lab.winrm["hv-2"].faults.set("cleanup", exit_code=1, stderr="Stop-Service: access denied")

    verdicts = recover_nodes(config, sessions, "worker-b")

    assert {name: v.ready for name, v in verdicts.items()} == {
        "devstack-1": True, "hv-1": True, "hv-2": False}
    rows = nodes(sessions)
    assert rows["hv-2"].state == NodeState.OFFLINE
    assert rows["hv-2"].offline_cause == OfflineCause.CLEANUP_FAILED
    assert rows["hv-2"].dirty_build_id == build_id  # what `nodes enable` cleans up after
    assert rows["hv-2"].message.startswith(f"cleanup after build {build_id} failed: exit 1")
    assert "access denied" in rows["hv-2"].message
    assert rows["devstack-1"].state == rows["hv-1"].state == NodeState.READY
    # A second pass finds nothing to do: the failed node waits for an operator.
    assert recover_nodes(config, sessions, "worker-b") == {}

    # `nodes enable` cleans and checks again: refused while the cleanup fails...
    cli = CliRunner()
    refused = cli.invoke(main, ["-c", str(tmp_path / "hyperv-ci.yaml"), "nodes", "enable",
                                "hv-2"])
    assert refused.exit_code == 1, refused.output
    assert "not enabled (cleanup-failed)" in refused.output
    assert "access denied" in refused.output
    row = nodes(sessions)["hv-2"]
    assert (row.state, row.offline_cause) == (NodeState.OFFLINE, OfflineCause.CLEANUP_FAILED)
    assert row.message.startswith("`nodes enable` refused: cleanup after build")
    # ...accepted once the node cleans up.
    lab.winrm["hv-2"].faults.clear("cleanup")
    accepted = cli.invoke(main, ["-c", str(tmp_path / "hyperv-ci.yaml"), "nodes", "enable",
                                 "hv-2"])
    assert accepted.exit_code == 0, accepted.output
    assert "enabled by an operator: cleaned and checked after build" in accepted.output
    row = nodes(sessions)["hv-2"]
    assert (row.state, row.offline_cause, row.dirty_build_id) == (NodeState.READY, None, None)
