"""A node's way back into service (the `offline -> cleaning -> ready` part of
ci/nodes.py's state machine; docs/nodes.md).

A worker lost mid-build leaves its nodes offline (`worker-lost`); another
worker's keeper claims them (`claim_recovery`: they turn `cleaning`), cleans
and checks them (runners/recovery.py), and `finish_recovery` applies where
`recovery_verdict`, a pure function of what the cleanup and check found,
sends them. An operator's `nodes enable` takes the same path at once
(`claim_for_enable`), the dashboard's Enable through a worker's keeper
(`request_enable`); `enable` itself puts a node back, whatever took it
offline. Every claim is a conditional UPDATE: two workers never recover one
node, and no build takes a node being recovered.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ci.db import rows_changed
from ci.errors import TransientError
from ci.models import Node, NodeState, OfflineCause, utcnow

logger = logging.getLogger(__name__)

# A node left `cleaning` this long (the worker recovering it died too) is
# recovered again by another worker: longer than any cleanup may take.
RECOVERY_STALE = timedelta(hours=1)


@dataclass(frozen=True)
class RecoveryTask:
    """A node a worker has claimed to clean and check (state `cleaning`)."""

    name: str
    dirty_build_id: int | None  # whose job's cleanup to run, for that build's change


@dataclass(frozen=True)
class Probe:
    """What one cleanup or health check found."""

    ok: bool
    message: str


@dataclass(frozen=True)
class Verdict:
    """Where a node goes after a recovery or an enable."""

    state: NodeState
    cause: OfflineCause | None
    message: str

    @property
    def ready(self) -> bool:
        return self.state == NodeState.READY


def claim_recovery(session: Session, holder: str, now: datetime | None = None,
                   ) -> list[RecoveryTask]:
    """Claim the nodes a lost worker left (and stalled recoveries): they turn `cleaning`.

    Each claim is a conditional UPDATE on the row as read, so two workers
    never recover the same node.
    """
    now = now or utcnow()
    rows = session.scalars(
        select(Node).where(Node.build_id.is_(None),
                           Node.offline_cause.in_((OfflineCause.WORKER_LOST,
                                                   OfflineCause.ENABLE_REQUESTED)),
                           Node.state.in_((NodeState.OFFLINE, NodeState.CLEANING)))
        .order_by(Node.name))
    tasks = []
    for row in list(rows):
        if row.state == NodeState.CLEANING and row.updated_at > now - RECOVERY_STALE:
            continue  # another worker is on it
        took_over = " (a stalled recovery taken over)" if row.state == NodeState.CLEANING else ""
        result = session.execute(
            update(Node)
            .where(Node.id == row.id, Node.state == row.state,
                   Node.updated_at == row.updated_at, Node.build_id.is_(None))
            .values(state=NodeState.CLEANING, updated_at=now,
                    message=f"{holder} is cleaning and checking it after build "
                            f"{row.dirty_build_id}{took_over}"))
        if rows_changed(result) == 1:
            tasks.append(RecoveryTask(row.name, row.dirty_build_id))
            logger.info("node %s: %s recovers it after build %s%s", row.name, holder,
                        row.dirty_build_id, took_over)
    return tasks


def _enableable(session: Session, name: str, force: bool) -> Node | None:
    """The node an operator may enable (None: no such node); NodeBusy if it holds a
    build, or a worker is recovering it and `force` is not given."""
    node = session.scalar(select(Node).where(Node.name == name))
    if node is None:
        return None
    if node.build_id is not None:
        raise NodeBusy(f"node {name!r} holds build {node.build_id}")
    if node.state == NodeState.CLEANING and not force:
        raise NodeBusy(f"node {name!r} is being recovered: {node.message}")
    return node


def claim_for_enable(session: Session, name: str, force: bool = False) -> RecoveryTask | None:
    """An operator's `nodes enable`: the node turns `cleaning` while it is cleaned
    and checked, so no build and no recovery takes it meanwhile.

    None for an unknown node; NodeBusy if it holds a build or a worker is
    recovering it (`force` takes a recovering node anyway).
    """
    node = _enableable(session, name, force)
    if node is None:
        return None
    result = session.execute(
        update(Node).where(Node.id == node.id, Node.state == node.state,
                           Node.build_id.is_(None))
        .values(state=NodeState.CLEANING, updated_at=utcnow(),
                message="an operator's `nodes enable` is cleaning and checking it"))
    if rows_changed(result) != 1:
        raise NodeBusy(f"node {name!r} changed state meanwhile; try again")
    return RecoveryTask(name, node.dirty_build_id)


def recovery_verdict(cleanup: Probe, check: Probe | None, build_id: int | None) -> Verdict:
    """Where a node goes after its cleanup and (if the cleanup passed) its health check."""
    after = f"after build {build_id}" if build_id is not None else "after an unknown build"
    if not cleanup.ok:
        # The leftovers are still there: only an operator's `nodes enable` (which
        # cleans again) may put it back.
        return Verdict(NodeState.OFFLINE, OfflineCause.CLEANUP_FAILED,
                       f"cleanup {after} failed: {cleanup.message}")
    if check is None or not check.ok:
        # Clean, but unreachable: a later passing health check revives it.
        detail = check.message if check is not None else "not run"
        return Verdict(NodeState.OFFLINE, OfflineCause.HEALTH_CHECK,
                       f"cleaned {after}, but the health check failed: {detail}")
    return Verdict(NodeState.READY, None, f"cleaned and checked {after}: {check.message}")


def finish_recovery(session: Session, name: str, verdict: Verdict) -> bool:
    """Apply a recovery's verdict to a node still `cleaning`; False if it is not."""
    values: dict[str, object] = {
        "state": verdict.state, "offline_cause": verdict.cause, "message": verdict.message,
        "updated_at": utcnow(), "last_checked_at": utcnow()}
    if verdict.cause != OfflineCause.CLEANUP_FAILED:
        values["dirty_build_id"] = None
    if verdict.ready:
        values["health_failures"] = 0
    result = session.execute(
        update(Node).where(Node.name == name, Node.state == NodeState.CLEANING,
                           Node.build_id.is_(None)).values(**values))
    done = rows_changed(result) == 1
    if done and verdict.ready:
        logger.info("node %s back in service: %s", name, verdict.message)
    elif done:
        logger.warning("node %s stays offline (%s): %s", name, verdict.cause, verdict.message)
    return done


class NodeBusy(TransientError):
    """The node holds a build: it cannot be enabled under that build's feet."""


def enable(session: Session, name: str, message: str = "enabled by an operator",
           *, force: bool = False) -> Node | None:
    """An operator brings a node back into the pool, whatever took it offline.

    Returns None for an unknown node; raises NodeBusy if it holds a build, or
    a worker is recovering it (unless `force`). `hyperv-ci nodes enable` cleans
    and checks the node before it calls this. Draining is left as it is.
    """
    node = _enableable(session, name, force)
    if node is None:
        return None
    node.state = NodeState.READY
    node.offline_cause = None
    node.health_failures = 0
    node.dirty_build_id = None
    node.message = message
    logger.info("node %s enabled by an operator", name)
    return node


def request_enable(session: Session, name: str, requested_by: str) -> Node | None:
    """The dashboard's Enable: the node waits (offline, `enable-requested`) for a
    worker's keeper to clean and check it (claim_recovery), as `nodes enable` would;
    a failed cleanup or check leaves it offline saying why. A node already in
    service is left as it is. None for an unknown node; NodeBusy as for `enable`.
    """
    node = _enableable(session, name, force=False)
    if node is None or node.state != NodeState.OFFLINE:
        return node
    node.offline_cause = OfflineCause.ENABLE_REQUESTED
    node.message = f"enable requested by {requested_by}: waiting for a worker to clean and check it"
    node.updated_at = utcnow()
    logger.info("node %s: enable requested by %s", name, requested_by)
    return node
