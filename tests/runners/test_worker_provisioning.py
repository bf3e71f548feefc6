"""The worker provisions checkpoint nodes while a runner that waits for them merges:
the two go on together, and whichever fails, the build ends as it must (a merge
conflict is the change's, a provisioning failure the CI's) and every node is
turned off and released.

Provisioning itself (WinRM to the parent host) is faked at `provision_build`
and `power_off_build`, the worker's seams to it; tests/runners/test_provision.py
and test_recovery_provisioned.py run the real thing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ci import nodes, queue
from ci.config import Config, parse_config
from ci.models import Build, BuildState, Node, NodeState, OfflineCause, Report
from runners import worker as worker_module
from runners.base import BuildContext, JobResult, Outcome, Runner
from runners.provision import ProvisionError
from runners.worker import Worker

NAMES = ("devstack-1", "hv-1", "hv-2")


def make_config(tmp_path: Path) -> Config:
    winrm = {"username": "u", "password": {"password_env": "X"}}
    return parse_config({
        "gerrit": {"host": "h", "username": "u", "key_file": "k", "known_hosts": "kh"},
        "projects": [{"name": "openstack/nova", "jobs": ["hyperv"]}],
        "jobs": {"hyperv": {"type": "devstack-hyperv", "hyperv_nodes": 2,
                            "image": "https://images.example.org/cirros.vhdx"}},
        "parent_hosts": [{"name": "parent-1", "address": "10.0.2.1", "winrm": winrm}],
        "nodes": [
            {"name": "devstack-1", "label": "devstack", "address": "10.0.0.1",
             "ssh": {"username": "u", "key_file": "k", "known_hosts": "kh"},
             "provision": "checkpoint", "parent": "parent-1"},
            *[{"name": f"hv-{i}", "label": "hyperv", "address": f"10.0.1.{i}", "winrm": winrm,
               "provision": "checkpoint", "parent": "parent-1"} for i in (1, 2)],
        ],
        "logs": {"dir": str(tmp_path / "logs"), "url": "http://logs.example.org/"},
        "worker": {"lease_seconds": 30, "max_attempts": 2},
    })


class Lab:
    """What the fake provisioning and the fake runner did, in order."""

    def __init__(self, fail: str | None = None) -> None:
        self.fail = fail  # the node whose revert fails
        self.events: list[str] = []
        self.merging = threading.Event()  # set once the runner has started its merge
        self.saw_merge_while_provisioning = False

    def provision_build(self, ctx: BuildContext, sessions: sessionmaker[Session]) -> None:
        # A revert takes a while: the merge starts meanwhile if the two overlap.
        # (Provisioned first, the merge only starts once this has returned.)
        self.saw_merge_while_provisioning = self.merging.wait(timeout=10)
        self.events.append("provisioned")
        if self.fail is not None:
            with sessions() as session, session.begin():
                nodes.mark_offline(session, self.fail, "revert failed",
                                   cause=OfflineCause.PROVISION_FAILED)
            raise ProvisionError(f"{self.fail}: reverting failed")

    def power_off_build(self, ctx: BuildContext, cleanup_failed: Sequence[str]) -> list[str]:
        self.events.append("powered-off")
        return list(cleanup_failed)


class MergingRunner(Runner[None]):
    """A devstack-hyperv-like runner: merges (no node needed), then waits for its nodes."""

    waits_for_nodes = True

    def __init__(self, lab: Lab, merge: Outcome | None = None) -> None:
        self.lab, self.merge = lab, merge

    def prepare(self, ctx: BuildContext) -> None:
        return None

    def run(self, ctx: BuildContext, prepared: None) -> JobResult:
        self.lab.events.append("merging")
        self.lab.merging.set()
        if self.merge is not None:
            return JobResult(self.merge, "Merge conflict: nova/virt/hyperv/vmops.py")
        ctx.nodes_ready()  # raises the provisioning's error
        self.lab.events.append("on the nodes")
        return JobResult(Outcome.SUCCEEDED, "all good")


@pytest.fixture
def run_build(sqlite_sessions: sessionmaker[Session], tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Build]]:
    config = make_config(tmp_path)
    with sqlite_sessions() as session, session.begin():
        nodes.sync_nodes(session, config.nodes, config.lab_sets)

    def run(lab: Lab, runner: Runner[None]) -> Build:
        monkeypatch.setattr(worker_module, "provision_build", lab.provision_build)
        monkeypatch.setattr(worker_module, "power_off_build", lab.power_off_build)
        with sqlite_sessions() as session, session.begin():
            patchset = queue.upsert_patchset(session, queue.ChangeInfo(
                number=10001, project="openstack/nova", branch="master", patchset=1,
                subject="Hyper-V: réglage « VHD »", owner_name="张伟"))
            assert queue.enqueue(session, patchset, "hyperv", "patchset-created") is not None
        assert Worker(config, sqlite_sessions, "w1", lambda c, j: runner).run_once()
        with sqlite_sessions() as session:
            build = session.scalars(select(Build).order_by(Build.id)).first()
            assert build is not None
            build.report  # noqa: B018 - loaded before the session closes
            return build

    yield run


def node_rows(sessions: sessionmaker[Session]) -> dict[str, tuple[str, str | None, int | None]]:
    with sessions() as session:
        return {n.name: (n.state, n.offline_cause, n.build_id)
                for n in session.scalars(select(Node))}


def test_the_merge_runs_while_the_nodes_are_reverted(
        run_build: Callable[..., Build], sqlite_sessions: sessionmaker[Session]) -> None:
    lab = Lab()
    build = run_build(lab, MergingRunner(lab))
    assert build.state == BuildState.SUCCEEDED
    assert lab.saw_merge_while_provisioning
    # The runner used its nodes only once they were ready, and they were turned off after.
    assert lab.events == ["merging", "provisioned", "on the nodes", "powered-off"]
    assert node_rows(sqlite_sessions) == {n: (NodeState.READY, None, None) for n in NAMES}


def test_a_provisioning_failure_is_the_ci_s_error_never_a_minus_one(
        run_build: Callable[..., Build], sqlite_sessions: sessionmaker[Session]) -> None:
    lab = Lab(fail="hv-2")
    build = run_build(lab, MergingRunner(lab))
    assert build.state == BuildState.ERROR
    assert "hv-2: reverting failed" in build.summary
    assert "on the nodes" not in lab.events
    assert lab.events[-1] == "powered-off"
    with sqlite_sessions() as session:
        retries = session.scalars(select(Build).where(Build.retry_of_id == build.id)).all()
        assert len(retries) == 1  # retried elsewhere, not reported
        assert session.scalars(select(Report)).all() == []
    rows = node_rows(sqlite_sessions)
    assert rows.pop("hv-2") == (NodeState.OFFLINE, OfflineCause.PROVISION_FAILED, None)
    assert rows == {n: (NodeState.READY, None, None) for n in ("devstack-1", "hv-1")}


def test_a_merge_conflict_is_the_change_s_even_when_provisioning_fails(
        run_build: Callable[..., Build], sqlite_sessions: sessionmaker[Session]) -> None:
    lab = Lab(fail="hv-1")
    build = run_build(lab, MergingRunner(lab, merge=Outcome.MERGE_CONFLICT))
    assert build.state == BuildState.MERGE_CONFLICT
    assert build.report is not None  # the change's fault: reported
    # The worker waited for the provisioning before turning the nodes off.
    assert lab.events == ["merging", "provisioned", "powered-off"]
    rows = node_rows(sqlite_sessions)
    assert rows.pop("hv-1") == (NodeState.OFFLINE, OfflineCause.PROVISION_FAILED, None)
    assert rows == {n: (NodeState.READY, None, None) for n in ("devstack-1", "hv-2")}


def test_a_runner_that_does_not_wait_gets_its_nodes_provisioned_first(
        run_build: Callable[..., Build]) -> None:
    lab = Lab()
    lab.merging.set()  # nothing to wait for: provisioning returns at once

    class Plain(MergingRunner):
        waits_for_nodes = False

    build = run_build(lab, Plain(lab))
    assert build.state == BuildState.SUCCEEDED
    assert lab.events == ["provisioned", "merging", "on the nodes", "powered-off"]
