"""ci.queue_batch on SQLite and PostgreSQL: many requests queued set-wise, with enqueue's rules."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from ci import queue
from ci.changes import ChangeInfo
from ci.models import Build, BuildState, Change, Patchset
from ci.queue_batch import (
    ActiveBuild,
    QueueRequest,
    Stop,
    plan_job,
    plan_request,
    queue_requests,
    rounds,
)
from tests.sql_statements import sent_statements

JOB = "hyperv-tempest"
SUBJECT = "Hyper-V: 修复 VHD 格式 — Zoë's fix"


def info(change: int = 10001, ps: int = 1, **kw: Any) -> ChangeInfo:
    base: dict[str, Any] = dict(number=change, project="openstack/nova", branch="master",
                                patchset=ps, subject=SUBJECT, owner_name="张伟",
                                files=("nova/virt/hyperv/vmops.py",))
    base.update(kw)
    return ChangeInfo(**base)


def request(change: int = 10001, ps: int = 1, jobs: tuple[str, ...] = (JOB,),
            reason: str = "patchset-created", **kw: Any) -> QueueRequest:
    return QueueRequest(info(change, ps, **kw), jobs, reason)


def apply(sessions: sessionmaker[Session], *requests: QueueRequest) -> list[str]:
    with sessions() as session, session.begin():
        return queue_requests(session, list(requests))


def builds(sessions: sessionmaker[Session]) -> list[tuple[int, int, str, str, str]]:
    with sessions() as session:
        rows = session.execute(
            select(Change.number, Patchset.number, Build.job, Build.state, Build.reason)
            .join(Patchset, Build.patchset_id == Patchset.id).join(Change).order_by(Build.id))
        return [tuple(r) for r in rows]  # type: ignore[misc]


# -- the rules, pure -----------------------------------------------------------------------


def test_an_outdated_patchset_is_never_queued() -> None:
    assert plan_job(1, 2, [], "recheck") == (False, [])


def test_a_queued_build_of_the_same_patchset_makes_it_a_no_op() -> None:
    active = [ActiveBuild(7, JOB, 2, BuildState.QUEUED)]
    assert plan_job(2, 2, active, "recheck") == (False, [])


def test_older_patchsets_and_a_running_same_patchset_are_superseded() -> None:
    older = ActiveBuild(7, JOB, 1, BuildState.RUNNING)
    assert plan_job(2, 2, [older], "patchset-created") == (
        True, [Stop(7, BuildState.SUPERSEDED, "superseded by patchset 2")])
    running = ActiveBuild(8, JOB, 2, BuildState.RUNNING)
    assert plan_job(2, 2, [running], "recheck") == (
        True, [Stop(8, BuildState.SUPERSEDED, "superseded by a new run (recheck)")])


def test_an_upload_is_built_once_but_a_recheck_builds_again() -> None:
    assert plan_request(request(), 1, [], {JOB}).outcome == f"already built: {JOB}"
    plan = plan_request(request(reason="recheck"), 1, [], {JOB})
    assert plan.queue == (JOB,)


def test_an_upload_matching_no_job_aborts_older_patchsets_only() -> None:
    active = [ActiveBuild(1, JOB, 1, BuildState.RUNNING), ActiveBuild(2, "other", 3,
                                                                      BuildState.QUEUED)]
    plan = plan_request(request(ps=2, jobs=()), 3, active, set())
    assert plan.queue == ()
    assert plan.stops == (Stop(1, BuildState.ABORTED,
                               "superseded by patchset 2 (no watched files changed)"),)


def test_rounds_keep_each_changes_requests_in_order() -> None:
    requests = [request(1, 1), request(2, 1), request(1, 2), request(3, 1), request(1, 3),
                request(2, 2)]
    assert rounds(requests) == [[0, 1, 3], [2, 5], [4]]


# -- on the database -----------------------------------------------------------------------


def test_a_batch_of_new_uploads_is_queued_in_order(sessions: sessionmaker[Session]) -> None:
    outcomes = apply(sessions, *(request(100 + i, reason="catch-up") for i in range(5)))
    assert outcomes == [f"queued {JOB} for {100 + i},1 (catch-up)" for i in range(5)]
    assert builds(sessions) == [(100 + i, 1, JOB, "queued", "catch-up") for i in range(5)]
    with sessions() as session:
        change = session.scalars(select(Change).where(Change.number == 102)).one()
        assert (change.subject, change.owner_name) == (SUBJECT, "张伟")
        assert change.patchsets[0].ref == "refs/changes/02/102/1"
        assert change.patchsets[0].files == ["nova/virt/hyperv/vmops.py"]


def test_the_statements_do_not_grow_with_the_batch(sessions: sessionmaker[Session]) -> None:
    with sent_statements(sessions.kw["bind"]) as few:
        apply(sessions, *(request(200 + i) for i in range(3)))
    with sent_statements(sessions.kw["bind"]) as many:
        apply(sessions, *(request(300 + i) for i in range(60)))
    assert len(builds(sessions)) == 63
    assert len(many) == len(few) <= 10


def test_a_later_patchset_in_the_same_batch_supersedes_the_earlier(
        sessions: sessionmaker[Session]) -> None:
    outcomes = apply(sessions, request(7, 1), request(8, 1), request(7, 2))
    assert outcomes[2] == f"queued {JOB} for 7,2 (patchset-created)"
    assert builds(sessions) == [(7, 1, JOB, "superseded", "patchset-created"),
                                (8, 1, JOB, "queued", "patchset-created"),
                                (7, 2, JOB, "queued", "patchset-created")]


def test_duplicates_and_outdated_requests_queue_nothing(sessions: sessionmaker[Session]) -> None:
    apply(sessions, request(9, 2))
    assert apply(sessions, request(9, 2), request(9, 1, reason="recheck"),
                 request(9, 2, reason="recheck")) == [
        f"already built: {JOB}", f"already queued or outdated: {JOB}",
        f"already queued or outdated: {JOB}"]
    assert builds(sessions) == [(9, 2, JOB, "queued", "patchset-created")]


def test_a_recheck_while_running_restarts_it(sessions: sessionmaker[Session]) -> None:
    apply(sessions, request(11, 1))
    with sessions() as session, session.begin():
        session.execute(update(Build).values(state=BuildState.RUNNING, worker="w"))
    apply(sessions, request(11, 1, reason="recheck"))
    assert builds(sessions) == [(11, 1, JOB, "superseded", "patchset-created"),
                                (11, 1, JOB, "queued", "recheck")]
    with sessions() as session:
        first = session.scalars(select(Build).order_by(Build.id)).first()
        assert first is not None and first.abort_requested
        assert first.summary == "superseded by a new run (recheck)"


def test_an_upload_off_the_watched_files_stops_older_runs(
        sessions: sessionmaker[Session]) -> None:
    apply(sessions, request(12, 1))
    assert apply(sessions, request(12, 2, jobs=())) == [
        "no job matches the changed files; stopped 1 build(s) of older patchsets"]
    assert builds(sessions) == [(12, 1, JOB, "aborted", "patchset-created")]


def test_known_text_is_kept_when_gerrit_leaves_it_empty_and_nul_is_dropped(
        sessions: sessionmaker[Session]) -> None:
    apply(sessions, request(13, 1, revision="a" * 40, owner_email="zoë@example.org"))
    apply(sessions, request(13, 1, subject="", owner_email="", revision="", reason="recheck",
                            files=("nova/virt/hyperv/\x00odd.py",)),
          request(14, 1, subject="Hyper-V\x00 fix 修复"))
    with sessions() as session:
        change = session.scalars(select(Change).where(Change.number == 13)).one()
        assert (change.subject, change.owner_email) == (SUBJECT, "zoë@example.org")
        assert change.patchsets[0].revision == "a" * 40
        assert change.patchsets[0].files == ["nova/virt/hyperv/odd.py"]
        assert session.scalar(select(Change.subject).where(Change.number == 14)) == (
            "Hyper-V fix 修复")


def _mix() -> list[QueueRequest]:
    """Requests touching every rule, several per change."""
    return [request(20, 1), request(21, 1), request(20, 2), request(21, 1),
            request(22, 1, jobs=(JOB, "hyperv-unit")), request(21, 1, reason="recheck"),
            request(20, 1, reason="recheck"), request(22, 2, jobs=()),
            request(23, 3, jobs=("hyperv-unit",)), request(23, 3, jobs=(JOB, "hyperv-unit")),
            request(20, 2, reason="recheck")]


def test_a_batch_ends_as_enqueue_one_at_a_time_does(sessions: sessionmaker[Session]) -> None:
    apply(sessions, *_mix())
    batched = builds(sessions)
    with sessions() as session, session.begin():
        for model in (Build, Patchset, Change):
            session.query(model).delete()
    for each in _mix():
        with sessions() as session, session.begin():
            patchset = queue.upsert_patchset(session, each.info)
            jobs = list(each.jobs)
            if each.reason != "recheck":
                built = set(session.scalars(select(Build.job)
                                            .where(Build.patchset_id == patchset.id)))
                jobs = [job for job in jobs if job not in built]
            if not each.jobs:
                for build in session.scalars(
                        select(Build).join(Patchset).join(Change)
                        .where(Change.number == each.info.number,
                               Patchset.number < each.info.patchset,
                               Build.state.in_(queue.ACTIVE))):
                    queue.request_abort(session, build.id, "moot")
            for job in jobs:
                queue.enqueue(session, patchset, job, each.reason)
    # Rounds give the later requests of a change later ids: the same builds, not
    # the same order.
    assert sorted(builds(sessions)) == sorted(batched)
    assert (22, 1, "hyperv-unit", "aborted", "patchset-created") in batched
