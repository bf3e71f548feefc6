"""ci.nodes on SQLite and PostgreSQL: atomic reservations, drain, health, offline, enable."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ci import node_recovery, nodes, queue
from ci.config import parse_config
from ci.models import Node, NodeState, OfflineCause


def node_configs() -> list:
    config = parse_config({
        "gerrit": {"host": "h", "username": "u", "key_file": "k", "known_hosts": "kh"},
        "projects": [{"name": "p", "jobs": ["j"]}],
        "jobs": {"j": {"type": "local", "command": ["true"]}},
        "nodes": [
            {"name": "devstack-1", "label": "devstack", "address": "10.0.0.1",
             "ssh": {"username": "u", "key_file": "k", "known_hosts": "kh"}},
            *[{"name": f"hv-{i}", "label": "hyperv", "address": f"10.0.1.{i}",
               "winrm": {"username": "u", "password": {"password_env": "X"}}} for i in (1, 2, 3)],
        ],
    })
    return list(config.nodes)


def builds(sessions: sessionmaker[Session], count: int) -> list[int]:
    ids = []
    with sessions() as session, session.begin():
        for i in range(count):
            ps = queue.upsert_patchset(session, queue.ChangeInfo(
                number=100 + i, project="p", branch="master", patchset=1))
            build = queue.enqueue(session, ps, "j", "test")
            assert build is not None
            ids.append(build.id)
    return ids


def synced(sessions: sessionmaker[Session]) -> None:
    with sessions() as session, session.begin():
        nodes.sync_nodes(session, node_configs())


def test_reserve_all_or_nothing(sessions: sessionmaker[Session]) -> None:
    synced(sessions)
    first, second = builds(sessions, 2)
    with sessions() as session, session.begin():
        got = nodes.reserve(session, first, ["devstack", "hyperv", "hyperv"])
        assert got is not None and sorted(n.name for n in got) == ["devstack-1", "hv-1", "hv-2"]
    with sessions() as session, session.begin():
        # Only hv-3 is left and no devstack: nothing may be taken.
        assert nodes.reserve(session, second, ["devstack", "hyperv"]) is None
    with sessions() as session:
        hv3 = session.scalar(select(Node).where(Node.name == "hv-3"))
        assert hv3 is not None and hv3.state == NodeState.READY and hv3.build_id is None


def test_release_returns_nodes_or_takes_failed_ones_offline(
    sessions: sessionmaker[Session],
) -> None:
    synced(sessions)
    (build_id,) = builds(sessions, 1)
    with sessions() as session, session.begin():
        nodes.reserve(session, build_id, ["devstack", "hyperv"])
    with sessions() as session, session.begin():
        nodes.release(session, build_id, failed=["hv-1"])
    with sessions() as session:
        states = {n.name: (n.state, n.offline_cause, n.message)
                  for n in session.scalars(select(Node))}
    assert states["hv-1"] == (NodeState.OFFLINE, OfflineCause.CLEANUP_FAILED,
                              f"cleanup failed after build {build_id}")
    assert states["devstack-1"] == (NodeState.READY, None, "")


def test_drained_and_offline_nodes_are_not_handed_out(sessions: sessionmaker[Session]) -> None:
    synced(sessions)
    (build_id,) = builds(sessions, 1)
    with sessions() as session, session.begin():
        assert nodes.set_drained(session, "hv-1", True)
        nodes.mark_offline(session, "hv-2", "unreachable", cause=OfflineCause.HEALTH_CHECK)
    with sessions() as session, session.begin():
        got = nodes.reserve(session, build_id, ["hyperv"])
        assert got is not None and [n.name for n in got] == ["hv-3"]


def test_health_checks_take_a_node_offline_and_back(sessions: sessionmaker[Session]) -> None:
    synced(sessions)
    with sessions() as session, session.begin():
        nodes.record_health(session, "hv-1", False, "WinRM refused")
    with sessions() as session, session.begin():
        node = nodes.record_health(session, "hv-1", False, "WinRM refused")
        assert node is not None and node.state == NodeState.OFFLINE
        assert node.offline_cause == OfflineCause.HEALTH_CHECK
    with sessions() as session, session.begin():
        node = nodes.record_health(session, "hv-1", True)
        assert node is not None and node.state == NodeState.READY
        assert node.offline_cause is None and node.health_failures == 0


def node_row(sessions: sessionmaker[Session], name: str) -> Node:
    with sessions() as session:
        node = session.scalar(select(Node).where(Node.name == name))
        assert node is not None
        session.expunge(node)
        return node


def test_health_checks_never_revive_a_node_they_did_not_take_offline(
    sessions: sessionmaker[Session],
) -> None:
    """A node left dirty by a build waits for an operator, however healthy it looks."""
    synced(sessions)
    (build_id,) = builds(sessions, 1)
    with sessions() as session, session.begin():
        nodes.reserve(session, build_id, ["hyperv"])
    with sessions() as session, session.begin():
        nodes.release(session, build_id, failed=["hv-1"])
        nodes.mark_offline(session, "hv-2", "worker w lost during build 9",
                          cause=OfflineCause.WORKER_LOST)
    for healthy in (True, False, False, True):
        with sessions() as session, session.begin():
            nodes.record_health(session, "hv-1", healthy, "WinRM refused")
            nodes.record_health(session, "hv-2", healthy, "WinRM refused")
    hv1, hv2 = node_row(sessions, "hv-1"), node_row(sessions, "hv-2")
    assert (hv1.state, hv1.offline_cause) == (NodeState.OFFLINE, OfflineCause.CLEANUP_FAILED)
    assert hv1.message == f"cleanup failed after build {build_id}"  # not a check's message
    assert (hv2.state, hv2.offline_cause) == (NodeState.OFFLINE, OfflineCause.WORKER_LOST)
    with sessions() as session, session.begin():
        assert [n.name for n in nodes.reserve(session, build_id, ["hyperv"]) or []] == ["hv-3"]


def test_enable_brings_any_offline_node_back(sessions: sessionmaker[Session]) -> None:
    synced(sessions)
    first, second = builds(sessions, 2)
    with sessions() as session, session.begin():
        nodes.reserve(session, first, ["hyperv"])
        nodes.reserve(session, second, ["hyperv"])
    with sessions() as session, session.begin():
        nodes.release(session, first, failed=["hv-1"])
        nodes.record_health(session, "hv-1", False, "WinRM refused")
        assert node_recovery.enable(session, "nope") is None
        with pytest.raises(node_recovery.NodeBusy, match=f"node 'hv-2' holds build {second}"):
            node_recovery.enable(session, "hv-2")
        node = node_recovery.enable(session, "hv-1")
        assert node is not None
    hv1, hv2 = node_row(sessions, "hv-1"), node_row(sessions, "hv-2")
    assert (hv1.state, hv1.offline_cause, hv1.health_failures, hv1.message) == (
        NodeState.READY, None, 0, "enabled by an operator")
    assert (hv2.state, hv2.build_id) == (NodeState.RESERVED, second)


def test_a_node_is_never_handed_to_two_builds(sessions: sessionmaker[Session]) -> None:
    """Six builds race for three Hyper-V nodes, two each: at most one wins any node."""
    synced(sessions)
    ids = builds(sessions, 6)
    winners: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(ids))

    def grab(build_id: int) -> None:
        barrier.wait()
        with sessions() as session, session.begin():
            if nodes.reserve(session, build_id, ["hyperv", "hyperv"]) is not None:
                with lock:
                    winners.append(build_id)

    threads = [threading.Thread(target=grab, args=(b,)) for b in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(winners) == 1
    with sessions() as session:
        holders = {n.build_id for n in session.scalars(select(Node).where(Node.label == "hyperv"))}
    assert holders <= {winners[0], None}
