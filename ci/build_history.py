"""The build history: filtered, keyset-paginated lists of builds.

A year of history is ~100,000 builds, so a page never counts or skips rows
(no OFFSET): it walks the index `ix_builds_created_at_id` (or the job's or
result's, migration 0006) from a cursor, the (created_at, id) of the last
row shown, and stops after `limit` rows. The cursor is opaque to users; a
forged one is a ValueError, never a query.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import Select, exists, select, tuple_
from sqlalchemy.orm import Session, contains_eager, selectinload

from ci.models import Build, BuildState, BuildStep, Change, Patchset

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
FILTER_NAMES = ("project", "branch", "job", "result", "change", "node", "since", "until")


@dataclass(frozen=True)
class BuildFilter:
    """What the build list is narrowed to; None means any."""

    project: str | None = None
    branch: str | None = None
    job: str | None = None
    result: BuildState | None = None
    change: int | None = None
    node: str | None = None
    since: datetime | None = None  # created at or after
    until: datetime | None = None  # created before

    def as_params(self) -> dict[str, str]:
        """The filter as query parameters (for links to the next page)."""
        params: dict[str, str] = {}
        for name in ("project", "branch", "job", "node"):
            value = getattr(self, name)
            if value:
                params[name] = value
        if self.result is not None:
            params["result"] = self.result.value
        if self.change is not None:
            params["change"] = str(self.change)
        if self.since is not None:
            params["since"] = self.since.isoformat()
        if self.until is not None:
            params["until"] = self.until.isoformat()
        return params


@dataclass(frozen=True)
class Cursor:
    """Where a page starts: after the row with this (created_at, id), going back in time."""

    created_at: datetime
    build_id: int

    def encode(self) -> str:
        raw = f"{self.created_at.isoformat()}|{self.build_id}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """The cursor a previous page handed out; ValueError for anything else."""
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
            stamp, _, build_id = raw.partition("|")
            created = datetime.fromisoformat(stamp)
            number = int(build_id)
        except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
            raise ValueError("invalid cursor") from exc
        if created.tzinfo is None:
            raise ValueError("invalid cursor")
        return cls(created.astimezone(UTC), number)


@dataclass(frozen=True)
class BuildPage:
    """One page of the list, newest first; `next_cursor` (older rows) is None on the last
    page, `prev_cursor` (newer rows: a `before` cursor) None on the first."""

    builds: list[Build]
    next_cursor: Cursor | None
    prev_cursor: Cursor | None = None


def parse_when(text: str, *, end_of_day: bool = False) -> datetime:
    """`YYYY-MM-DD` (midnight UTC; with end_of_day the next midnight) or an ISO datetime."""
    text = text.strip()
    try:
        day = date.fromisoformat(text) if len(text) == 10 else None
        if day is not None:
            moment = datetime.combine(day, time(), tzinfo=UTC)
            return moment + timedelta(days=1) if end_of_day else moment
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"not a date: {text!r}") from exc
    # UTC, as every stored timestamp (SQLite compares them as text).
    return moment.astimezone(UTC) if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def parse_filter(args: Mapping[str, str]) -> BuildFilter:
    """A BuildFilter from query parameters; ValueError names the one that is wrong.

    Empty values mean "any" (an HTML form sends every field).
    """
    values = {name: (args.get(name) or "").strip() for name in FILTER_NAMES}
    result = None
    if values["result"]:
        try:
            result = BuildState(values["result"])
        except ValueError as exc:
            raise ValueError(f"unknown result {values['result']!r}") from exc
    change = None
    if values["change"]:
        if not values["change"].isdigit() or len(values["change"]) > 12:
            raise ValueError("change must be a change number")
        change = int(values["change"])
    return BuildFilter(
        project=values["project"] or None,
        branch=values["branch"] or None,
        job=values["job"] or None,
        result=result,
        change=change,
        node=values["node"] or None,
        since=parse_when(values["since"]) if values["since"] else None,
        until=parse_when(values["until"], end_of_day=True) if values["until"] else None,
    )


def _filtered(query: Select[Build], where: BuildFilter) -> Select[Build]:
    if where.project is not None:
        query = query.where(Change.project == where.project)
    if where.branch is not None:
        query = query.where(Change.branch == where.branch)
    if where.change is not None:
        query = query.where(Change.number == where.change)
    if where.job is not None:
        query = query.where(Build.job == where.job)
    if where.result is not None:
        query = query.where(Build.state == where.result.value)
    if where.since is not None:
        query = query.where(Build.created_at >= where.since)
    if where.until is not None:
        query = query.where(Build.created_at < where.until)
    if where.node is not None:
        # ix_build_steps_node_build_id answers this per build.
        query = query.where(exists().where(BuildStep.build_id == Build.id,
                                           BuildStep.node == where.node))
    return query


def list_builds(session: Session, where: BuildFilter, after: Cursor | None = None,
                limit: int = DEFAULT_LIMIT, before: Cursor | None = None) -> BuildPage:
    """Builds matching `where`, newest first, starting after `after` (older) or ending
    just before `before` (newer: the page above the one that handed it out); patchset
    and change loaded with them (one statement; two when the page holds a baseline)."""
    limit = max(1, min(limit, MAX_LIMIT))
    # Outer joins: a baseline build (ci/baseline.py) has no patchset; its run is
    # loaded with it by the one extra statement selectinload sends when there is one.
    query = (select(Build).outerjoin(Build.patchset).outerjoin(Patchset.change)
             .options(contains_eager(Build.patchset).contains_eager(Patchset.change),
                      selectinload(Build.baseline)))
    query = _filtered(query, where)
    key = tuple_(Build.created_at, Build.id)
    if before is not None:
        # The `limit` rows just newer than `before`, read upwards on the same index.
        query = query.where(key > tuple_(before.created_at, before.build_id)).order_by(
            Build.created_at, Build.id).limit(limit + 1)
        newer = list(session.scalars(query))
        builds = newer[:limit][::-1]
        # `before` itself is older than them: there is a next page.
        return BuildPage(builds, _cursor(builds[-1]) if builds else None,
                         _cursor(builds[0]) if len(newer) > limit else None)
    if after is not None:
        query = query.where(key < tuple_(after.created_at, after.build_id))
    # One row more than shown tells whether there is a next page.
    query = query.order_by(Build.created_at.desc(), Build.id.desc()).limit(limit + 1)
    builds = list(session.scalars(query))
    more = len(builds) > limit
    builds = builds[:limit]
    # A page reached through `after` has newer rows: at least the one `after` names.
    return BuildPage(builds, _cursor(builds[-1]) if more else None,
                     _cursor(builds[0]) if after is not None and builds else None)


def _cursor(build: Build) -> Cursor:
    return Cursor(build.created_at, build.id)


def nodes_of_builds(session: Session, build_ids: list[int]) -> dict[int, list[str]]:
    """The nodes each build's steps ran on, by name (one statement for the page)."""
    if not build_ids:
        return {}
    rows = session.execute(select(BuildStep.build_id, BuildStep.node).distinct()
                           .where(BuildStep.build_id.in_(build_ids),
                                  BuildStep.node.is_not(None)))
    found: dict[int, set[str]] = {}
    for build_id, node in rows:
        if node is not None:
            found.setdefault(build_id, set()).add(node)
    return {build_id: sorted(names) for build_id, names in found.items()}
