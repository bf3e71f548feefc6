"""The demo's lab: provisioned Hyper-V nodes in two lab sets, one worker per set.

Two pushes are held in stack.sh (the lab's stack-wait fault) until both
controllers stack at once; then both builds finish, and each build's steps
begin with a `provision` step per node of its set (controller included).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from ci.app.demo import Demo, demo_config
from ci.app.processes import open_database
from ci.models import Build, BuildState, BuildStep
from sim.lab_sets import can_run_sets
from tests.test_end_to_end import BRANCH, sim, wait_for

ROOT = Path(__file__).resolve().parents[3]
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(can_run_sets(None) is not None, reason=str(can_run_sets(None)))]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    running = Demo(ROOT / "etc" / "demo.yaml", tmp_path_factory.mktemp("demo"),
                   dashboard_port=0)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def test_demo_config_carries_parent_hosts_and_lab_sets() -> None:
    raw = {"gerrit": {"username": "ci"}, "jobs": {}}
    parents = [{"name": "hv-parent-1"}]
    sets = [{"name": "set-1", "controller": "devstack-1", "hyperv": ["hv-1"]}]
    data = demo_config(raw, state_dir=Path("/tmp/x"), gerrit_port=1, key_file=Path("k"),
                       known_hosts=Path("kh"), git_root="file:///g", nodes=[],
                       job_overrides={}, dashboard_port=2, parent_hosts=parents, lab_sets=sets)
    assert data["parent_hosts"] == parents and data["lab_sets"] == sets
    bare = demo_config(raw, state_dir=Path("/tmp/x"), gerrit_port=1, key_file=Path("k"),
                       known_hosts=Path("kh"), git_root="file:///g", nodes=[],
                       job_overrides={}, dashboard_port=2)
    assert "parent_hosts" not in bare and "lab_sets" not in bare


def test_two_lab_sets_run_two_builds_at_once_in_the_demo(demo: Demo) -> None:
    assert demo.config is not None and demo.lab is not None
    assert [s.name for s in demo.config.lab_sets] == ["set-1", "set-2"]
    assert all(n.provisioned for n in demo.config.nodes)
    wait = demo.lab.faults_dir / "stack-wait"
    wait.write_text("", encoding="utf-8")
    logs = [demo.lab.state_dir / tree / "logs" / "stack.sh.log"
            for tree in ("devstack", "devstack-2")]
    try:
        for index in (1, 2):
            sim(demo, "push", "--project", "openstack/nova", "--branch", BRANCH,
                "--file", f"nova/virt/hyperv/vmops_{index}.py",
                "--subject", f"Hyper-V: lab set « {index} »", "--owner", "张伟")
        wait_for(lambda: all(p.exists() and "stack-wait" in p.read_text(encoding="utf-8")
                             for p in logs), 120, "both controllers stacking at once")
    finally:
        wait.unlink()
    database = open_database(demo.config)
    try:
        def finished() -> list[Build]:
            with database.sessions() as session:
                rows = list(session.scalars(select(Build).order_by(Build.id)))
                session.expunge_all()
            return rows if len(rows) == 2 and all(b.finished_at for b in rows) else []

        builds = wait_for(finished, 120, "both builds to finish")
        assert [b.state for b in builds] == [BuildState.SUCCEEDED] * 2
        sets = {tuple(sorted([s.controller, *s.hyperv])) for s in demo.config.lab_sets}
        with database.sessions() as session:
            for build in builds:
                steps = list(session.scalars(select(BuildStep).where(
                    BuildStep.build_id == build.id).order_by(BuildStep.id)))
                provision = [s for s in steps if s.name == "provision"]
                assert tuple(sorted(s.node or "" for s in provision)) in sets
                assert steps[:len(provision)] == provision  # before anything else
                assert all(s.state == "succeeded" for s in provision)
                power_off = sorted(s.node or "" for s in steps if s.name == "power-off")
                assert power_off == sorted(s.node or "" for s in provision)
        # Between builds every VM is off; the next build reverts it.
        assert demo.lab.parent is not None
        assert all(vm.state == "Off" for vm in demo.lab.parent.model.parent_vms.values())
    finally:
        database.engine.dispose()
