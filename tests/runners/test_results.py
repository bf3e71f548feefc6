"""The published plain-text test report: failures first, tracebacks whole, text intact."""

from __future__ import annotations

from runners.results import format_failures, format_flaky, format_results, short_name
from runners.subunit import TestOutcome

SERVERS = "tempest.api.compute.servers.test_servers.ServersTestJSON"
OUTCOMES = [
    TestOutcome(f"{SERVERS}.test_list_servers[id-9a43,smoke]", "success", 1.25),
    TestOutcome(f"{SERVERS}.test_create_server_名前[id-77aa]", "fail", 12.5,
                "Traceback (most recent call last):\n  ...\nBuildErrorException: 实例 Zoë\n"),
    TestOutcome("tempest.scenario.test_shelve.TestShelve.test_shelve", "skip", None,
                "Shelve is not supported\n  on Hyper-V"),
    TestOutcome("tempest.api.compute.test_quirk.Q.test_ok_but_expected_to_fail", "uxsuccess",
                0.5),
]


def test_short_name_keeps_class_and_method_without_attributes() -> None:
    assert short_name(f"{SERVERS}.test_list_servers[id-9a43,smoke]") == (
        "ServersTestJSON.test_list_servers")
    assert short_name("test_plain") == "test_plain"


def test_failures_carry_their_whole_traceback() -> None:
    text = format_failures(OUTCOMES)
    assert f"FAIL: {SERVERS}.test_create_server_名前[id-77aa]\n" in text
    assert "BuildErrorException: 实例 Zoë" in text
    assert "UNEXPECTED SUCCESS: tempest.api.compute.test_quirk" in text
    assert "(the stream carried no traceback)" in text  # said, not left blank
    assert "test_list_servers" not in text
    assert format_failures(OUTCOMES[:1]) == ""


def test_report_orders_failures_skips_then_everything() -> None:
    text = format_results(OUTCOMES, "hyperv-tempest for change 10001,1: failed")
    lines = text.splitlines()
    assert lines[0] == "hyperv-tempest for change 10001,1: failed"
    assert lines[1] == "4 tests: 1 success, 1 fail, 1 skip, 1 uxsuccess"
    assert text.index("FAILED TESTS (2)") < text.index("SKIPPED TESTS (1)") < text.index(
        "ALL TESTS (4)")
    assert "Shelve is not supported on Hyper-V" in text  # reason on one line
    assert f"  success       1.25s  {SERVERS}.test_list_servers[id-9a43,smoke]" in lines
    assert "  skip                 tempest.scenario.test_shelve.TestShelve.test_shelve" in lines


def test_a_clean_run_has_no_failure_section() -> None:
    text = format_results(OUTCOMES[:1], "ok")
    assert "FAILED" not in text and "SKIPPED" not in text
    assert text.endswith(f"{SERVERS}.test_list_servers[id-9a43,smoke]\n")


def test_flaky_tests_are_listed_apart_with_why_they_failed() -> None:
    flaky = TestOutcome(f"{SERVERS}.test_reboot[id-5]", "flaky", 3.0,
                        "passed when re-run (re-run 1); failed first with:\nTimeout: 实例\n")
    outcomes = [*OUTCOMES, flaky]
    assert format_flaky(OUTCOMES) == ""
    block = format_flaky(outcomes)
    assert f"FLAKY: {SERVERS}.test_reboot[id-5]" in block and "Timeout: 实例" in block
    assert "test_create_server" not in block  # a real failure is not flaky
    text = format_results(outcomes, "heading")
    assert text.splitlines()[1] == "5 tests: 1 success, 1 fail, 1 skip, 1 uxsuccess, 1 flaky"
    assert "FAILED TESTS (2)" in text  # the flaky one is not a failure
    assert text.index("FAILED TESTS") < text.index("FLAKY TESTS (1)") < text.index(
        "SKIPPED TESTS")
    assert f"  flaky         3.00s  {SERVERS}.test_reboot[id-5]" in text
