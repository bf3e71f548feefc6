"""The audit log: every operator action, who did it, when, on what, from where.

`record` runs in the transaction of the action itself, so an action that
rolls back leaves no entry and an entry never lacks its action. Entries are
read back as typed records, newest first, with keyset paging (`before`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from ci.models import AuditEntry, utcnow

# What an entry is about; target ids are strings: "17" (build), "1001,2" (patchset), "hv-1".
BUILD, PATCHSET, NODE = "build", "patchset", "node"
KINDS = (BUILD, PATCHSET, NODE)
DETAIL_MAX = 2000


@dataclass(frozen=True)
class Actor:
    """Who acts: a name, how they were authenticated (local | proxy), their address."""

    name: str
    auth: str
    source: str


@dataclass(frozen=True)
class Entry:
    id: int
    at: datetime
    actor: str
    auth: str
    action: str
    target_kind: str
    target_id: str
    detail: str
    source: str


@dataclass(frozen=True)
class Target:
    kind: str
    id: str


def patchset_id(change: int, patchset: int) -> str:
    """A patchset's target id, Gerrit's `change,patchset` notation."""
    return f"{change},{patchset}"


def record(session: Session, actor: Actor, action: str, target: Target,
           detail: str = "") -> Entry:
    """Add an entry in the caller's transaction."""
    if target.kind not in KINDS:
        raise ValueError(f"unknown audit target kind {target.kind!r}")
    row = AuditEntry(at=utcnow(), actor=actor.name[:255], auth=actor.auth[:16],
                     action=action[:32], target_kind=target.kind,
                     target_id=target.id[:255], detail=detail[:DETAIL_MAX],
                     source=actor.source[:64])
    session.add(row)
    session.flush()
    return _entry(row)


def _entry(row: AuditEntry) -> Entry:
    return Entry(row.id, row.at, row.actor, row.auth, row.action, row.target_kind,
                 row.target_id, row.detail, row.source)


def entries(session: Session, *, targets: Iterable[Target] = (), kind: str | None = None,
            limit: int = 50, before: int | None = None) -> list[Entry]:
    """Entries newest first: of any of `targets` (all when empty), or of one `kind`;
    `before` an entry id pages back from there."""
    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
    wanted = list(targets)
    if wanted:
        query = query.where(or_(*(
            (AuditEntry.target_kind == t.kind) & (AuditEntry.target_id == t.id)
            for t in wanted)))
    if kind is not None:
        query = query.where(AuditEntry.target_kind == kind)
    if before is not None:
        query = query.where(AuditEntry.id < before)
    return [_entry(row) for row in session.scalars(query)]
