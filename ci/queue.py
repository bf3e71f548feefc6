"""The build queue: enqueue, supersede, claim with a lease, renew, finish, reap.

Every function takes the caller's Session and runs inside the caller's
transaction, so "store the event, create its builds, mark it processed"
or "finish the build, queue its report" commit together or not at all.

Claiming uses the database's own guarantees: `FOR UPDATE SKIP LOCKED` on
PostgreSQL, the write lock of `BEGIN IMMEDIATE` on SQLite (see ci/db.py),
and every state change is a conditional UPDATE checked by its row count,
so a build is never run twice and a finished build never changes again.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import Select, Table, bindparam, func, select, update
from sqlalchemy.orm import Session, aliased, joinedload
from sqlalchemy.orm.attributes import set_committed_value

from ci.changes import ChangeInfo, change_ref, without_nul
from ci.db import rows_changed
from ci.models import Build, BuildState, Change, Patchset, utcnow
from ci.nodes import lose_build_nodes
from ci.queue_batch import ActiveBuild, plan_job
from ci.wakeup import BUILDS, announce

logger = logging.getLogger(__name__)

ACTIVE = (BuildState.QUEUED, BuildState.RUNNING)


def upsert_patchset(session: Session, info: ChangeInfo) -> Patchset:
    """Create or refresh the change and patchset rows; returns the patchset."""
    info = without_nul(info)
    change = session.scalar(select(Change).where(Change.number == info.number))
    if change is None:
        change = Change(number=info.number, project=info.project, branch=info.branch)
        session.add(change)
    change.project = info.project
    change.branch = info.branch
    if info.subject:
        change.subject = info.subject
    if info.owner_name:
        change.owner_name = info.owner_name
    if info.owner_email:
        change.owner_email = info.owner_email
    if info.url:
        change.url = info.url
    change.status = info.status or change.status
    session.flush()
    patchset = session.scalar(
        select(Patchset).where(Patchset.change_id == change.id, Patchset.number == info.patchset)
    )
    if patchset is None:
        patchset = Patchset(change_id=change.id, number=info.patchset)
        session.add(patchset)
    patchset.revision = info.revision or patchset.revision
    patchset.ref = info.ref or patchset.ref or change_ref(info.number, info.patchset)
    patchset.uploader_name = info.uploader_name or patchset.uploader_name
    if info.files is not None:
        patchset.files = list(info.files)
    session.flush()
    return patchset


def _active_builds(session: Session, change_number: int, job: str | None = None) -> list[Build]:
    query = (
        select(Build)
        .join(Patchset, Build.patchset_id == Patchset.id)
        .join(Change, Patchset.change_id == Change.id)
        .where(Change.number == change_number, Build.state.in_(ACTIVE))
    )
    if job is not None:
        query = query.where(Build.job == job)
    return list(session.scalars(query))


def _stop(session: Session, build: Build, state: BuildState, why: str) -> bool:
    """Queued → state at once; running → state with abort_requested (the worker stops it)."""
    result = session.execute(
        update(Build)
        .where(Build.id == build.id, Build.state.in_(ACTIVE))
        .values(state=state, abort_requested=True, summary=why,
                finished_at=utcnow())
    )
    if rows_changed(result):
        session.refresh(build)
        logger.info("build %s %s: %s", build.id, state, why)
    return bool(rows_changed(result))


def enqueue(session: Session, patchset: Patchset, job: str, reason: str) -> Build | None:
    """Queue `job` for `patchset`, superseding builds of older patchsets of the change.

    A second request while the same patchset's build is still queued is a
    no-op (returns None): a burst of rechecks gives one build. So is a request
    for a patchset that a newer one of the same change has replaced.
    """
    change = patchset.change
    newest = session.scalar(select(func.max(Patchset.number))
                            .where(Patchset.change_id == change.id))
    if newest is not None and newest > patchset.number:
        # A recheck (comment, dashboard, CLI) of an outdated patchset: reviewers
        # need the verdict on the current one, and a vote on the old one misleads.
        logger.info("not queuing %s for %s,%s: patchset %s is newer", job, change.number,
                    patchset.number, newest)
        return None
    # The rules are the batch path's (ci.queue_batch.plan_job), so the scheduler's
    # groups and the dashboard's or CLI's single requests decide alike.
    active = {b.id: (b, b.patchset) for b in _active_builds(session, change.number, job)}
    go, stops = plan_job(patchset.number, patchset.number, [
        ActiveBuild(b.id, b.job, other.number, b.state) for b, other in active.values()
        if other is not None], reason)  # joined on its patchset: never a baseline build
    if not go:
        return None
    for stop in stops:
        _stop(session, active[stop.build_id][0], stop.state, stop.why)
    build = Build(patchset_id=patchset.id, job=job, state=BuildState.QUEUED, reason=reason)
    session.add(build)
    session.flush()
    announce(session, BUILDS)
    logger.info("build %s queued: change %s,%s job %s (%s)", build.id, change.number,
                patchset.number, job, reason)
    return build


def abort_change(session: Session, change_number: int, why: str) -> list[Build]:
    """Stop every active build of a change (abandoned, merged)."""
    return [b for b in _active_builds(session, change_number) if
            _stop(session, b, BuildState.ABORTED, why)]


def request_abort(session: Session, build_id: int, why: str = "aborted by an operator") -> bool:
    """Abort one build (dashboard/CLI); False if it had already finished."""
    build = session.get(Build, build_id)
    return build is not None and _stop(session, build, BuildState.ABORTED, why)


# The node pool decides whether a build's nodes can be had; it reserves them
# in the same transaction as the claim (ci.nodes.reserve, through the job's
# labels: runners.pool.PoolReserver).
Reserver = Callable[[Session, Build], bool]


_BUILDS = cast(Table, Build.__table__)
# Statements the claim and the record run for every build, built once: building
# and hashing a statement costs a worker more CPU than the database spends
# running it, and a reused statement keeps its cache key. The SET columns of
# the UPDATEs are the parameters' keys.
_CLAIM = update(_BUILDS).where(_BUILDS.c.id == bindparam("claimed_id"),
                               _BUILDS.c.state == BuildState.QUEUED)
_FINISH = update(_BUILDS).where(_BUILDS.c.id == bindparam("finished_id"),
                                _BUILDS.c.worker == bindparam("finished_by"),
                                _BUILDS.c.state == BuildState.RUNNING)
_WITH_CHANGE = (select(Build).options(joinedload(Build.patchset).joinedload(Patchset.change))
                .execution_options(populate_existing=True))
_BUILD_WITH_CHANGE = _WITH_CHANGE.where(Build.id == bindparam("build_id"))
_COLUMNS = frozenset(_BUILDS.c.keys())
# What `finish` sets; on PostgreSQL the UPDATE is a CTE whose RETURNING rows the
# read-back joins to their patchset and change: one statement, one round trip,
# and the rows as they are after the UPDATE (a plain SELECT in the same
# statement would see them as they were before it).
_FINISHED = ("state", "summary", "finished_at", "log_url", "log_path", "lease_expires_at",
             "tested_commit")
_FINISHED_ROWS = (update(_BUILDS).where(*_FINISH.whereclause.clauses)  # type: ignore[union-attr]
                  .values({c: bindparam(f"set_{c}") for c in _FINISHED})
                  .returning(*_BUILDS.c).cte("finished"))
_FINISHED_BUILD = aliased(Build, _FINISHED_ROWS)
_FINISH_AND_READ = (select(_FINISHED_BUILD)
                    .options(joinedload(_FINISHED_BUILD.patchset).joinedload(Patchset.change))
                    .execution_options(populate_existing=True))


def claim_next(
    session: Session,
    worker: str,
    lease_seconds: int,
    *,
    reserve: Reserver | None = None,
    jobs: Sequence[str] | None = None,
    scan: int = 20,
    claim_values: Callable[[Build], Mapping[str, object]] | None = None,
) -> Build | None:
    """Claim the oldest queued build this worker can run now, or None.

    Candidates are locked with SKIP LOCKED (PostgreSQL), one at a time, so
    concurrent workers look at different rows; the conditional UPDATE is the final
    guard on every engine. The candidates come with their patchset and
    change (one SELECT), and `claim_values(build)` adds columns to the
    claiming UPDATE (the worker's log location): claim and start are one
    UPDATE in the caller's transaction.
    """
    for build in _candidates(session, jobs, scan):
        if reserve is not None and not reserve(session, build):
            continue
        now = utcnow()
        values: dict[str, object] = {
            "state": BuildState.RUNNING, "worker": worker, "started_at": now,
            "lease_expires_at": now + timedelta(seconds=lease_seconds),
            **(claim_values(build) if claim_values is not None else {}),
        }
        if not values.keys() <= _COLUMNS:  # a parameter that is no column would be ignored
            raise ValueError(f"not columns of builds: {sorted(values.keys() - _COLUMNS)}")
        # Core, not ORM: the ORM's UPDATE would search the session for the row
        # to synchronise; the values are set on `build` below.
        result = session.execute(_CLAIM, {"claimed_id": build.id, **values})
        if rows_changed(result) == 1:
            # What the UPDATE wrote, without reading the row back.
            for key, value in values.items():
                set_committed_value(build, key, value)
            logger.info("build %s claimed by %s", build.id, worker)
            return build
    return None


@functools.cache
def _queued(*, by_job: bool, excluding: bool, locked: bool) -> Select[Build]:
    """The queued builds, oldest first, with their patchset and change: one shape
    per combination of filters (the values are parameters)."""
    query = _WITH_CHANGE.where(Build.state == BuildState.QUEUED).order_by(Build.id)
    if by_job:
        query = query.where(Build.job.in_(bindparam("jobs", expanding=True)))
    if excluding:
        query = query.where(Build.id.not_in(bindparam("tried", expanding=True)))
    if locked:
        # OF builds: the patchset and change rows are read, not locked (and a
        # baseline build's missing patchset is the nullable side of the join).
        query = query.limit(1).with_for_update(skip_locked=True, of=Build)
    return query


def _candidates(session: Session, jobs: Sequence[str] | None, scan: int) -> Iterator[Build]:
    """Up to `scan` queued builds (of `jobs`, if given), oldest first.

    On PostgreSQL each is locked (SKIP LOCKED) only when it is reached, one
    SELECT at a time: a row lock is a write to the row, and a claim usually
    takes the first candidate, so locking `scan` rows up front costs every
    claim that many writes and hides them from the other workers.
    """
    params: dict[str, object] = {} if jobs is None else {"jobs": list(jobs)}
    by_job = jobs is not None
    if session.get_bind().dialect.name != "postgresql":
        query = _queued(by_job=by_job, excluding=False, locked=False).limit(scan)
        yield from session.scalars(query, params)
        return
    tried: list[int] = []
    while len(tried) < scan:
        query = _queued(by_job=by_job, excluding=bool(tried), locked=True)
        build = session.scalars(query, {**params, "tried": tried} if tried else params).first()
        if build is None:
            return
        tried.append(build.id)
        yield build


def renew_lease(session: Session, build_id: int, worker: str, lease_seconds: int) -> bool:
    """Extend our lease; False means the build is no longer ours to run (stop it)."""
    result = session.execute(
        update(Build)
        .where(Build.id == build_id, Build.worker == worker, Build.state == BuildState.RUNNING,
               Build.abort_requested.is_(False))
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
    )
    return rows_changed(result) == 1


def finish(
    session: Session,
    build_id: int,
    worker: str,
    state: BuildState,
    summary: str = "",
    *,
    log_url: str | None = None,
    log_path: str | None = None,
    tested_commit: str | None = None,
) -> Build | None:
    """Record a running build's result (and the commit it tested, when the job
    said); None if it was superseded/aborted meanwhile."""
    if not state.finished:
        raise ValueError(f"{state} is not a final state")
    session.flush()  # a Core statement does not autoflush: pending changes go first
    values = {"state": state, "summary": summary, "finished_at": utcnow(), "log_url": log_url,
              "log_path": log_path, "lease_expires_at": None, "tested_commit": tested_commit}
    where = {"finished_id": build_id, "finished_by": worker}
    build: Build | None
    if session.get_bind().dialect.name == "postgresql":
        build = session.scalars(_FINISH_AND_READ, {
            **where, **{f"set_{key}": value for key, value in values.items()}}).first()
        changed = build is not None
        if not changed:  # for the log line only
            build = session.scalars(_BUILD_WITH_CHANGE, {"build_id": build_id}).first()
    else:
        result = session.execute(_FINISH, {**where, **values})
        changed = rows_changed(result) == 1
        # With its patchset and change in the same SELECT: the report needs them.
        build = session.scalars(_BUILD_WITH_CHANGE, {"build_id": build_id}).first()
    if not changed:
        logger.info("build %s finished as %s but is %s: result dropped", build_id, state,
                    build.state if build else "gone")
        return None
    logger.info("build %s %s", build_id, state)
    return build


def retry_after_error(session: Session, build: Build, max_attempts: int) -> Build | None:
    """Queue a new attempt of an errored build, unless it used all its attempts."""
    if build.attempt >= max_attempts:
        return None
    if build.patchset is not None:
        active = _active_builds(session, build.patchset.change.number, build.job)
    else:  # a baseline build (ci/baseline.py): the other attempts of its run
        active = list(session.scalars(select(Build).where(
            Build.baseline_id == build.baseline_id, Build.state.in_(ACTIVE))))
    if any(b.id != build.id for b in active):
        return None  # a newer run already exists
    retry = Build(patchset_id=build.patchset_id, baseline_id=build.baseline_id, job=build.job,
                  state=BuildState.QUEUED, reason="retry after error", attempt=build.attempt + 1,
                  retry_of_id=build.retry_of_id or build.id)
    session.add(retry)
    session.flush()
    announce(session, BUILDS)
    logger.info("build %s queued as attempt %s of build %s", retry.id, retry.attempt, build.id)
    return retry


def expired_builds(session: Session, now: datetime | None = None) -> list[Build]:
    """Running builds whose worker stopped renewing its lease (it died), oldest first.

    In id order, so concurrent reapers on PostgreSQL lock the rows in one order
    (no deadlock between two reapers).
    """
    now = now or utcnow()
    return list(session.scalars(
        select(Build).where(Build.state == BuildState.RUNNING, Build.lease_expires_at < now)
        .order_by(Build.id)
    ))


def reap_expired(session: Session, max_attempts: int, now: datetime | None = None) -> list[Build]:
    """Mark builds of dead workers `error`, hand their nodes to recovery, queue their retry.

    Returns the reaped builds. Safe to run from many processes at once: each
    build changes state by a conditional UPDATE, so exactly one reaper wins it.
    The nodes go offline with cause `worker-lost` in the same transaction,
    remembering the build (`dirty_build_id`): what it left running on them is
    unknown, so a worker cleans and checks them before they serve again
    (`runners.recovery`), and none is handed out meanwhile.
    """
    reaped = []
    for build in expired_builds(session, now):
        result = session.execute(
            update(Build)
            .where(Build.id == build.id, Build.state == BuildState.RUNNING,
                   Build.lease_expires_at == build.lease_expires_at)
            .values(state=BuildState.ERROR, finished_at=utcnow(),
                    summary=f"worker {build.worker} stopped renewing its lease")
        )
        if rows_changed(result) == 1:
            session.refresh(build)
            freed = lose_build_nodes(session, build.id, f"{build.worker}")
            retry_after_error(session, build, max_attempts)
            reaped.append(build)
            logger.warning("build %s reaped: worker %s lost; nodes to recover: %s", build.id,
                           build.worker, ", ".join(sorted(freed)) or "none")
    return reaped


def queued_builds(session: Session) -> list[Build]:
    return list(session.scalars(
        select(Build).where(Build.state == BuildState.QUEUED).order_by(Build.id)))


def running_builds(session: Session) -> list[Build]:
    return list(session.scalars(
        select(Build).where(Build.state == BuildState.RUNNING).order_by(Build.id)))


def recent_builds(session: Session, limit: int = 50) -> list[Build]:
    return list(session.scalars(select(Build).order_by(Build.id.desc()).limit(limit)))
