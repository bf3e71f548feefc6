"""Queue states on SQLite and PostgreSQL: enqueue, supersede, claim, lease, finish, reap."""

from __future__ import annotations

import threading
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from ci import queue
from ci.models import Build, BuildState, Change, utcnow


def info(change: int = 10001, ps: int = 1, **kw: object) -> queue.ChangeInfo:
    base = dict(number=change, project="openstack/nova", branch="master", patchset=ps,
                subject="修复 VHD 格式 — Zoë's fix", owner_name="张伟",
                files=("nova/virt/hyperv/vmops.py",))
    base.update(kw)
    return queue.ChangeInfo(**base)  # type: ignore[arg-type]


def enqueue(sessions: sessionmaker[Session], change: int = 10001, ps: int = 1,
            job: str = "hyperv-tempest", reason: str = "patchset-created") -> int | None:
    with sessions() as session, session.begin():
        patchset = queue.upsert_patchset(session, info(change, ps))
        build = queue.enqueue(session, patchset, job, reason)
        return build.id if build else None


def state_of(sessions: sessionmaker[Session], build_id: int) -> str:
    with sessions() as session:
        build = session.get(Build, build_id)
        assert build is not None
        return build.state


def test_change_ref() -> None:
    assert queue.change_ref(12345, 3) == "refs/changes/45/12345/3"
    assert queue.change_ref(7, 1) == "refs/changes/07/7/1"


def test_unicode_change_survives(sessions: sessionmaker[Session]) -> None:
    enqueue(sessions)
    with sessions() as session:
        change = session.scalar(select(Change))
        assert change is not None
        assert change.subject == "修复 VHD 格式 — Zoë's fix"
        assert change.owner_name == "张伟"
        assert change.patchsets[0].ref == "refs/changes/01/10001/1"
        assert change.patchsets[0].files == ["nova/virt/hyperv/vmops.py"]


def test_duplicate_request_while_queued_is_one_build(sessions: sessionmaker[Session]) -> None:
    first = enqueue(sessions)
    assert first is not None
    assert enqueue(sessions, reason="recheck") is None
    with sessions() as session:
        assert session.scalar(select(func.count(Build.id))) == 1


def test_new_patchset_supersedes_queued_and_running(sessions: sessionmaker[Session]) -> None:
    queued = enqueue(sessions, ps=1)
    with sessions() as session, session.begin():
        running = queue.claim_next(session, "w1", 60)
        assert running is not None and running.id == queued
    newer = enqueue(sessions, ps=2)
    assert newer is not None
    assert state_of(sessions, queued) == BuildState.SUPERSEDED
    with sessions() as session:
        old = session.get(Build, queued)
        assert old is not None and old.abort_requested
    # The old worker can neither renew nor finish it any more.
    with sessions() as session, session.begin():
        assert not queue.renew_lease(session, queued, "w1", 60)
        assert queue.finish(session, queued, "w1", BuildState.FAILED) is None
    assert state_of(sessions, queued) == BuildState.SUPERSEDED
    # An event about the older patchset after the newer one: ignored.
    assert enqueue(sessions, ps=1, reason="recheck") is None


def test_other_jobs_are_not_superseded(sessions: sessionmaker[Session]) -> None:
    a = enqueue(sessions, job="a")
    b = enqueue(sessions, job="b")
    assert a and b and a != b
    assert state_of(sessions, a) == BuildState.QUEUED


def test_claim_finish_lifecycle(sessions: sessionmaker[Session]) -> None:
    build_id = enqueue(sessions)
    with sessions() as session, session.begin():
        build = queue.claim_next(session, "w1", 60)
        assert build is not None and build.id == build_id
        assert build.state == BuildState.RUNNING and build.worker == "w1"
    with sessions() as session, session.begin():
        assert queue.claim_next(session, "w2", 60) is None
        assert queue.renew_lease(session, build_id, "w1", 60)
        assert not queue.renew_lease(session, build_id, "w2", 60)
    with sessions() as session, session.begin():
        done = queue.finish(session, build_id, "w1", BuildState.SUCCEEDED, "ok",
                            log_url="http://logs/1/")
        assert done is not None and done.finished_at is not None
    assert state_of(sessions, build_id) == BuildState.SUCCEEDED
    # Finished is final.
    with sessions() as session, session.begin():
        assert queue.finish(session, build_id, "w1", BuildState.FAILED) is None
        assert not queue.request_abort(session, build_id)


def test_claim_skips_builds_whose_nodes_are_busy(sessions: sessionmaker[Session]) -> None:
    first = enqueue(sessions, change=10001, job="needs-nodes")
    second = enqueue(sessions, change=10002, job="local")

    def reserve(session: Session, build: Build) -> bool:
        return build.job != "needs-nodes"

    with sessions() as session, session.begin():
        build = queue.claim_next(session, "w1", 60, reserve=reserve)
        assert build is not None and build.id == second
    assert state_of(sessions, first) == BuildState.QUEUED


def test_abandon_aborts_active_builds(sessions: sessionmaker[Session]) -> None:
    build_id = enqueue(sessions)
    with sessions() as session, session.begin():
        aborted = queue.abort_change(session, 10001, "change abandoned")
    assert [b.id for b in aborted] == [build_id]
    assert state_of(sessions, build_id) == BuildState.ABORTED


def test_reaper_turns_a_dead_workers_build_into_error_and_retries(
    sessions: sessionmaker[Session],
) -> None:
    build_id = enqueue(sessions)
    with sessions() as session, session.begin():
        assert queue.claim_next(session, "dead", 5) is not None
    with sessions() as session, session.begin():
        assert queue.reap_expired(session, 3, now=utcnow()) == []
        reaped = queue.reap_expired(session, 3, now=utcnow() + timedelta(seconds=10))
        assert [b.id for b in reaped] == [build_id]
    assert state_of(sessions, build_id) == BuildState.ERROR
    with sessions() as session:
        retry = session.scalar(select(Build).where(Build.id != build_id))
        assert retry is not None
        assert retry.state == BuildState.QUEUED
        assert retry.attempt == 2 and retry.retry_of_id == build_id


def test_retry_stops_at_max_attempts(sessions: sessionmaker[Session]) -> None:
    build_id = enqueue(sessions)
    with sessions() as session, session.begin():
        queue.claim_next(session, "w", 60)
        build = queue.finish(session, build_id, "w", BuildState.ERROR, "node down")
        assert build is not None
        build.attempt = 3
        assert queue.retry_after_error(session, build, max_attempts=3) is None


def test_concurrent_claims_never_share_a_build(sessions: sessionmaker[Session]) -> None:
    """Eight workers race for five builds: each build is claimed exactly once."""
    expected = {enqueue(sessions, change=20000 + i) for i in range(5)}
    claimed: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def work(name: str) -> None:
        barrier.wait()
        while True:
            with sessions() as session, session.begin():
                build = queue.claim_next(session, name, 60)
                if build is None:
                    return
                with lock:
                    claimed.append(build.id)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(claimed) == sorted(expected)
