"""A small history of builds for the history, tests, flaky and chart tests.

Rows are made with the real models, timestamps set by hand so the windows
and the keyset order are known. Test ids and node names are hostile and
non-ASCII on purpose.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ci.models import (
    Build,
    BuildState,
    BuildStep,
    Change,
    Node,
    Patchset,
    StepState,
    TestResult,
    utcnow,
)
from ci.test_flips import backfill

RERUN_FLAKY = "tempest.api.compute.servers.test_rerun[id-1]"
RECHECK_FLAKY = "tempest.api.network.test_ports_ü[id-2,<smoke>]"
ALWAYS_FAILS = "tempest.scenario.test_always_fails 失败"
PASSES = "tempest.api.compute.test_ok"
HOSTILE_NODE = "hv-节点-<b>1</b>"
SUBJECT = "Fix 实例 <script>alert(1)</script> & “quotes”"


@dataclass(frozen=True)
class HistoryWorld:
    """The ids seeded; builds by name: a, b, b2 (rechecks of a), c (another job on
    a's patchset), d (change 2002), e (error, no tests), f (queued)."""

    builds: dict[str, int]
    now: datetime


def _build(session: Session, patchset: Patchset, job: str, state: BuildState,
           created: datetime, minutes: float | None, reason: str = "patchset-created",
           ) -> Build:
    started = created + timedelta(minutes=2) if minutes is not None else None
    finished = (started + timedelta(minutes=minutes)
                if started is not None and state.finished else None)
    if state.finished and finished is None:
        finished = created + timedelta(minutes=1)
    build = Build(patchset=patchset, job=job, state=state, reason=reason, created_at=created,
                  started_at=started, finished_at=finished, summary=f"{state} build")
    session.add(build)
    session.flush()
    return build


def _results(session: Session, build: Build, results: list[tuple[str, str, float]]) -> None:
    session.add_all(TestResult(build_id=build.id, test_id=test_id, status=status,
                               duration=duration,
                               details=f"Traceback: {test_id} <b>failed</b>"
                               if status in ("fail", "flaky") else "")
                    for test_id, status, duration in results)


def _steps(session: Session, build: Build, nodes: list[str], failed: bool) -> None:
    start = build.started_at or build.created_at
    for index, node in enumerate(nodes):
        last = index == len(nodes) - 1
        session.add(BuildStep(build_id=build.id, name=f"step-{index}", node=node,
                              state=StepState.FAILED if failed and last else StepState.SUCCEEDED,
                              started_at=start, finished_at=build.finished_at,
                              exit_code=1 if failed and last else 0))


def seed_history(sessions: sessionmaker[Session], *, flips: bool = True) -> HistoryWorld:
    """The world; `flips`: and its flips, as migration 0012 backfills them."""
    now = utcnow()
    day = timedelta(days=1)
    with sessions() as s, s.begin():
        hyperv = Change(number=2001, project="openstack/compute-hyperv", branch="master",
                        subject=SUBJECT, owner_name="José 张伟", url="https://review.example/2001")
        nova = Change(number=2002, project="openstack/nova", branch="stable/2023.1",
                      subject="naïve résumé", owner_name="Zoë")
        ps1 = Patchset(change=hyperv, number=1, revision="a" * 40)
        ps_nova1 = Patchset(change=nova, number=1, revision="b" * 40)
        ps_nova2 = Patchset(change=nova, number=2, revision="c" * 40)
        s.add_all([hyperv, nova, ps1, ps_nova1, ps_nova2])
        # The dashboard's own test world may hold some of these nodes already.
        known = set(s.scalars(select(Node.name)))
        s.add_all(Node(name=name, label=label) for name, label in [
            ("hv-1", "hyperv"), (HOSTILE_NODE, "hyperv"), ("devstack-1", "devstack")]
            if name not in known)
        s.flush()
        a = _build(s, ps1, "hyperv-local", BuildState.FAILED, now - 3 * day, 60)
        _results(s, a, [(PASSES, "success", 1.0), (RECHECK_FLAKY, "fail", 2.0),
                        (ALWAYS_FAILS, "fail", 3.0), (RERUN_FLAKY, "flaky", 4.0)])
        _steps(s, a, ["devstack-1", "hv-1"], failed=True)
        b = _build(s, ps1, "hyperv-local", BuildState.FAILED, now - 2 * day, 50,
                   "comment: recheck")
        _results(s, b, [(PASSES, "success", 1.2), (RECHECK_FLAKY, "success", 2.5),
                        (ALWAYS_FAILS, "fail", 3.5)])
        _steps(s, b, ["devstack-1", HOSTILE_NODE], failed=True)
        c = _build(s, ps1, "hyperv-extra", BuildState.FAILED, now - 2 * day + timedelta(hours=1),
                   40)
        _results(s, c, [(RECHECK_FLAKY, "fail", 2.0)])
        _steps(s, c, ["devstack-1"], failed=True)
        b2 = _build(s, ps1, "hyperv-local", BuildState.FAILED, now - 1.5 * day, 55,
                    "comment: recheck")
        _results(s, b2, [(PASSES, "success", 1.1), (RECHECK_FLAKY, "fail", 2.2),
                         (ALWAYS_FAILS, "fail", 3.1)])
        _steps(s, b2, ["devstack-1", "hv-1"], failed=True)
        d = _build(s, ps_nova1, "hyperv-local", BuildState.SUCCEEDED, now - day, 30)
        _results(s, d, [(PASSES, "success", 0.9), (RECHECK_FLAKY, "success", 9.5),
                        ("tempest.api.skipped", "skip", 0.0)])
        _steps(s, d, ["devstack-1", HOSTILE_NODE], failed=False)
        e = _build(s, ps_nova2, "hyperv-local", BuildState.ERROR, now - timedelta(hours=3), 5)
        _steps(s, e, ["hv-1"], failed=True)
        f = _build(s, ps_nova2, "hyperv-extra", BuildState.QUEUED, now - timedelta(hours=1), None)
        builds = {"a": a.id, "b": b.id, "c": c.id, "b2": b2.id, "d": d.id, "e": e.id,
                  "f": f.id}
        if flips:
            s.flush()
            backfill(s.connection())
    return HistoryWorld(builds=builds, now=now)
