"""Two lab sets run two builds at once: two real Workers against a simulated lab of
two sets (two controllers, four Hyper-V VMs on a parent host). Both builds are
seen stacking at the same time, each on the nodes of one set, and each build's
steps start with a `provision` step per node of its set (controller included)."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from ci.config import Config, parse_config
from ci.db import ensure_schema, make_engine, make_sessionmaker
from ci.models import Build, BuildState, BuildStep, Node
from runners import pool
from runners.worker import Worker
from sim.gerrit_state import GerritState
from sim.lab import SimLab
from sim.lab_sets import can_run_sets
from tests.runners.test_worker_devstack import PROJECT, SECRETS, enqueue_change

pytestmark = pytest.mark.skipif(can_run_sets(None) is not None,
                                reason=str(can_run_sets(None)))


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimLab]:
    for env, value in SECRETS.items():
        monkeypatch.setenv(env, value)
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    with SimLab(tmp_path / "lab", hyperv_nodes=2, use_sshd=True, provisioned=True,
                lab_sets=2) as started:
        yield started


def two_set_config(lab: SimLab, gerrit: GerritState, tmp_path: Path) -> Config:
    return parse_config({
        "database": {"url": f"sqlite:///{tmp_path / 'ci.db'}"},
        "gerrit": {"host": "127.0.0.1", "username": "ci", "key_file": "/nonexistent/key",
                   "known_hosts": "/nonexistent/known_hosts",
                   "git_url": gerrit.root.resolve().as_uri() + "/git/{project}.git"},
        "projects": [{"name": PROJECT, "jobs": ["hyperv"]}],
        "jobs": {"hyperv": {
            "type": "devstack-hyperv", **lab.job_overrides(),
            "stack_timeout": 60, "services_timeout": 5, "command_timeout": 30,
            "tempest": {"concurrency": 2, "timeout": 120}}},
        "nodes": lab.node_configs(), "parent_hosts": lab.parent_host_configs(),
        "lab_sets": lab.lab_set_configs(),
        "logs": {"dir": str(tmp_path / "logs"), "url": "http://logs.example.org/"},
        "reporter": {"enabled": False},
        "worker": {"lease_seconds": 30, "max_attempts": 1,
                   "git_cache_dir": str(tmp_path / "git-cache")},
    })


def test_two_lab_sets_run_two_builds_at_once(lab: SimLab, tmp_path: Path) -> None:
    gerrit = GerritState(tmp_path / "gerrit")
    config = two_set_config(lab, gerrit, tmp_path)
    engine = make_engine(config.database.url)
    ensure_schema(engine)
    sessions = make_sessionmaker(engine)
    with sessions() as session, session.begin():
        pool.sync_nodes(session, config.nodes, config.lab_sets)
    ids = [enqueue_change(sessions, gerrit) for _ in range(2)]
    wait = lab.faults_dir / "stack-wait"
    wait.write_text("", encoding="utf-8")
    workers = [Worker(config, sessions, name=f"worker-{i}") for i in (1, 2)]
    threads = [threading.Thread(target=w.run_once) for w in workers]
    for thread in threads:
        thread.start()
    logs = [lab.state_dir / "devstack" / "logs" / "stack.sh.log",
            lab.state_dir / "devstack-2" / "logs" / "stack.sh.log"]
    try:
        deadline = time.monotonic() + 60
        while not all(p.exists() and "stack-wait" in p.read_text(encoding="utf-8")
                      for p in logs):
            assert time.monotonic() < deadline, "both controllers never stacked at once"
            assert any(t.is_alive() for t in threads), "the builds ended before stacking"
            time.sleep(0.1)
        # Both builds are in stack.sh now, each holding one whole set.
        with sessions() as session:
            held = {n.name: (n.lab_set, n.build_id) for n in session.scalars(select(Node))}
        by_build = {b: {s for s, held_by in held.values() if held_by == b} for b in ids}
        assert sorted(map(sorted, by_build.values())) == [["set-1"], ["set-2"]], held
    finally:
        wait.unlink()
        for thread in threads:
            thread.join(timeout=90)
    with sessions() as session:
        finished = list(session.scalars(select(Build).order_by(Build.id)))
        assert [b.state for b in finished] == [BuildState.SUCCEEDED] * 2, [
            (b.state, b.summary) for b in finished]
        sets = {"set-1": ["devstack-1", "hv-1", "hv-3"], "set-2": ["devstack-2", "hv-2", "hv-4"]}
        for build in finished:
            steps = list(session.scalars(select(BuildStep).where(
                BuildStep.build_id == build.id).order_by(BuildStep.id)))
            provisioned = sorted(s.node or "" for s in steps[:3])
            assert [s.name for s in steps[:3]] == ["provision"] * 3
            assert provisioned in sets.values()
            assert sorted(s.node or "" for s in steps if s.name == "power-off") == provisioned
    assert lab.parent is not None
    assert all(lab.parent.vm(name).state == "Off"
               for name in ("devstack-1", "devstack-2", "hv-1", "hv-2", "hv-3", "hv-4"))
