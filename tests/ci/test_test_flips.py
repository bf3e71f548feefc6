"""ci/test_flips.py: the flips a recorded build adds, and the backfill of the history.

The record path (ci/verdict_record.assess, as the worker's record transaction
runs it) and the backfill (migration 0012) must write the same flips for the
same history: both apply ci.test_history.flips_of, one build at a time or all
at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import product

import pytest
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from ci.config import Config, parse_config
from ci.models import Build, BuildState, Change, Patchset, TestFlip, TestResult, utcnow
from ci.test_flips import backfill
from ci.test_history import flaky_tests, flips_of, new_flips
from ci.verdict_record import assess, build_verdict

X = "tempest.api.compute.test_x[id-1,<smoke>] 实例"  # fail, pass, fail
Y = "tempest.api.network.test_y ü"  # pass, fail, pass: both flips at the last
R = "tempest.api.compute.test_rerun"  # flaky (re-run) in a build
P = "tempest.api.compute.test_ok"
STATUSES = ("fail", "success", "skip", "flaky", "uxsuccess")


def test_the_flips_added_build_by_build_are_the_flips_of_the_whole_history() -> None:
    """Every history of up to 5 builds: what the record path adds at each build sums
    to what the backfill finds at once, and nothing is added twice."""
    for length in range(1, 6):
        for statuses in product(STATUSES, repeat=length):
            runs = list(enumerate(statuses, start=1))
            added = [f for i in range(len(runs)) for f in new_flips(runs[:i], runs[i])]
            assert sorted(added, key=repr) == sorted(flips_of(runs), key=repr), statuses
            assert len(set(added)) == len(added)


def test_the_first_recovery_writes_the_flips_before_it() -> None:
    # pass, fail: not flaky (the change's bug may show late); then a pass: both count.
    assert new_flips([(1, "success")], (2, "fail")) == []
    flips = new_flips([(1, "success"), (2, "fail")], (3, "success"))
    assert [(f.from_build_id, f.build_id, f.recovered, f.failed_build) for f in flips] == [
        (1, 2, False, 2), (2, 3, True, 2)]
    # Once flaky, each change is one flip; skips say nothing.
    later = new_flips([(1, "success"), (2, "fail"), (3, "success"), (4, "skip")], (5, "fail"))
    assert [(f.from_build_id, f.build_id) for f in later] == [(3, 5)]
    assert [f.kind for f in new_flips([], (9, "flaky"))] == ["rerun"]


def make_config() -> Config:
    return parse_config({
        "gerrit": {"host": "h", "username": "hyperv-ci", "key_file": "k", "known_hosts": "kh"},
        "projects": [{"name": "openstack/nova", "jobs": ["hyperv-local", "hyperv-extra"]}],
        "jobs": {"hyperv-local": {"type": "local", "command": ["true"]},
                 "hyperv-extra": {"type": "local", "command": ["true"]}},
    })


def record(session: Session, patchset: Patchset | None, job: str, state: BuildState,
           finished: datetime, results: dict[str, str], config: Config,
           comments: dict[int, tuple[tuple[str, int], ...]]) -> int:
    """A build finished with `results`, assessed in its own transaction as the worker's
    record path does (assess only for builds with a verdict, ci/report.py)."""
    build = Build(patchset=patchset, job=job, state=state, created_at=finished,
                  started_at=finished, finished_at=finished)
    session.add(build)
    session.flush()
    session.add_all(TestResult(build_id=build.id, test_id=t, status=s,
                               details=f"Traceback: {t} <b>failed</b>" if s != "success" else "")
                    for t, s in results.items())
    session.flush()
    if state in (BuildState.SUCCEEDED, BuildState.FAILED):
        comments[build.id] = assess(session, build, config).recheck_flaky
    return build.id


def stored_flips(sessions: sessionmaker[Session]) -> set[tuple[object, ...]]:
    with sessions() as s:
        return {(f.test_id, f.build_id, f.from_build_id, f.patchset_id, f.job, f.kind,
                 f.recovered, f.finished_at, f.failed_at)
                for f in s.scalars(select(TestFlip))}


@dataclass(frozen=True)
class Recorded:
    """The builds by name, and what each assessment names as flaky on recheck."""

    ids: dict[str, int]
    comments: dict[int, tuple[tuple[str, int], ...]]


@pytest.fixture
def recorded(sessions: sessionmaker[Session]) -> Recorded:
    """a, b, b2 on one patchset and job; c another job; e an error; t a baseline build."""
    comments: dict[int, tuple[tuple[str, int], ...]] = {}
    config = make_config()
    start = utcnow() - timedelta(days=3)
    hour = timedelta(hours=1)
    ids: dict[str, int] = {}
    with sessions() as s, s.begin():
        ps = Patchset(change=Change(number=3001, project="openstack/nova", branch="master",
                                    subject="Flips « ü »"), number=1, revision="f" * 40)
        s.add(ps)
        s.flush()
    for name, job, state, results in [
        ("a", "hyperv-local", BuildState.FAILED, {X: "fail", Y: "success", R: "flaky",
                                                  P: "success"}),
        ("c", "hyperv-extra", BuildState.FAILED, {X: "fail"}),
        ("b", "hyperv-local", BuildState.FAILED, {X: "success", Y: "fail", P: "success"}),
        # An error's results are not compared (it is not assessed; the backfill skips it).
        ("e", "hyperv-local", BuildState.ERROR, {X: "success", Y: "success"}),
        ("b2", "hyperv-local", BuildState.FAILED, {X: "fail", Y: "success", P: "skip"}),
        ("t", "hyperv-local", BuildState.SUCCEEDED, {R: "flaky", X: "fail"}),
    ]:
        with sessions() as s, s.begin():
            patchset = None if name == "t" else s.get(Patchset, ps.id)
            ids[name] = record(s, patchset, job, state, start + len(ids) * hour, results, config,
                               comments)
    return Recorded(ids, comments)


def test_recording_builds_writes_their_flips(sessions: sessionmaker[Session],
                                             recorded: Recorded) -> None:
    ids = recorded.ids
    flips = stored_flips(sessions)
    pairs = {(t, frm, to, kind) for t, to, frm, _ps, _job, kind, *_ in flips}
    assert pairs == {
        (X, ids["a"], ids["b"], "recheck"), (X, ids["b"], ids["b2"], "recheck"),
        (Y, ids["a"], ids["b"], "recheck"), (Y, ids["b"], ids["b2"], "recheck"),
        (R, None, ids["a"], "rerun"), (R, None, ids["t"], "rerun")}
    with sessions() as s:
        found = {f.test_id: f for f in flaky_tests(s, utcnow() - timedelta(days=30))}
        assert {t: (f.rerun_flips, f.recheck_flips) for t, f in found.items()} == {
            X: (0, 2), Y: (0, 2), R: (2, 0)}
        assert found[X].builds == (ids["b2"], ids["b"], ids["a"])
        assert found[R].builds == (ids["t"], ids["a"])
        # A flaky test's explanation on the build page is its re-run flip.
        verdict = build_verdict(s, ids["a"])
        assert [(e["test_id"], e["kind"]) for e in verdict["explanations"]] == [
            (X, "new"), (R, "flaky")]
        assert verdict["explanations"][1]["reason"] == "flaky: passed on re-run"


def test_the_comment_names_the_recoveries_the_build_adds(sessions: sessionmaker[Session],
                                                         recorded: Recorded) -> None:
    # The vote comment's "flaky on recheck" is the same rule: the fail -> pass flips
    # this build adds, with the build that failed.
    ids, said = recorded.ids, recorded.comments
    assert said[ids["a"]] == () and said[ids["c"]] == ()
    assert said[ids["b"]] == ((X, ids["a"]),)
    assert said[ids["b2"]] == ((Y, ids["b"]),)  # e's pass is an error's: not compared
    assert said[ids["t"]] == ()  # a baseline is compared with nothing


def test_the_backfill_writes_what_recording_wrote(sessions: sessionmaker[Session],
                                                  recorded: Recorded) -> None:
    written = stored_flips(sessions)
    with sessions() as s, s.begin():
        s.execute(delete(TestFlip))
        assert backfill(s.connection()) == len(written)
    assert stored_flips(sessions) == written


def test_a_window_counts_the_flips_of_its_own_builds(sessions: sessionmaker[Session],
                                                     recorded: Recorded) -> None:
    with sessions() as s:
        a_finished = s.get(Build, recorded.ids["a"])
        assert a_finished is not None and a_finished.finished_at is not None
        # Without a: X passed (b) then failed (b2): not flaky there; Y failed (b) then
        # passed (b2; e is an error, not compared): one flip; the baseline's re-run.
        late = flaky_tests(s, a_finished.finished_at + timedelta(minutes=1))
        assert [(f.test_id, f.rerun_flips, f.recheck_flips) for f in late] == [
            (R, 1, 0), (Y, 0, 1)]
