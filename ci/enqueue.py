"""Manual enqueue (CLI and dashboard): queue a project's jobs for a change.

When the change is not in the database yet, its details come from Gerrit
(`gerrit query --current-patch-set` or `--patch-sets`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ci import queue
from ci.changes import ChangeInfo, change_info_from_query, change_info_from_rows
from ci.config import Config
from ci.models import Change, Patchset

logger = logging.getLogger(__name__)


def parse_change_spec(spec: str) -> tuple[int, int | None]:
    """`12345` or `12345,3` → (12345, None) / (12345, 3)."""
    number, _, patchset = spec.partition(",")
    try:
        change = int(number)
        ps = int(patchset) if patchset else None
    except ValueError:
        raise ValueError(f"{spec!r} is not CHANGE or CHANGE,PATCHSET") from None
    if change < 1 or (ps is not None and ps < 1):
        raise ValueError(f"{spec!r} is not CHANGE or CHANGE,PATCHSET")
    return change, ps


def jobs_for_project(config: Config, project: str) -> list[str]:
    jobs: list[str] = []
    for entry in config.projects:
        if entry.name == project:
            jobs.extend(j for j in entry.jobs if j not in jobs)
    return jobs


def _known_patchset(session: Session, change: int, patchset: int | None) -> Patchset | None:
    query = select(Patchset).join(Change).where(Change.number == change)
    if patchset is not None:
        query = query.where(Patchset.number == patchset)
    return session.scalar(query.order_by(Patchset.number.desc()).limit(1))


def manual_enqueue(
    config: Config,
    sessions: sessionmaker[Session],
    project: str,
    change_spec: str,
    jobs: list[str],
    *,
    query: Callable[[int], list[dict[str, Any]]] | None = None,
    reason: str = "manual",
) -> list[tuple[int, str]]:
    """Queue `jobs` (default: the project's) for the change; returns (build id, job) pairs."""
    change, patchset = parse_change_spec(change_spec)
    jobs = jobs or jobs_for_project(config, project)
    if not jobs:
        raise ValueError(f"project {project!r} has no jobs in the configuration")
    unknown = [j for j in jobs if j not in config.jobs]
    if unknown:
        raise ValueError(f"unknown job(s): {', '.join(unknown)}")
    with sessions() as session:
        known = _known_patchset(session, change, patchset)
        known_id = known.id if known is not None else None
    info = None
    if known_id is None:
        rows = (query or _gerrit_query(config))(change)
        if not rows:
            raise ValueError(f"change {change} was not found in Gerrit")
        info = change_info_from_query(rows[0], patchset)
        if info.project != project:
            raise ValueError(f"change {change} belongs to {info.project}, not {project}")
    created: list[tuple[int, str]] = []
    with sessions() as session, session.begin():
        ps = queue.upsert_patchset(session, info) if info else session.get(Patchset, known_id)
        assert ps is not None
        if ps.change.project != project:
            raise ValueError(f"change {change} belongs to {ps.change.project}, not {project}")
        for job in jobs:
            build = queue.enqueue(session, ps, job, reason)
            if build is not None:
                created.append((build.id, job))
    return created


def known_change_ref(sessions: sessionmaker[Session], change: int,
                     patchset: int | None) -> ChangeInfo | None:
    """The change as the database knows it (for `hyperv-ci render`), or None."""
    with sessions() as session:
        ps = _known_patchset(session, change, patchset)
        if ps is None or (patchset is not None and ps.number != patchset):
            return None
        return change_info_from_rows(ps.change, ps)


def _gerrit_query(config: Config) -> Callable[[int], list[dict[str, Any]]]:
    def run(change: int) -> list[dict[str, Any]]:
        from ci.gerrit import GerritClient

        client = GerritClient(config.gerrit)
        try:
            return client.query(f"change:{change}", patch_sets=True, files=True)
        finally:
            close = getattr(client, "close", None)
            if close is not None:
                close()

    return run
