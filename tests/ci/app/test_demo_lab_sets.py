"""The demo's lab: provisioned nodes in two lab sets, one worker per set.

Two pushes are held in stack.sh (the lab's stack-wait fault) until both
controllers stack at once; by then each build holds one whole set and has
passed a `provision` step per node of it, before any other step. (A whole
provisioned build, power-off steps included, is in
tests/runners/test_recovery_provisioned.py and test_provision.py.)
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
    database = open_database(demo.config)
    try:
        for index in (1, 2):
            sim(demo, "push", "--project", "openstack/nova", "--branch", BRANCH,
                "--file", f"nova/virt/hyperv/vmops_{index}.py",
                "--subject", f"Hyper-V: lab set « {index} »", "--owner", "张伟")
        wait_for(lambda: all(p.exists() and "stack-wait" in p.read_text(encoding="utf-8")
                             for p in logs), 120, "both controllers stacking at once")
        # Both builds are in stack.sh now, each on one whole set, each past its
        # provision steps (one per node of its set; they run beside the merge,
        # and are all done before devstack starts).
        sets = {tuple(sorted([s.controller, *s.hyperv])) for s in demo.config.lab_sets}
        with database.sessions() as session:
            builds = list(session.scalars(select(Build).order_by(Build.id)))
            assert [b.state for b in builds] == [BuildState.RUNNING] * 2
            seen = set()
            for build in builds:
                steps = list(session.scalars(select(BuildStep).where(
                    BuildStep.build_id == build.id).order_by(BuildStep.id)))
                provision = [s for s in steps if s.name == "provision"]
                nodes = tuple(sorted(s.node or "" for s in provision))
                devstack = [s for s in steps if s.name == "devstack"]
                assert nodes in sets and devstack
                assert all(p.id < devstack[0].id for p in provision)
                assert all(s.state == "succeeded" for s in provision)
                seen.add(nodes)
            assert seen == sets
        assert demo.lab.parent is not None
        assert all(vm.state == "Running" for vm in demo.lab.parent.model.parent_vms.values())
    finally:
        wait.unlink()
        database.engine.dispose()
