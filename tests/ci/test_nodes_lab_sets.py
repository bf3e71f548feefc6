"""Lab sets in the pool (SQLite and PostgreSQL): a build gets the nodes of one set,
two builds never share a set, and a node offline during a build stays offline."""

from __future__ import annotations

import threading

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ci import nodes
from ci.config import Config, parse_config
from ci.models import Node, NodeState, OfflineCause
from tests.ci.test_nodes import builds

WINRM = {"username": "u", "password": {"password_env": "X"}}


def lab_config() -> Config:
    """Two sets of one controller and two Hyper-V nodes; set-b's names sort first
    within labels, so a reservation that ignored sets would mix them."""
    def ctl(name: str, vlans: str) -> dict:
        return {"name": name, "label": "devstack", "address": "10.0.0.1", "vlan_range": vlans,
                "ssh": {"username": "u", "key_file": "k", "known_hosts": "kh"}}

    def hv(name: str) -> dict:
        return {"name": name, "label": "hyperv", "address": "10.0.1.1", "winrm": WINRM}

    return parse_config({
        "gerrit": {"host": "h", "username": "u", "key_file": "k", "known_hosts": "kh"},
        "projects": [{"name": "p", "jobs": ["j"]}],
        "jobs": {"j": {"type": "local", "command": ["true"]}},
        "nodes": [ctl("ctl-a", "500:549"), ctl("ctl-b", "550:599"),
                  hv("hv-a1"), hv("hv-a2"), hv("hv-b1"), hv("hv-b2")],
        "lab_sets": [{"name": "set-a", "controller": "ctl-a", "hyperv": ["hv-b1", "hv-a2"]},
                     {"name": "set-b", "controller": "ctl-b", "hyperv": ["hv-a1", "hv-b2"]}],
    })


JOB = ["devstack", "hyperv", "hyperv"]


def synced(sessions: sessionmaker[Session]) -> Config:
    config = lab_config()
    with sessions() as session, session.begin():
        nodes.sync_nodes(session, config.nodes, config.lab_sets)
    return config


def test_each_build_gets_one_whole_set(sessions: sessionmaker[Session]) -> None:
    synced(sessions)
    first, second, third = builds(sessions, 3)
    with sessions() as session, session.begin():
        got = nodes.reserve(session, first, JOB, by_lab_set=True)
        assert got is not None
        assert sorted(n.name for n in got) == ["ctl-a", "hv-a2", "hv-b1"]
    with sessions() as session, session.begin():
        got = nodes.reserve(session, second, JOB, by_lab_set=True)
        assert got is not None
        assert sorted(n.name for n in got) == ["ctl-b", "hv-a1", "hv-b2"]
    with sessions() as session, session.begin():
        assert nodes.reserve(session, third, JOB, by_lab_set=True) is None
    with sessions() as session, session.begin():
        nodes.release(session, first)
    with sessions() as session, session.begin():
        got = nodes.reserve(session, third, JOB, by_lab_set=True)
        assert got is not None and {n.lab_set for n in got} == {"set-a"}


def test_a_set_with_a_member_held_or_offline_is_not_handed_out(
        sessions: sessionmaker[Session]) -> None:
    synced(sessions)
    small, big = builds(sessions, 2)
    with sessions() as session, session.begin():
        # A job that needs only one Hyper-V node still takes set-a as a whole...
        got = nodes.reserve(session, small, ["hyperv"], by_lab_set=True)
        assert got is not None and got[0].lab_set == "set-a"
        nodes.mark_offline(session, "ctl-b", "down", cause=OfflineCause.HEALTH_CHECK)
    with sessions() as session, session.begin():
        # ...so set-a's free controller and hv-b1 are no one else's, and set-b has
        # no controller.
        assert nodes.reserve(session, big, ["devstack", "hyperv"], by_lab_set=True) is None
    with sessions() as session:
        free = session.scalars(select(Node.name).where(Node.build_id.is_(None),
                                                       Node.state == NodeState.READY))
        assert sorted(free) == ["ctl-a", "hv-a1", "hv-b1", "hv-b2"]


def test_without_lab_sets_labels_mix_as_before(sessions: sessionmaker[Session]) -> None:
    synced(sessions)
    (build,) = builds(sessions, 1)
    with sessions() as session, session.begin():
        got = nodes.reserve(session, build, JOB)
        assert got is not None
        assert sorted(n.name for n in got) == ["ctl-a", "hv-a1", "hv-a2"]


def test_sync_records_sets_and_provisioning(sessions: sessionmaker[Session]) -> None:
    config = synced(sessions)
    with sessions() as session, session.begin():
        nodes.sync_nodes(session, config.nodes)  # without sets: sets are left as they are
    with sessions() as session:
        rows = {n.name: (n.lab_set, n.provision) for n in session.scalars(select(Node))}
    assert rows["hv-a1"] == ("set-b", "static") and rows["ctl-a"] == ("set-a", "static")
    with sessions() as session, session.begin():
        nodes.sync_nodes(session, config.nodes, [])  # the sets were removed from the config
    with sessions() as session:
        assert {n.lab_set for n in session.scalars(select(Node))} == {None}


def test_a_node_taken_offline_during_its_build_stays_offline(
        sessions: sessionmaker[Session]) -> None:
    synced(sessions)
    (build,) = builds(sessions, 1)
    with sessions() as session, session.begin():
        assert nodes.reserve(session, build, JOB, by_lab_set=True) is not None
        nodes.mark_offline(session, "hv-b1", "revert failed", cause=OfflineCause.PROVISION_FAILED)
    with sessions() as session, session.begin():
        nodes.release(session, build)
    with sessions() as session:
        row = session.scalar(select(Node).where(Node.name == "hv-b1"))
        assert row is not None and row.build_id is None
        assert (row.state, row.offline_cause) == (NodeState.OFFLINE, OfflineCause.PROVISION_FAILED)
        ctl = session.scalar(select(Node).where(Node.name == "ctl-a"))
        assert ctl is not None and ctl.state == NodeState.READY


def test_concurrent_claims_never_share_a_set(sessions: sessionmaker[Session]) -> None:
    synced(sessions)
    ids = builds(sessions, 6)
    barrier = threading.Barrier(len(ids))
    results: dict[int, set[str | None]] = {}
    lost: list[Exception] = []

    def grab(build_id: int) -> None:
        barrier.wait()
        try:
            with sessions() as session, session.begin():
                got = nodes.reserve(session, build_id, JOB, by_lab_set=True)
                if got:
                    results[build_id] = {n.lab_set for n in got}
        except Exception as exc:  # a lost race (SQLite busy / serialization) reserves nothing
            lost.append(exc)

    threads = [threading.Thread(target=grab, args=(b,)) for b in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(len(sets) == 1 for sets in results.values())
    taken = [next(iter(sets)) for sets in results.values()]
    assert len(taken) == len(set(taken)) and len(taken) <= 2
    with sessions() as session:
        for lab_set in ("set-a", "set-b"):
            holders = set(session.scalars(select(Node.build_id).where(Node.lab_set == lab_set)))
            assert len(holders) == 1  # every node of a set: one build, or none
