"""runners/health.py against a real sshd and the simulated WinRM node."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ci.config import Config, NodeConfig, Secret, WinRMAccess, parse_config
from ci.models import Build, Change, Node, NodeState, OfflineCause, Patchset
from runners import pool
from runners.health import check_node, run_health_checks
from sim.sshd import OpenSSHServer, free_port
from sim.winrm import SimWinRMServer

WINRM_USER = "Administrator"
WINRM_PASSWORD = "s3cret-Password-42"
PASSWORD_ENV = "HYPERV_CI_TEST_HEALTH_WINRM_PASSWORD"


@pytest.fixture
def winrm_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimWinRMServer]:
    monkeypatch.setenv(PASSWORD_ENV, WINRM_PASSWORD)
    server = SimWinRMServer("hv-1", tmp_path / "lab", WINRM_USER, WINRM_PASSWORD)
    server.start()
    yield server
    server.stop()


def winrm_node(name: str, port: int, password_env: str = PASSWORD_ENV) -> NodeConfig:
    return NodeConfig(
        name=name, label="hyperv", address="127.0.0.1",
        winrm=WinRMAccess(scheme="http", port=port, transport="ntlm", username=WINRM_USER,
                          password=Secret(password_env=password_env),
                          operation_timeout=1, read_timeout=3),
    )


def down_ssh_node(sshd: OpenSSHServer, name: str) -> NodeConfig:
    good = sshd.node_config(name)
    assert good.ssh is not None
    return good.model_copy(update={"ssh": good.ssh.model_copy(update={"port": free_port()})})


def make_config(nodes: list[NodeConfig], tmp_path: Path) -> Config:
    data = {
        "gerrit": {"host": "127.0.0.1", "username": "ci", "key_file": str(tmp_path / "k"),
                   "known_hosts": str(tmp_path / "kh")},
        "projects": [{"name": "openstack/nova", "jobs": ["unit"]}],
        "jobs": {"unit": {"type": "local", "command": ["true"]}},
    }
    config = parse_config(data)
    return config.model_copy(update={"nodes": nodes})


def node_row(sessions: sessionmaker[Session], name: str) -> Node:
    with sessions() as session:
        node = session.scalar(select(Node).where(Node.name == name))
        assert node is not None
        session.expunge(node)
        return node


def test_ssh_node_healthy(sshd: OpenSSHServer) -> None:
    healthy, message = check_node(sshd.node_config("devstack-1"), timeout=10)
    assert healthy, message


def test_ssh_node_down_is_unhealthy_not_an_exception(sshd: OpenSSHServer) -> None:
    healthy, message = check_node(down_ssh_node(sshd, "devstack-9"), timeout=5)
    assert not healthy
    assert "ExecutorError" in message


def test_winrm_node_healthy_and_script_parsed(winrm_server: SimWinRMServer) -> None:
    healthy, message = check_node(winrm_node("hv-1", winrm_server.port), timeout=10)
    assert healthy, message
    assert message.startswith("winrm ok")
    steps = [step for _node, step, _text in winrm_server.scripts]
    assert "health" in steps


def test_winrm_node_killed_is_unhealthy(winrm_server: SimWinRMServer) -> None:
    winrm_server.kill()
    healthy, message = check_node(winrm_node("hv-1", winrm_server.port), timeout=5)
    assert not healthy
    assert WINRM_PASSWORD not in message


def test_winrm_missing_password_is_unhealthy(winrm_server: SimWinRMServer) -> None:
    node = winrm_node("hv-1", winrm_server.port, password_env="HYPERV_CI_TEST_UNSET_VARIABLE")
    healthy, message = check_node(node, timeout=5)
    assert not healthy
    assert "HYPERV_CI_TEST_UNSET_VARIABLE" in message


def test_run_health_checks_records_and_takes_offline(
    sshd: OpenSSHServer, winrm_server: SimWinRMServer, tmp_path: Path,
    sqlite_sessions: sessionmaker[Session],
) -> None:
    nodes = [sshd.node_config("devstack-1"), down_ssh_node(sshd, "devstack-2"),
             winrm_node("hv-1", winrm_server.port)]
    config = make_config(nodes, tmp_path)
    with sqlite_sessions() as session, session.begin():
        pool.sync_nodes(session, config.nodes)

    first = run_health_checks(config, sqlite_sessions, timeout=5)
    assert {name: ok for name, (ok, _msg) in first.items()} == {
        "devstack-1": True, "devstack-2": False, "hv-1": True}
    assert node_row(sqlite_sessions, "devstack-2").state == NodeState.READY  # one miss is noise

    run_health_checks(config, sqlite_sessions, timeout=5)
    down = node_row(sqlite_sessions, "devstack-2")
    assert down.state == NodeState.OFFLINE
    assert down.health_failures == 2
    assert node_row(sqlite_sessions, "devstack-1").state == NodeState.READY
    assert node_row(sqlite_sessions, "hv-1").last_checked_at is not None


def test_nodes_held_by_a_build_are_not_checked(
    sshd: OpenSSHServer, tmp_path: Path, sqlite_sessions: sessionmaker[Session],
) -> None:
    nodes = [down_ssh_node(sshd, "devstack-1")]
    config = make_config(nodes, tmp_path)
    with sqlite_sessions() as session, session.begin():
        pool.sync_nodes(session, config.nodes)
        change = Change(number=10001, project="openstack/nova", branch="master")
        patchset = Patchset(change=change, number=1)
        build = Build(patchset=patchset, job="unit")
        session.add_all([change, patchset, build])
        session.flush()
        assert pool.reserve(session, build.id, ["devstack"])

    assert run_health_checks(config, sqlite_sessions, timeout=5) == {}
    assert node_row(sqlite_sessions, "devstack-1").health_failures == 0


def test_health_checks_revive_only_their_own_offline_nodes(
    sshd: OpenSSHServer, winrm_server: SimWinRMServer, tmp_path: Path,
    sqlite_sessions: sessionmaker[Session],
) -> None:
    """Every node answers; only the one health checks took offline comes back.

    A node a lost worker left is not checked: the recovery checks it after cleaning it."""
    nodes = [sshd.node_config("devstack-1"), sshd.node_config("devstack-2"),
             winrm_node("hv-1", winrm_server.port)]
    config = make_config(nodes, tmp_path)
    with sqlite_sessions() as session, session.begin():
        pool.sync_nodes(session, config.nodes)
        change = Change(number=10002, project="openstack/nova", branch="master")
        build = Build(patchset=Patchset(change=change, number=1), job="unit")
        session.add_all([change, build])
        session.flush()
        assert pool.reserve(session, build.id, ["devstack"])
        pool.release(session, build.id, failed=["devstack-1"])
        pool.mark_offline(session, "devstack-2", "unreachable", cause=OfflineCause.HEALTH_CHECK)
        pool.mark_offline(session, "hv-1", "worker w-1 lost during build 7",
                          cause=OfflineCause.WORKER_LOST)

    results = run_health_checks(config, sqlite_sessions, timeout=10)
    assert {name: ok for name, (ok, _msg) in results.items()} == {
        "devstack-1": True, "devstack-2": True}
    dirty, lost = node_row(sqlite_sessions, "devstack-1"), node_row(sqlite_sessions, "hv-1")
    assert (dirty.state, dirty.offline_cause) == (NodeState.OFFLINE, OfflineCause.CLEANUP_FAILED)
    assert dirty.message.startswith("cleanup failed after build")
    assert (lost.state, lost.offline_cause) == (NodeState.OFFLINE, OfflineCause.WORKER_LOST)
    assert lost.message == "worker w-1 lost during build 7"
    revived = node_row(sqlite_sessions, "devstack-2")
    assert (revived.state, revived.offline_cause) == (NodeState.READY, None)
    assert revived.message == "back online after a health check"


def test_n_workers_make_one_round_of_checks_per_interval(
    winrm_server: SimWinRMServer, tmp_path: Path, sqlite_sessions: sessionmaker[Session],
) -> None:
    """Four workers for a few intervals: the node sees one check per interval, not four."""
    import threading
    import time

    from runners.worker import Worker

    config = make_config([winrm_node("hv-1", winrm_server.port)], tmp_path)
    config = config.model_copy(update={"worker": config.worker.model_copy(
        update={"health_interval": 1, "poll_interval": 0.2})})
    stop = threading.Event()
    threads = [threading.Thread(target=Worker(config, sqlite_sessions, name=f"w{i}").run,
                                args=(stop,), daemon=True) for i in range(4)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    stop.wait(6)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    elapsed = time.monotonic() - started
    checks = [name for _n, name, _t in winrm_server.scripts if name == "health"]
    # At most one per interval elapsed (plus the one in flight); four workers
    # each checking every interval would make about four times as many.
    assert 2 <= len(checks) <= elapsed / config.worker.health_interval + 1, len(checks)
