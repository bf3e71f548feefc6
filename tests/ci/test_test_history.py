"""ci/test_history.py: the flaky rule (pure), and the queries on both engines."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

import ci.test_history as queries
from ci.test_history import classify_flaky, flaky_tests, recheck_flips, summarize
from tests.history_seed import (
    ALWAYS_FAILS,
    PASSES,
    RECHECK_FLAKY,
    RERUN_FLAKY,
    HistoryWorld,
    seed_history,
)


@pytest.fixture
def history(sessions: sessionmaker[Session]) -> HistoryWorld:
    return seed_history(sessions)


@pytest.mark.parametrize(("statuses", "flips"), [
    (["fail", "success"], 1),  # failed, passed on a recheck
    (["fail", "success", "fail"], 2),  # every change counts once it is flaky
    (["fail", "skip", "xfail"], 1),  # skips say nothing; xfail met its expectation
    (["fail", "flaky"], 1),  # a flaky build passed in the end
    (["success", "fail"], 0),  # passing then failing alone is not the flaky rule
    (["fail", "fail", "uxsuccess"], 0),
    (["success", "success"], 0),
    ([], 0),
])
def test_recheck_flips(statuses: list[str], flips: int) -> None:
    assert recheck_flips(statuses) == flips


def test_classify_counts_reruns_and_rechecks_and_names_the_builds() -> None:
    found = classify_flaky("t", [[(1, "flaky")], [(2, "fail"), (5, "success")],
                                 [(7, "fail")]], {1: None, 2: None, 5: None, 7: None})
    assert found is not None
    assert (found.rerun_flips, found.recheck_flips, found.flips) == (1, 1, 2)
    assert found.builds == (5, 2, 1)  # build 7 alone flipped nothing
    assert classify_flaky("t", [[(1, "fail"), (2, "fail")]], {}) is None


def test_flaky_tests_in_a_window(sessions: sessionmaker[Session], history: HistoryWorld) -> None:
    ids = history.builds
    with sessions() as s:
        found = {f.test_id: f for f in flaky_tests(s, history.now - timedelta(days=30))}
        assert set(found) == {RECHECK_FLAKY, RERUN_FLAKY}
        recheck = found[RECHECK_FLAKY]
        # fail (a), pass (b), fail (b2) on patchset 1's hyperv-local; hyperv-extra's lone
        # failure (c) and the other change's pass (d) are other code or another job.
        assert (recheck.rerun_flips, recheck.recheck_flips) == (0, 2)
        assert recheck.builds == (ids["b2"], ids["b"], ids["a"])
        assert found[RERUN_FLAKY].builds == (ids["a"],) and found[RERUN_FLAKY].flips == 1
        assert list(found) == [RECHECK_FLAKY, RERUN_FLAKY]  # most flips first
        # A window that starts after build a leaves only b -> b2 (pass, fail): not flaky.
        late = flaky_tests(s, history.now - timedelta(days=2, hours=1))
        assert late == []


def test_stats_over_the_newest_builds(sessions: sessionmaker[Session],
                                      history: HistoryWorld) -> None:
    with sessions() as s:
        stats = {t.test_id: t for t in queries.test_stats(s)}
        always = stats[ALWAYS_FAILS]
        assert (always.runs, always.failures, always.failure_rate) == (3, 3, 1.0)
        assert always.last_failure is not None
        assert always.last_failure.build_id == history.builds["b2"]
        assert always.last_failure.finished_at is not None
        recheck = stats[RECHECK_FLAKY]
        assert (recheck.runs, recheck.failures, recheck.max_duration) == (5, 3, 9.5)
        assert stats[RERUN_FLAKY].flaky == 1 and stats[RERUN_FLAKY].failures == 0
        assert stats["tempest.api.skipped"].failure_rate == 0.0  # only skipped: no rate
        assert stats[PASSES].last_failure is None

        order = [t.test_id for t in queries.test_stats(s)]
        assert order[:2] == [RECHECK_FLAKY, ALWAYS_FAILS]  # 3 failures each: by name
        assert queries.test_stats(s, sort="rate")[0].test_id == ALWAYS_FAILS
        assert queries.test_stats(s, sort="slowest")[0].test_id == RECHECK_FLAKY
        assert [t.test_id for t in queries.test_stats(s, contains="_ports_ü[")] == [RECHECK_FLAKY]
        # LIKE's wildcards in a search are literal characters.
        assert queries.test_stats(s, contains="%") == []
        # The newest finished build only (d: nova's pass): no failures in that window.
        newest = {t.test_id: t for t in queries.test_stats(s, window=1)}
        assert newest[RECHECK_FLAKY].failures == 0 and newest[RECHECK_FLAKY].runs == 1


def test_history_of_one_test(sessions: sessionmaker[Session], history: HistoryWorld) -> None:
    ids = history.builds
    with sessions() as s:
        runs = queries.test_history(s, RECHECK_FLAKY)
        assert [r.build_id for r in runs] == sorted(
            [ids["a"], ids["b"], ids["c"], ids["b2"], ids["d"]], reverse=True)
        assert [r.status for r in runs][-1] == "fail" and runs[-1].failed
        assert runs[0].change == 2002 and runs[0].project == "openstack/nova"
        assert "<b>failed</b>" in runs[-1].details
        page = queries.test_history(s, RECHECK_FLAKY, limit=2, before_build=ids["b2"])
        assert [r.build_id for r in page] == [ids["c"], ids["b"]]
        summary = summarize(RECHECK_FLAKY, runs)
        assert (summary.runs, summary.failures) == (5, 3)
        assert queries.test_history(s, "no such test") == []
