"""Queue the builds of many uploads and rechecks at once, in the caller's transaction.

The set-wise counterpart of `ci.queue.upsert_patchset` + `ci.queue.enqueue`
for the scheduler: a catch-up hands over a thousand uploads, and one
statement per change, patchset and build (about ten an event through the
ORM) is what made it take seconds. Here a batch costs a fixed handful of
SQLAlchemy Core statements whatever its size: the changes, their patchsets,
their active builds and the jobs already built are each read once, the new
rows inserted in one executemany, the superseded builds stopped by one
UPDATE per reason.

The rules are enqueue's, decided by pure functions (`plan_request`):
- a patchset a newer one of its change replaced is never queued;
- one active build per change and job: a queued build of the same patchset
  makes a request a no-op, a running one is superseded by the new run, and
  builds of older patchsets are superseded;
- an upload (not a recheck) is built once: jobs that already have a build
  of the patchset, in any state, are left out;
- an upload matching no job still ends older patchsets' active builds.
Requests for the same change are applied in order (one round each), so the
outcome is the one applying them one by one gives.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.orm import Session

from ci.changes import ChangeInfo, change_ref, without_nul
from ci.models import Build, BuildState, Change, Patchset, utcnow
from ci.wakeup import BUILDS, announce

logger = logging.getLogger(__name__)

ACTIVE = (BuildState.QUEUED, BuildState.RUNNING)
RECHECK = "recheck"

_CHANGES = cast(Table, Change.__table__)
_PATCHSETS = cast(Table, Patchset.__table__)
_BUILDS = cast(Table, Build.__table__)


@dataclass(frozen=True)
class QueueRequest:
    """Build `jobs` (the filters' choice, in config order) for `info`'s patchset."""

    info: ChangeInfo
    jobs: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class ActiveBuild:
    """A queued or running build of the request's change, as read before the batch."""

    id: int
    job: str
    patchset: int
    state: str


@dataclass(frozen=True)
class Stop:
    """A build to end: queued ones at once, running ones flagged for their worker."""

    build_id: int
    state: BuildState
    why: str


@dataclass(frozen=True)
class Plan:
    """What one request does: builds to stop, jobs to queue, and what to say of it."""

    stops: tuple[Stop, ...] = ()
    queue: tuple[str, ...] = ()
    outcome: str = ""


# -- the rules (pure) ------------------------------------------------------------------------


def plan_job(patchset: int, newest: int, active: Iterable[ActiveBuild], reason: str
             ) -> tuple[bool, list[Stop]]:
    """Whether to queue one job for `patchset`, and the builds that makes stop.

    `active` are the job's active builds of the change; `newest` the change's
    highest stored patchset number.
    """
    if newest > patchset:
        # A recheck (comment, dashboard, CLI) of an outdated patchset: reviewers
        # need the verdict on the current one, and a vote on the old one misleads.
        return False, []
    stops: list[Stop] = []
    for build in active:
        if build.patchset > patchset or (build.patchset == patchset
                                         and build.state == BuildState.QUEUED):
            return False, []  # the newer one wins; a burst of rechecks gives one build
        if build.patchset < patchset:
            stops.append(Stop(build.id, BuildState.SUPERSEDED,
                              f"superseded by patchset {patchset}"))
        else:  # running on this patchset: a recheck restarts it
            stops.append(Stop(build.id, BuildState.SUPERSEDED,
                              f"superseded by a new run ({reason})"))
    return True, stops


def plan_request(request: QueueRequest, newest: int, active: Sequence[ActiveBuild],
                 built: set[str]) -> Plan:
    """The plan of one request, given its change's state (`built`: the jobs that
    have a build of this patchset, in any state)."""
    info, reason = request.info, request.reason
    if not request.jobs:
        # A new patchset that no longer touches watched files still ends older runs.
        why = f"superseded by patchset {info.patchset} (no watched files changed)"
        return Plan(stops=tuple(Stop(b.id, BuildState.ABORTED, why) for b in active
                                if b.patchset < info.patchset),
                    outcome="no job matches the changed files")
    jobs = list(request.jobs)
    if reason != RECHECK:
        # An upload is built once: a duplicate (a catch-up racing the stream)
        # must not rebuild a patchset whose build already finished.
        if built.issuperset(jobs):
            return Plan(outcome=f"already built: {', '.join(jobs)}")
        jobs = [job for job in jobs if job not in built]
    stops: list[Stop] = []
    queue: list[str] = []
    for job in jobs:
        go, job_stops = plan_job(info.patchset, newest,
                                 [b for b in active if b.job == job], reason)
        stops.extend(job_stops)
        if go:
            queue.append(job)
    if not queue:
        return Plan(stops=tuple(stops), outcome=f"already queued or outdated: {', '.join(jobs)}")
    return Plan(tuple(stops), tuple(queue),
                f"queued {', '.join(queue)} for {info.number},{info.patchset} ({reason})")


def rounds(requests: Sequence[QueueRequest]) -> list[list[int]]:
    """Indexes of `requests` split so no change appears twice in a round, in order:
    a change's later request must see what its earlier one wrote."""
    out: list[list[int]] = []
    seen: list[set[int]] = []
    for index, request in enumerate(requests):
        number = request.info.number
        at = next((i for i in range(len(out) - 1, -1, -1) if number in seen[i]), -1) + 1
        if at == len(out):
            out.append([])
            seen.append(set())
        out[at].append(index)
        seen[at].add(number)
    return out


def change_values(info: ChangeInfo, old: dict[str, Any] | None) -> dict[str, Any]:
    """The change row's columns after `info` (upsert_patchset's rules: text Gerrit
    left empty keeps what we had)."""
    old = old or {"subject": "", "owner_name": "", "owner_email": "", "url": "",
                  "status": "NEW"}
    return {"number": info.number, "project": info.project, "branch": info.branch,
            "subject": info.subject or old["subject"],
            "owner_name": info.owner_name or old["owner_name"],
            "owner_email": info.owner_email or old["owner_email"],
            "url": info.url or old["url"], "status": info.status or old["status"]}


def patchset_values(info: ChangeInfo, old: dict[str, Any] | None) -> dict[str, Any]:
    """The patchset row's columns after `info`."""
    old = old or {"revision": "", "ref": "", "uploader_name": "", "files": None}
    return {"number": info.patchset, "revision": info.revision or old["revision"],
            "ref": info.ref or old["ref"] or change_ref(info.number, info.patchset),
            "uploader_name": info.uploader_name or old["uploader_name"],
            "files": list(info.files) if info.files is not None else old["files"]}


# -- the statements ------------------------------------------------------------------------


@dataclass
class _Round:
    """One round's rows, keyed by change number."""

    infos: dict[int, ChangeInfo]
    change_id: dict[int, int] = field(default_factory=dict)
    patchset_id: dict[int, int] = field(default_factory=dict)
    newest: dict[int, int] = field(default_factory=dict)


def queue_requests(session: Session, requests: Sequence[QueueRequest]) -> list[str]:
    """Apply `requests` in order; returns each one's outcome (as the events record it)."""
    session.flush()  # the ORM's pending writes first: the reads below are Core
    outcomes = [""] * len(requests)
    queued = False
    for indexes in rounds(requests):
        batch = [requests[i] for i in indexes]
        plans = _plan_round(session, batch)
        stopped, queued_now = _apply(session, batch, plans)
        queued |= queued_now
        for i, request, (plan, _patchset_id) in zip(indexes, batch, plans, strict=True):
            outcomes[i] = plan.outcome
            ended = sum(stop.build_id in stopped for stop in plan.stops)
            if not request.jobs and ended:
                outcomes[i] += f"; stopped {ended} build(s) of older patchsets"
    for obj in list(session.identity_map.values()):
        if isinstance(obj, Change | Patchset | Build):
            session.expire(obj)  # written past the ORM: never act on a stale copy
    if queued:
        announce(session, BUILDS)
    return outcomes


def _plan_round(session: Session, requests: list[QueueRequest]) -> list[tuple[Plan, int]]:
    """Upsert the round's changes and patchsets; each request's plan and patchset id."""
    state = _Round({r.info.number: without_nul(r.info) for r in requests})
    _upsert_changes(session, state)
    _upsert_patchsets(session, state)
    ids = list(state.change_id.values())
    active: dict[int, list[ActiveBuild]] = {}
    for row in session.execute(
            select(_BUILDS.c.id, _BUILDS.c.job, _BUILDS.c.state, _PATCHSETS.c.number,
                   _PATCHSETS.c.change_id)
            .join(_PATCHSETS, _BUILDS.c.patchset_id == _PATCHSETS.c.id)
            .where(_PATCHSETS.c.change_id.in_(ids), _BUILDS.c.state.in_(ACTIVE))
            .order_by(_BUILDS.c.id)):
        active.setdefault(row.change_id, []).append(
            ActiveBuild(row.id, row.job, row.number, row.state))
    uploads = [state.patchset_id[r.info.number] for r in requests if r.reason != RECHECK]
    built: dict[int, set[str]] = {}
    if uploads:
        for patchset_id, job in session.execute(
                select(_BUILDS.c.patchset_id, _BUILDS.c.job)
                .where(_BUILDS.c.patchset_id.in_(uploads))):
            built.setdefault(patchset_id, set()).add(job)
    plans = []
    for request in requests:
        number = request.info.number
        patchset_id = state.patchset_id[number]
        plan = plan_request(request, state.newest[number],
                            active.get(state.change_id[number], []),
                            built.get(patchset_id, set()))
        plans.append((plan, patchset_id))
    return plans


def _upsert_changes(session: Session, state: _Round) -> None:
    columns = ("id", "number", "subject", "owner_name", "owner_email", "url", "status",
               "project", "branch")
    old = {row.number: row._asdict() for row in session.execute(
        select(*(_CHANGES.c[name] for name in columns))
        .where(_CHANGES.c.number.in_(list(state.infos))))}
    new_rows, changed = [], []
    for number, info in state.infos.items():
        values = change_values(info, old.get(number))
        if number not in old:
            new_rows.append(values)
            continue
        state.change_id[number] = old[number]["id"]
        if any(old[number][k] != v for k, v in values.items()):
            changed.append({"b_id": old[number]["id"], **values})
    if new_rows:
        for row in session.execute(insert(_CHANGES).returning(_CHANGES.c.id, _CHANGES.c.number),
                                   new_rows):
            state.change_id[row.number] = row.id
    if changed:
        names = [k for k in changed[0] if k not in ("b_id", "number")]
        session.execute(update(_CHANGES).where(_CHANGES.c.id == bindparam("b_id"))
                        .values({k: bindparam(k) for k in names}),
                        [{k: row[k] for k in ("b_id", *names)} for row in changed])


def _upsert_patchsets(session: Session, state: _Round) -> None:
    number_of = {change_id: number for number, change_id in state.change_id.items()}
    old: dict[int, dict[str, Any]] = {}
    for row in session.execute(
            select(_PATCHSETS.c.id, _PATCHSETS.c.change_id, _PATCHSETS.c.number,
                   _PATCHSETS.c.revision, _PATCHSETS.c.ref, _PATCHSETS.c.uploader_name,
                   _PATCHSETS.c.files)
            .where(_PATCHSETS.c.change_id.in_(list(number_of)))):
        number = number_of[row.change_id]
        state.newest[number] = max(state.newest.get(number, 0), row.number)
        if row.number == state.infos[number].patchset:
            old[number] = row._asdict()
    new_rows, changed = [], []
    for number, info in state.infos.items():
        state.newest[number] = max(state.newest.get(number, 0), info.patchset)
        values = patchset_values(info, old.get(number))
        if number not in old:
            new_rows.append({"change_id": state.change_id[number], **values})
            continue
        state.patchset_id[number] = old[number]["id"]
        if any(old[number][k] != v for k, v in values.items()):
            changed.append({"b_id": old[number]["id"], **values})
    if new_rows:
        for row in session.execute(
                insert(_PATCHSETS).returning(_PATCHSETS.c.id, _PATCHSETS.c.change_id),
                new_rows):
            state.patchset_id[number_of[row.change_id]] = row.id
    if changed:
        names = ("revision", "ref", "uploader_name", "files")
        session.execute(update(_PATCHSETS).where(_PATCHSETS.c.id == bindparam("b_id"))
                        .values({k: bindparam(k) for k in names}),
                        [{k: row[k] for k in ("b_id", *names)} for row in changed])


def _apply(session: Session, requests: list[QueueRequest],
           plans: list[tuple[Plan, int]]) -> tuple[set[int], bool]:
    """Stop and insert what the plans say: the builds stopped, and whether any was queued."""
    by_reason: dict[tuple[BuildState, str], list[int]] = {}
    for plan, _patchset_id in plans:
        for stop in plan.stops:
            by_reason.setdefault((stop.state, stop.why), []).append(stop.build_id)
    now = utcnow()
    ended: set[int] = set()
    for (state, why), build_ids in by_reason.items():
        # Conditional, as ci.queue._stop: a build that finished meanwhile keeps its result.
        stopped = session.execute(
            update(_BUILDS).where(_BUILDS.c.id.in_(build_ids), _BUILDS.c.state.in_(ACTIVE))
            .values(state=state, abort_requested=True, summary=why, finished_at=now)
            .returning(_BUILDS.c.id)).scalars().all()
        for build_id in stopped:
            logger.info("build %s %s: %s", build_id, state, why)
        ended.update(stopped)
    rows = [{"patchset_id": patchset_id, "job": job, "state": BuildState.QUEUED,
             "reason": request.reason}
            for request, (plan, patchset_id) in zip(requests, plans, strict=True)
            for job in plan.queue]
    if not rows:
        return ended, False
    info_of = {patchset_id: request.info
               for request, (_plan, patchset_id) in zip(requests, plans, strict=True)}
    for row in session.execute(insert(_BUILDS).returning(
            _BUILDS.c.id, _BUILDS.c.patchset_id, _BUILDS.c.job, _BUILDS.c.reason), rows):
        info = info_of[row.patchset_id]
        logger.info("build %s queued: change %s,%s job %s (%s)", row.id, info.number,
                    info.patchset, row.job, row.reason)
    return ended, True
