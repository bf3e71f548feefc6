"""Checkpoint provisioning against a simulated parent Hyper-V host over real WinRM:
revert wipes what a build left, a VM that is off does not answer, the node must
answer as itself, and every failure is a ProvisionError naming the cause."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ci import nodes
from ci.changes import ChangeInfo
from ci.config import Config, NodeConfig, parse_config
from ci.models import Build, BuildStep, Change, Node, NodeState, OfflineCause, Patchset
from runners import provision
from runners.base import BuildContext, ExecutorError
from runners.ps_check import check_script
from runners.steps import StepRecorder
from runners.winrm import WinRMExecutor
from sim.hyperv_parent import SimParentHost
from sim.winrm import SimWinRMServer

USER, PASSWORD_ENV = "Administrator", "HYPERV_CI_TEST_PROVISION_PW"
MARKER = "hv-1 clean, 2026-12-01 — ü"


@dataclass
class Lab:
    parent: SimParentHost
    guest: SimWinRMServer
    config: Config

    @property
    def node(self) -> NodeConfig:
        return self.config.nodes[0]


def winrm(server: SimWinRMServer) -> dict:
    return {"scheme": "http", "port": server.port, "username": USER,
            "password": {"password_env": PASSWORD_ENV}, "operation_timeout": 2,
            "read_timeout": 5}


def lab_config(parent: SimParentHost, guest: SimWinRMServer, **node: object) -> Config:
    return parse_config({
        "gerrit": {"host": "h", "username": "u", "key_file": "k", "known_hosts": "kh"},
        "projects": [{"name": "p", "jobs": ["j"]}],
        "jobs": {"j": {"type": "local", "command": ["true"]}},
        "parent_hosts": [{"name": "hv-parent-1", "address": "127.0.0.1",
                          "winrm": winrm(parent.server)}],
        "nodes": [{"name": "hv-1", "label": "hyperv", "address": "127.0.0.1",
                   "winrm": winrm(guest), "provision": "checkpoint", "parent": "hv-parent-1",
                   "marker": MARKER, **node}],
    })


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SimParentHost,
                                                                  SimWinRMServer]]:
    os.environ[PASSWORD_ENV] = "pärent-Pw-1"
    lab_dir = tmp_path_factory.mktemp("lab")
    guest = SimWinRMServer("hv-1", lab_dir, USER, os.environ[PASSWORD_ENV]).start()
    parent = SimParentHost("hv-parent-1", lab_dir, USER, os.environ[PASSWORD_ENV]).start()
    parent.add_vm(guest, marker=(provision.WINDOWS_MARKER_PATH, MARKER))
    yield parent, guest
    parent.stop()
    guest.stop()


@pytest.fixture
def lab(sim: tuple[SimParentHost, SimWinRMServer]) -> Lab:
    parent, guest = sim
    parent.vm("hv-1").start()  # whatever the last test left
    return Lab(parent, guest, lab_config(parent, guest))


@dataclass
class Step:
    """The two StepHandle methods provisioning writes to."""

    lines: list[str] = field(default_factory=list)

    def log(self, line: str) -> None:
        self.lines.append(line)

    def write(self, text: str) -> None:
        self.lines.append(text)


def put(node: NodeConfig, path: str, data: bytes) -> None:
    executor = WinRMExecutor(node)
    try:
        executor.put(data, path)
    finally:
        executor.close()


def test_revert_discards_what_a_build_left(lab: Lab) -> None:
    put(lab.node, "C:\\OpenStack\\leftover.txt", b"from the last build")
    lab.guest.model.services["nova-compute"] = "Running"
    step = Step()
    provision.provision_node(lab.config, lab.node, step, answer_timeout=10)
    assert lab.guest.model.read_file("C:\\OpenStack\\leftover.txt") is None
    assert "nova-compute" not in lab.guest.model.services
    assert lab.parent.vm("hv-1").state == "Running"
    assert lab.parent.model.operations[-1] == ("revert", "hv-1")
    assert any(f"marker {MARKER!r}" in line for line in step.lines)
    # The scripts that reached the parent passed Microsoft's cmdlet catalog.
    parent_scripts = [text for _, name, text in lab.parent.model.scripts
                      if name == "provision-revert"]
    assert parent_scripts and check_script(parent_scripts[-1]) == []


def test_a_vm_turned_off_does_not_answer_until_started(lab: Lab) -> None:
    provision.power_off(lab.config, lab.node)
    assert lab.parent.vm("hv-1").state == "Off"
    with pytest.raises(ExecutorError):
        provision.probe_identity(lab.node)
    ok, message = provision.check_provisioned(lab.config, lab.node)
    assert ok and "is Off" in message
    provision.provision_node(lab.config, lab.node, Step(), answer_timeout=10)
    assert provision.probe_identity(lab.node).host_name == "HV-1"


def test_a_missing_checkpoint_is_refused_before_anything_changes(lab: Lab) -> None:
    config = lab_config(lab.parent, lab.guest, checkpoint="no-such-checkpoint")
    put(lab.node, "C:\\OpenStack\\kept.txt", b"x")
    with pytest.raises(provision.ProvisionError,
                       match="Unable to find a snapshot matching the given criteria"):
        provision.provision_node(config, config.nodes[0], Step(), answer_timeout=10)
    assert lab.parent.vm("hv-1").state == "Running"
    assert lab.guest.model.read_file("C:\\OpenStack\\kept.txt") == b"x"
    ok, message = provision.check_provisioned(config, config.nodes[0])
    assert not ok and "Unable to find a snapshot" in message


def test_an_unknown_vm_is_refused(lab: Lab) -> None:
    config = lab_config(lab.parent, lab.guest, vm="hv-9")
    with pytest.raises(provision.ProvisionError,
                       match='unable to find a virtual machine with name "hv-9"'):
        provision.provision_node(config, config.nodes[0], Step(), answer_timeout=10)


def test_a_node_that_answers_with_another_marker_is_refused(lab: Lab) -> None:
    config = lab_config(lab.parent, lab.guest, marker="a newer checkpoint")
    with pytest.raises(provision.ProvisionError, match="is not the clean one"):
        provision.provision_node(config, config.nodes[0], Step(), answer_timeout=10)


def test_a_node_that_never_answers_times_out(lab: Lab, tmp_path: Path) -> None:
    # The node's address points at a port nothing listens on.
    dead = SimWinRMServer("hv-dead", tmp_path, USER, os.environ[PASSWORD_ENV]).start()
    port = dead.port
    dead.stop()
    config = lab_config(lab.parent, lab.guest)
    node = config.nodes[0].model_copy(update={
        "winrm": config.nodes[0].winrm.model_copy(update={"port": port})})  # type: ignore[union-attr]
    with pytest.raises(provision.ProvisionError, match="did not answer within 1 s"):
        provision.wait_until_answers(node, Step().log, timeout=1, poll=0.2)


@pytest.mark.parametrize(("host", "marker", "problem"), [
    ("HV-1", MARKER, None),
    ("hv-1.lab.example.org", MARKER, None),
    ("HV-2", MARKER, "answered as host 'HV-2', not 'hv-1'"),
    ("HV-1", None, "has no marker file"),
    ("HV-1", "old", "has marker 'old'"),
])
def test_identity_problem(host: str, marker: str | None, problem: str | None) -> None:
    node = NodeConfig(name="hv-1", label="hyperv", address="x", provision="checkpoint",
                      parent="p", marker=MARKER,
                      winrm={"username": "u", "password": {"password_env": "X"}})  # type: ignore[arg-type]
    found = provision.identity_problem(node, provision.Identity(host, marker))
    assert (found is None) if problem is None else (found is not None and problem in found)


def test_parse_identity_takes_the_first_of_each() -> None:
    found = provision.parse_identity("host=HV-1\r\nmarker= ü clean \r\nhost=other\r\n")
    assert found == provision.Identity("HV-1", "ü clean")


def test_the_scripts_quote_what_they_are_given() -> None:
    script = provision.render("provision-revert.ps1.j2", vm="hv'1; Remove-VM *",
                              checkpoint="clean ‘x’")
    assert "$VMName = 'hv''1; Remove-VM *'" in script
    assert check_script(script) == []


def _build_ctx(config: Config, sessions: sessionmaker[Session], tmp_path: Path) -> BuildContext:
    """A build holding the lab's node, as the worker's claim leaves it."""
    with sessions() as session, session.begin():
        nodes.sync_nodes(session, config.nodes)
        change = Change(number=4242, project="p", branch="master", subject="Zoë « x »",
                        owner_name="张伟")
        patchset = Patchset(change=change, number=1, ref="refs/changes/42/4242/1",
                            revision="0" * 40)
        build = Build(patchset=patchset, job="j")
        session.add_all([change, patchset, build])
        session.flush()
        assert nodes.reserve(session, build.id, ["hyperv"]) is not None
        build_id = build.id
    info = ChangeInfo(project="p", branch="master", number=4242, patchset=1)
    return BuildContext(build_id=build_id, job_name="j", change=info, config=config,
                        log_dir=tmp_path, log_url="http://logs.example/",
                        steps=StepRecorder(sessions, build_id, tmp_path / "steps"),
                        nodes=list(config.nodes))


def _steps(sessions: sessionmaker[Session], build_id: int) -> list[tuple[str, str | None, str]]:
    with sessions() as session:
        return [(s.name, s.node, s.state) for s in session.scalars(
            select(BuildStep).where(BuildStep.build_id == build_id).order_by(BuildStep.id))]


def test_a_build_s_provision_and_power_off_steps(
        lab: Lab, sqlite_sessions: sessionmaker[Session], tmp_path: Path) -> None:
    sessions = sqlite_sessions  # the node transitions are tested on both engines elsewhere
    ctx = _build_ctx(lab.config, sessions, tmp_path)
    provision.provision_build(ctx, sessions, answer_timeout=10)
    assert provision.power_off_build(ctx, ["hv-1"]) == []  # its own cleanup does not matter
    assert _steps(sessions, ctx.build_id) == [("provision", "hv-1", "succeeded"),
                                             ("power-off", "hv-1", "succeeded")]
    assert lab.parent.vm("hv-1").state == "Off"
    log = (tmp_path / "steps" / "01-provision-hv-1.log").read_text(encoding="utf-8")
    assert "reverted to checkpoint clean and started" in log


def test_a_failed_revert_takes_the_node_offline_and_errors_the_build(
        lab: Lab, sqlite_sessions: sessionmaker[Session], tmp_path: Path) -> None:
    sessions = sqlite_sessions
    config = lab_config(lab.parent, lab.guest, checkpoint="gone")
    ctx = _build_ctx(config, sessions, tmp_path)
    with pytest.raises(provision.ProvisionError, match="Unable to find a snapshot"):
        provision.provision_build(ctx, sessions, answer_timeout=10)
    assert _steps(sessions, ctx.build_id) == [("provision", "hv-1", "error")]
    with sessions() as session, session.begin():
        nodes.release(session, ctx.build_id)
    with sessions() as session:
        row = session.scalar(select(Node).where(Node.name == "hv-1"))
        assert row is not None and row.build_id is None
        assert (row.state, row.offline_cause) == (NodeState.OFFLINE,
                                                  OfflineCause.PROVISION_FAILED)
        assert f"provisioning for build {ctx.build_id} failed" in row.message
        assert "Unable to find a snapshot" in row.message


def test_health_checks_ask_the_parent_for_a_vm_that_is_off(
        lab: Lab, sqlite_sessions: sessionmaker[Session]) -> None:
    from runners.health import run_health_checks

    with sqlite_sessions() as session, session.begin():
        nodes.sync_nodes(session, lab.config.nodes)
    provision.power_off(lab.config, lab.node)
    results = run_health_checks(lab.config, sqlite_sessions, timeout=5)
    assert results == {"hv-1": (True, "VM hv-1 is Off; checkpoint clean present")}
    broken = lab_config(lab.parent, lab.guest, vm="hv-9")
    results = run_health_checks(broken, sqlite_sessions, timeout=5)
    assert not results["hv-1"][0] and "unable to find a virtual machine" in results["hv-1"][1]


def test_nodes_enable_brings_back_a_node_whose_provisioning_failed(
        lab: Lab, sqlite_sessions: sessionmaker[Session]) -> None:
    from runners.recovery import enable_node

    with sqlite_sessions() as session, session.begin():
        nodes.sync_nodes(session, lab.config.nodes)
        nodes.mark_offline(session, "hv-1", "provisioning for build 7 failed: x",
                           cause=OfflineCause.PROVISION_FAILED)
    verdict = enable_node(lab.config, sqlite_sessions, "hv-1")
    assert verdict.ready, verdict.message
    assert "VM turned off" in verdict.message or "is Off" in verdict.message
    assert lab.parent.vm("hv-1").state == "Off"
    with sqlite_sessions() as session:
        row = session.scalar(select(Node).where(Node.name == "hv-1"))
        assert row is not None and (row.state, row.offline_cause) == (NodeState.READY, None)
