"""Queue states on SQLite and PostgreSQL: enqueue, supersede, claim, lease, finish, reap."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from sqlalchemy import Connection, MetaData, func, select, text
from sqlalchemy import insert as insert_into
from sqlalchemy.orm import Session, sessionmaker

from ci import node_recovery, queue
from ci import nodes as ci_nodes
from ci.db import alembic_config, ensure_schema, make_engine, make_sessionmaker
from ci.models import Build, BuildState, Change, Node, NodeState, OfflineCause, utcnow


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


def test_outdated_patchset_is_never_queued_even_when_nothing_runs(
        sessions: sessionmaker[Session]) -> None:
    first = enqueue(sessions, ps=1)
    second = enqueue(sessions, ps=2)
    assert first and second
    with sessions() as session, session.begin():
        finished = queue.claim_next(session, "w1", 60)
        assert finished is not None and finished.id == second
        assert queue.finish(session, second, "w1", BuildState.SUCCEEDED) is not None
    # Patchset 2 is done and nothing is active: a recheck of 1 still must not run (or vote).
    assert enqueue(sessions, ps=1, reason="recheck") is None
    assert enqueue(sessions, ps=2, reason="recheck") is not None


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


def test_the_claim_writes_its_values_and_refuses_a_column_that_does_not_exist(
    sessions: sessionmaker[Session],
) -> None:
    """The claim's UPDATE takes its SET columns from its parameters, which would
    ignore a misspelt one: it is refused, and nothing is claimed."""
    build_id = enqueue(sessions)
    assert build_id is not None
    with pytest.raises(ValueError, match="log_pth"), sessions() as session, session.begin():
        queue.claim_next(session, "w1", 60, claim_values=lambda b: {"log_pth": "x"})
    assert state_of(sessions, build_id) == BuildState.QUEUED
    with sessions() as session, session.begin():
        build = queue.claim_next(
            session, "w1", 60, jobs=["hyperv-tempest"],
            claim_values=lambda b: {"log_path": f"/srv/logs/10001/Zoë-{b.id}"})
        assert build is not None and build.log_path == f"/srv/logs/10001/Zoë-{build_id}"
    with sessions() as session:
        stored = session.get(Build, build_id)
        assert stored is not None and stored.state == BuildState.RUNNING
        assert stored.log_path == f"/srv/logs/10001/Zoë-{build_id}" and stored.worker == "w1"
        assert stored.lease_expires_at is not None and stored.started_at is not None


def test_finish_records_the_tested_commit_and_reads_the_change_back(
    sessions: sessionmaker[Session],
) -> None:
    build_id = enqueue(sessions)
    assert build_id is not None
    with sessions() as session, session.begin():
        assert queue.claim_next(session, "w1", 60) is not None
    with sessions() as session, session.begin():
        assert queue.finish(session, build_id, "w2", BuildState.SUCCEEDED) is None  # not w2's
        done = queue.finish(session, build_id, "w1", BuildState.FAILED, "1 test « échoué »",
                            tested_commit="ab" * 20)
        assert done is not None and done.state == BuildState.FAILED
        assert done.patchset is not None and done.patchset.change.owner_name == "张伟"
    with sessions() as session:
        stored = session.get(Build, build_id)
        assert stored is not None and stored.tested_commit == "ab" * 20
        assert stored.summary == "1 test « échoué »" and stored.lease_expires_at is None


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


def add_nodes(sessions: sessionmaker[Session], *names: str) -> None:
    with sessions() as session, session.begin():
        session.add_all(Node(name=name, label="hyperv") for name in names)


def two_nodes(session: Session, build: Build) -> bool:
    return ci_nodes.reserve(session, build.id, ["hyperv", "hyperv"]) is not None


def test_reaper_frees_the_dead_workers_nodes_as_worker_lost(
    sessions: sessionmaker[Session],
) -> None:
    add_nodes(sessions, "hv-1", "hv-2", "hv-3", "hv-4")
    build_id = enqueue(sessions)
    with sessions() as session, session.begin():
        assert queue.claim_next(session, "dead", 5, reserve=two_nodes) is not None
    with sessions() as session, session.begin():
        reaped = queue.reap_expired(session, 3, now=utcnow() + timedelta(seconds=10))
        assert [b.id for b in reaped] == [build_id]
    with sessions() as session:
        nodes = {n.name: (n.state, n.offline_cause, n.build_id, n.dirty_build_id, n.message)
                 for n in session.scalars(select(Node))}
    # Remembering the build: its job's cleanup is what the recovery runs.
    lost = (NodeState.OFFLINE, OfflineCause.WORKER_LOST, None, build_id,
            f"worker dead lost during build {build_id}: waiting to be cleaned and checked")
    assert nodes == {"hv-1": lost, "hv-2": lost,
                     "hv-3": (NodeState.READY, None, None, None, ""),
                     "hv-4": (NodeState.READY, None, None, None, "")}

    # The retry runs on the free nodes; the lost ones wait for their recovery
    # (a health check alone does not bring them back).
    with sessions() as session, session.begin():
        retry = queue.claim_next(session, "alive", 60, reserve=two_nodes)
        assert retry is not None and retry.retry_of_id == build_id
        assert [n.name for n in ci_nodes.nodes_of(session, retry.id)] == ["hv-3", "hv-4"]
        assert ci_nodes.record_health(session, "hv-1", True) is not None
    with sessions() as session:
        assert session.scalar(select(Node.state).where(Node.name == "hv-1")) == NodeState.OFFLINE


def test_reaped_retry_gets_the_nodes_back_once_enabled(sessions: sessionmaker[Session]) -> None:
    """A two-node pool: the retry waits for the operator, not forever."""
    add_nodes(sessions, "hv-1", "hv-2")
    build_id = enqueue(sessions)
    with sessions() as session, session.begin():
        assert queue.claim_next(session, "dead", 5, reserve=two_nodes) is not None
    with sessions() as session, session.begin():
        assert queue.reap_expired(session, 3, now=utcnow() + timedelta(seconds=10))
    with sessions() as session, session.begin():
        assert queue.claim_next(session, "alive", 60, reserve=two_nodes) is None
        assert node_recovery.enable(session, "hv-1") is not None
        assert node_recovery.enable(session, "hv-2") is not None
    with sessions() as session, session.begin():
        retry = queue.claim_next(session, "alive", 60, reserve=two_nodes)
        assert retry is not None and retry.retry_of_id == build_id
        assert [n.name for n in ci_nodes.nodes_of(session, retry.id)] == ["hv-1", "hv-2"]


def seed_builds_of_the_0001_schema(conn: Connection, numbers: list[int]) -> None:
    """One queued build per change, written with the 0001 tables as the database has
    them (reflected): today's models carry columns a 0001 database lacks."""
    meta = MetaData()
    meta.reflect(conn)
    now = datetime.now(UTC).replace(tzinfo=None)
    blanks: dict[type, object] = {int: 0, str: "", bool: False, float: 0.0, datetime: now}

    def insert(table: str, **given: object) -> int:
        values: dict[str, object] = {}
        for column in meta.tables[table].columns:
            if column.name in given:
                values[column.name] = given[column.name]
            elif not (column.nullable or column.primary_key or column.server_default):
                values[column.name] = blanks.get(column.type.python_type, "")
        result = conn.execute(insert_into(meta.tables[table]).values(**values))
        return int(result.inserted_primary_key[0])

    for number in numbers:
        change = insert("changes", number=number, project="openstack/nova", branch="master",
                        status="NEW")
        patchset = insert("patchsets", change_id=change, number=1, revision="a" * 40)
        insert("builds", patchset_id=patchset, job="hyperv-tempest", state="queued",
               reason="patchset-created", attempt=1)


def test_upgrade_0002_classifies_offline_nodes_and_frees_reaped_ones(db_url: str) -> None:
    """Rows written before offline_cause existed, including nodes a reaper stranded."""
    engine = make_engine(db_url)
    try:
        cfg = alembic_config(db_url)
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0001")
        with engine.begin() as conn:  # builds 1 (reaped) and 2 (running)
            seed_builds_of_the_0001_schema(conn, [10001, 10002])
        with engine.begin() as conn:
            conn.execute(text("UPDATE builds SET state = 'error', worker = 'w-1' WHERE id = 1"))
            conn.execute(text("UPDATE builds SET state = 'running', worker = 'w-2' WHERE id = 2"))
            rows = [("hv-1", "offline", None, "cleanup failed after build 3"),
                    ("hv-2", "offline", None, "WinRM refused"),
                    ("hv-3", "reserved", 1, ""), ("hv-4", "reserved", 2, ""),
                    ("hv-5", "ready", None, "")]
            for name, state, build, message in rows:
                conn.execute(text(
                    "INSERT INTO nodes (name, label, address, state, drained, build_id,"
                    " health_failures, message, updated_at) VALUES (:n, 'hyperv', '', :s,"
                    " false, :b, 0, :m, CURRENT_TIMESTAMP)"), {"n": name, "s": state, "b": build,
                                                               "m": message})
        ensure_schema(engine)
        with make_sessionmaker(engine)() as session:
            nodes = {n.name: (n.state, n.offline_cause, n.build_id)
                     for n in session.scalars(select(Node))}
            hv3 = session.scalar(select(Node).where(Node.name == "hv-3"))
            assert hv3 is not None and hv3.message.startswith("worker w-1 lost during build 1")
    finally:
        engine.dispose()
    assert nodes == {
        "hv-1": (NodeState.OFFLINE, OfflineCause.CLEANUP_FAILED, None),
        "hv-2": (NodeState.OFFLINE, OfflineCause.HEALTH_CHECK, None),
        "hv-3": (NodeState.OFFLINE, OfflineCause.WORKER_LOST, None),
        "hv-4": (NodeState.RESERVED, None, 2),
        "hv-5": (NodeState.READY, None, None),
    }


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
