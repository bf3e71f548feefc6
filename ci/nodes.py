"""The node state machine: which nodes exist, which are free, who holds them, and
every transition of a node's row, beside the build transitions of ci/queue.py.

A build reserves every node its job needs in the transaction that claims it;
each reservation is a conditional UPDATE (`state = ready AND build_id IS
NULL`), so a node is never handed to two builds, on any engine.

A node's life (docs/nodes.md):

    ready ──reserve──▶ reserved ──release──▶ ready
                          │  └─release, cleanup failed──▶ offline (cleanup-failed)
                          └─reaper: worker lost (lose_build_nodes)──▶ offline (worker-lost)
    offline (worker-lost) ──claim_recovery──▶ cleaning ──finish_recovery──▶
        ready | offline (cleanup-failed: the cleanup failed) | offline (health-check)
    offline (health-check) ──a passing check──▶ ready
    offline (any) ──`nodes enable` (cleans and checks first)──▶ ready
    offline (any) ──dashboard Enable──▶ offline (enable-requested) ──claim_recovery──▶ cleaning

The way back into service (recovery after a lost worker, an operator's
enable) is ci/node_recovery.py. The decisions are pure functions of a node's
row and what the I/O found (`recovery_verdict`); the I/O (cleanups, health
checks over SSH and WinRM) is runners/recovery.py's, runners/health.py's and
the worker's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ci.config import LabSetConfig, NodeConfig
from ci.db import rows_changed
from ci.models import Node, NodeState, OfflineCause, utcnow

logger = logging.getLogger(__name__)

# After this many failed health checks in a row a node goes offline.
OFFLINE_AFTER = 2


def sync_nodes(session: Session, nodes: Sequence[NodeConfig],
               lab_sets: Sequence[LabSetConfig] | None = None) -> None:
    """Make the nodes table match the config (new nodes ready; removed nodes drained).

    `lab_sets` (the config's, possibly empty) sets each node's set; None leaves
    the sets as they are (a command that knows only the node list).
    """
    set_of = {name: s.name for s in lab_sets or () for name in (s.controller, *s.hyperv)}
    existing = {n.name: n for n in session.scalars(select(Node))}
    for cfg in nodes:
        row = existing.pop(cfg.name, None)
        if row is None:
            row = Node(name=cfg.name, label=cfg.label, address=cfg.address,
                       state=NodeState.READY)
            session.add(row)
        row.label, row.address, row.provision = cfg.label, cfg.address, cfg.provision
        if lab_sets is not None:
            row.lab_set = set_of.get(cfg.name)
    for row in existing.values():
        if not row.drained:
            row.drained = True
            row.message = "no longer in the configuration"


def _free_nodes(session: Session, label: str, lab_set: str | None = None) -> list[Node]:
    query = (
        select(Node)
        .where(Node.label == label, Node.state == NodeState.READY, Node.drained.is_(False),
               Node.build_id.is_(None))
        .order_by(Node.name)
    )
    if lab_set is not None:
        query = query.where(Node.lab_set == lab_set)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return list(session.scalars(query))


def reserve(session: Session, build_id: int, labels: Sequence[str], *,
            by_lab_set: bool = False) -> list[Node] | None:
    """Reserve one node per entry of `labels` for the build, all or nothing.

    With `by_lab_set` every node comes from one lab set (the first, by name,
    that has them all free): two builds never share a set's controller, its
    VLAN range or its nodes. Returns the nodes, or None (and reserves
    nothing) when the pool cannot supply them now. Runs inside the caller's
    transaction.
    """
    wanted: dict[str, int] = {}
    for label in labels:
        wanted[label] = wanted.get(label, 0) + 1
    if not by_lab_set:
        taken = _reserve_from(session, build_id, wanted, None)
    else:
        taken = None
        for lab_set in _lab_sets_with_free_nodes(session):
            taken = _reserve_from(session, build_id, wanted, lab_set)
            if taken is not None:
                break
    if taken:
        where = f" of lab set {taken[0].lab_set}" if by_lab_set else ""
        logger.info("build %s reserved nodes %s%s", build_id,
                    ", ".join(n.name for n in taken), where)
    return taken


def _lab_sets_with_free_nodes(session: Session) -> list[str]:
    """The sets no build holds a node of (a set serves one build at a time)."""
    held = select(Node.lab_set).where(Node.lab_set.is_not(None), Node.build_id.is_not(None))
    return list(session.scalars(
        select(Node.lab_set).distinct()
        .where(Node.lab_set.is_not(None), Node.state == NodeState.READY,
               Node.drained.is_(False), Node.build_id.is_(None), Node.lab_set.not_in(held))
        .order_by(Node.lab_set)))


def _reserve_from(session: Session, build_id: int, wanted: dict[str, int],
                  lab_set: str | None) -> list[Node] | None:
    """All of `wanted` (label: count) from the free nodes (of `lab_set`), or None."""
    taken: list[Node] = []
    savepoint = session.begin_nested()
    for label, count in wanted.items():
        got = 0
        for node in _free_nodes(session, label, lab_set):
            if got == count:
                break
            result = session.execute(
                update(Node)
                .where(Node.id == node.id, Node.state == NodeState.READY,
                       Node.build_id.is_(None), Node.drained.is_(False))
                .values(state=NodeState.RESERVED, build_id=build_id, updated_at=utcnow())
            )
            if rows_changed(result) == 1:
                session.refresh(node)
                taken.append(node)
                got += 1
        if got < count:
            savepoint.rollback()
            return None
    savepoint.commit()
    return taken


def nodes_of(session: Session, build_id: int) -> list[Node]:
    return list(session.scalars(select(Node).where(Node.build_id == build_id).order_by(Node.name)))


def release(session: Session, build_id: int, failed: Sequence[str] = ()) -> None:
    """Return a build's nodes to the pool; nodes whose cleanup failed go offline.

    A node left dirty stays offline until an operator enables it: passing a
    health check says nothing about the leftovers of a build.
    """
    for node in nodes_of(session, build_id):
        node.build_id = None
        if node.state == NodeState.OFFLINE:
            continue  # taken offline during the build (provisioning failed): stays so
        if node.name in failed:
            node.dirty_build_id = build_id  # what `nodes enable` cleans up after
            _take_offline(node, OfflineCause.CLEANUP_FAILED,
                          f"cleanup failed after build {build_id}")
        else:
            node.state = NodeState.READY
            node.offline_cause = None
            node.dirty_build_id = None
            node.message = ""


def lose_build_nodes(session: Session, build_id: int, worker: str) -> list[str]:
    """The reaper's transition: a dead worker's nodes go offline (`worker-lost`),
    remembering the build (`dirty_build_id`) whose leftovers a worker must clean
    before they serve again; returns their names. In the reaper's transaction."""
    # Without this the nodes keep build_id forever: health checks skip them and
    # the retry may wait on a pool that never frees up.
    return list(session.scalars(
        update(Node)
        .where(Node.build_id == build_id)
        .values(state=NodeState.OFFLINE, offline_cause=OfflineCause.WORKER_LOST,
                build_id=None, dirty_build_id=build_id, updated_at=utcnow(),
                message=f"worker {worker} lost during build {build_id}: "
                        "waiting to be cleaned and checked")
        .returning(Node.name)
    ).all())


def _take_offline(node: Node, cause: OfflineCause, message: str) -> None:
    node.state = NodeState.OFFLINE
    node.offline_cause = cause
    node.message = message
    logger.warning("node %s offline (%s): %s", node.name, cause, message)


def mark_offline(session: Session, name: str, message: str, *, cause: OfflineCause) -> None:
    """Take a node offline for `cause` (which decides whether health checks may revive it)."""
    node = session.scalar(select(Node).where(Node.name == name))
    if node is not None:
        _take_offline(node, cause, message)


def record_health(session: Session, name: str, healthy: bool, message: str = "") -> Node | None:
    """Apply one health-check result: failures take a node offline, success brings it back.

    Only nodes that health checks took offline come back on a success; a node
    offline for another cause (cleanup failed, worker lost) waits for `enable`.
    """
    node = session.scalar(select(Node).where(Node.name == name))
    if node is None:
        return None
    node.last_checked_at = utcnow()
    held = node.state == NodeState.OFFLINE and node.offline_cause != OfflineCause.HEALTH_CHECK
    if healthy:
        node.health_failures = 0
        if node.state == NodeState.OFFLINE and not held:
            node.state = NodeState.READY
            node.offline_cause = None
            node.message = "back online after a health check"
            logger.info("node %s back online", name)
        return node
    node.health_failures += 1
    if not held:  # keep the message naming the build or worker the operator must look at
        node.message = message
    if node.health_failures >= OFFLINE_AFTER and node.state == NodeState.READY:
        node.state = NodeState.OFFLINE
        node.offline_cause = OfflineCause.HEALTH_CHECK
        logger.warning("node %s offline after %s failed checks: %s", name,
                       node.health_failures, message)
    return node


def set_drained(session: Session, name: str, drained: bool) -> bool:
    """Drain (no new builds; a running build finishes) or undrain a node."""
    node = session.scalar(select(Node).where(Node.name == name))
    if node is None:
        return False
    node.drained = drained
    return True
