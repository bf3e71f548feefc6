"""Which failed tests run again, and what a re-run proves (flaky, or failed for good)."""

from __future__ import annotations

from runners.rerun import load_list, merge_rerun, rerun_ids
from runners.subunit import FLAKY, TestOutcome, summarize

SERVERS = "tempest.api.compute.servers.test_servers.ServersTestJSON"
FIRST = [
    TestOutcome(f"{SERVERS}.test_list_servers[id-9a43,smoke]", "success", 1.0),
    TestOutcome(f"{SERVERS}.test_create_server_名前[id-77aa]", "fail", 2.0,
                "Traceback:\nBuildErrorException: 实例 Zoë (first)\n"),
    TestOutcome(f"{SERVERS}.test_reboot[id-1]", "fail", 3.0, "Traceback: reboot timed out\n"),
    TestOutcome("setUpClass (tempest.api.network.test_ports.PortsTest)", "fail", None,
                "Traceback: quota\n"),
    TestOutcome("tempest.scenario.test_shelve.TestShelve.test_shelve", "skip", None, "no"),
    TestOutcome("tempest.api.compute.test_quirk.Q.test_expected_fail", "uxsuccess", 0.5),
]


def test_only_failures_are_re_run_each_once_in_order() -> None:
    assert rerun_ids(FIRST + FIRST[1:2]) == [FIRST[1].test_id, FIRST[2].test_id,
                                              FIRST[3].test_id, FIRST[5].test_id]
    assert rerun_ids(FIRST[:1] + FIRST[4:5]) == []


def test_load_list_is_one_id_a_line_in_utf8() -> None:
    data = load_list([FIRST[1].test_id, FIRST[2].test_id])
    assert data.decode("utf-8").splitlines() == [FIRST[1].test_id, FIRST[2].test_id]
    assert "名前".encode() in data


def test_a_pass_on_re_run_is_flaky_with_its_first_traceback() -> None:
    rerun = [TestOutcome(FIRST[1].test_id, "success", 1.5),
             TestOutcome(FIRST[2].test_id, "fail", 3.0, "Traceback: reboot timed out again\n")]
    merged = merge_rerun(FIRST, rerun, 1)
    by_id = {t.test_id: t for t in merged}
    flaky = by_id[FIRST[1].test_id]
    assert flaky.status == FLAKY
    assert "passed when re-run (re-run 1)" in flaky.details
    assert "BuildErrorException: 实例 Zoë (first)" in flaky.details
    # Failed twice: failed, with both tracebacks.
    again = by_id[FIRST[2].test_id]
    assert again.status == "fail"
    assert "reboot timed out\n" in again.details and "re-run 1: fail" in again.details
    assert "timed out again" in again.details
    # Not reported by the re-run (a class fixture, no loadable id): stays failed.
    assert by_id[FIRST[3].test_id].status == "fail"
    assert by_id[FIRST[5].test_id].status == "uxsuccess"
    # Which run decided each: the re-run for the two it reported, else the first.
    assert (flaky.attempt, again.attempt, by_id[FIRST[3].test_id].attempt) == (1, 1, 0)
    # Order and everything else untouched.
    assert [t.test_id for t in merged] == [t.test_id for t in FIRST]
    assert merged[0] == FIRST[0] and merged[4] == FIRST[4]
    summary = summarize(merged)
    assert summary.flaky == (FIRST[1].test_id,)
    assert summary.failed == (FIRST[2].test_id, FIRST[3].test_id, FIRST[5].test_id)
    assert "1 flaky" in summary.line()


def test_a_skip_on_re_run_proves_nothing() -> None:
    merged = merge_rerun(FIRST, [TestOutcome(FIRST[1].test_id, "skip", None, "skipped")], 1)
    assert merged[1].status == "fail"


def test_tests_only_the_re_run_reported_are_ignored() -> None:
    extra = [TestOutcome("tempest.api.other.T.test_new", "fail", 1.0, "x")]
    assert merge_rerun(FIRST, extra, 1) == FIRST


def test_all_flaky_is_a_pass() -> None:
    rerun = [TestOutcome(t.test_id, "success", 1.0) for t in FIRST if t.status == "fail"]
    rerun.append(TestOutcome(FIRST[5].test_id, "xfail", 1.0))
    summary = summarize(merge_rerun(FIRST, rerun, 1))
    assert summary.passed and summary.failed == () and len(summary.flaky) == 4
