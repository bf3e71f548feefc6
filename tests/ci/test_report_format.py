"""The review comment and the vote (ci/report_format.py, pure)."""

from __future__ import annotations

import pytest

from ci.models import BuildState
from ci.report_format import format_duration, format_job_line, format_message, vote_for


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "0s"), (0, "0s"), (12.4, "12s"), (245, "4m 05s"), (3723, "1h 02m 03s"),
     (36000, "10h 00m 00s")],
)
def test_format_duration(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


def test_job_line_is_the_third_party_format() -> None:
    line = format_job_line("hyperv-tempest", "http://logs.example.org/10001/1/hyperv-tempest-7/",
                           BuildState.SUCCEEDED, 3723)
    assert line == ("* hyperv-tempest http://logs.example.org/10001/1/hyperv-tempest-7/ : "
                    "SUCCESS in 1h 02m 03s")


def test_votes_never_punish_the_change_for_the_ci() -> None:
    assert vote_for(BuildState.SUCCEEDED, True) == 1
    assert vote_for(BuildState.FAILED, True) == -1
    assert vote_for(BuildState.ERROR, True) is None
    assert vote_for(BuildState.MERGE_CONFLICT, True) is None
    assert vote_for(BuildState.FAILED, False) is None


def test_message_mentions_recheck_and_summary() -> None:
    message = format_message("hyperv-ci", BuildState.FAILED, "* j u : FAILURE in 1s",
                             "3 tests failed")
    assert message.startswith("Build failed.")
    assert "3 tests failed" in message and "recheck" in message


def test_message_names_flaky_tests_even_on_success() -> None:
    flaky = [f"tempest.api.compute.servers.test_servers.S.test_{i}_实例" for i in range(23)]
    message = format_message("hyperv-ci", BuildState.SUCCEEDED, "* j u : SUCCESS in 1s",
                             "30 tests: 7 success, 23 flaky", flaky)
    assert message.startswith("Build succeeded.")
    assert "Flaky tests (23): failed, then passed when re-run" in message
    assert "- tempest.api.compute.servers.test_servers.S.test_0_实例" in message
    assert "test_20_实例" not in message and "- and 3 more (test-results.txt)" in message
    assert "Flaky" not in format_message("hyperv-ci", BuildState.SUCCEEDED, "* j u : SUCCESS")
