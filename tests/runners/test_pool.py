"""runners.pool: the job types' side of the pool (the state machine is ci/nodes.py)."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from ci import nodes, queue
from ci.config import Config, parse_config
from runners.pool import PoolReserver


def config() -> Config:
    return parse_config({
        "gerrit": {"host": "h", "username": "u", "key_file": "k", "known_hosts": "kh"},
        "projects": [{"name": "p", "jobs": ["local", "hyperv"]}],
        "jobs": {
            "local": {"type": "local", "command": ["true"]},
            "hyperv": {"type": "devstack-hyperv", "hyperv_nodes": 2,
                       "image": "https://images.example.org/cirros.vhdx"},
        },
        "nodes": [
            {"name": "devstack-1", "label": "devstack", "address": "10.0.0.1",
             "ssh": {"username": "u", "key_file": "k", "known_hosts": "kh"}},
            *[{"name": f"hv-{i}", "label": "hyperv", "address": f"10.0.1.{i}",
               "winrm": {"username": "u", "password": {"password_env": "X"}}} for i in (1, 2)],
        ],
    })


def test_a_build_reserves_the_nodes_its_job_needs(sessions: sessionmaker[Session]) -> None:
    cfg = config()
    with sessions() as session, session.begin():
        nodes.sync_nodes(session, cfg.nodes)
        patchset = queue.upsert_patchset(session, queue.ChangeInfo(
            number=1, project="p", branch="master", patchset=1))
        for job in ("hyperv", "local", "hyperv"):
            queue.enqueue(session, patchset, job, "test")
    reserver = PoolReserver(cfg)
    with sessions() as session, session.begin():
        first = queue.claim_next(session, "w", 60, reserve=reserver, jobs=["hyperv"])
        assert first is not None
        assert [n.name for n in nodes.nodes_of(session, first.id)] == [
            "devstack-1", "hv-1", "hv-2"]
        # A local job needs no node: claimed while the pool is empty.
        local = queue.claim_next(session, "w", 60, reserve=reserver)
        assert local is not None and local.job == "local"
        assert nodes.nodes_of(session, local.id) == []
