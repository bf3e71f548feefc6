"""The baseline-aware verdict (pure): which failures count against the change."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ci.models import BuildState
from ci.report_format import format_job_line, format_message
from ci.signatures import SignatureMatch
from ci.verdict import (
    Assessment,
    BaselineEvidence,
    FailureKind,
    VerdictInputs,
    classify,
    format_assessment,
    vote_for_failure,
)

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
RESIZE = ("tempest.api.compute.servers.test_server_actions.ServerActionsTestJSON."
          "test_resize_server_confirm")
LIST = "tempest.api.compute.servers.test_servers.ServersTestJSON.test_list_servers"
UNICODE = "tempest.api.compute.servers.test_servers.ServersTestJSON.test_создать_服务器"
BUG = "https://bugs.launchpad.net/nova/+bug/1"


def tip(*failed: str, age: timedelta = timedelta(hours=1)) -> BaselineEvidence:
    commit = "0123456789abcdef" * 2 + "01234567"
    return BaselineEvidence(7, "http://logs/baseline/7/", NOW - age, commit, frozenset(failed))


def kinds(inputs: VerdictInputs) -> dict[str, FailureKind]:
    return {e.test_id: e.kind for e in classify(inputs).explanations}


def test_a_failure_also_on_the_tip_is_explained_and_gives_no_minus_one() -> None:
    verdict = classify(VerdictInputs(failed=[RESIZE], baseline=tip(RESIZE), now=NOW))
    assert [e.kind for e in verdict.explanations] == [FailureKind.TIP]
    assert verdict.explanations[0].link == "http://logs/baseline/7/"
    assert "baseline build 7" in verdict.explanations[0].reason
    assert verdict.failures_explained
    assert vote_for_failure(verdict, "zero") == 0
    assert vote_for_failure(verdict, "no-vote") is None


def test_a_new_failure_still_gives_minus_one_beside_explained_ones() -> None:
    verdict = classify(VerdictInputs(failed=[RESIZE, LIST], baseline=tip(RESIZE), now=NOW))
    assert {e.test_id: e.kind for e in verdict.explanations} == {
        RESIZE: FailureKind.TIP, LIST: FailureKind.NEW}
    assert not verdict.failures_explained
    assert vote_for_failure(verdict, "zero") == -1


def test_a_baseline_too_old_or_of_other_tests_explains_nothing() -> None:
    old = VerdictInputs(failed=[RESIZE], baseline=tip(RESIZE, age=timedelta(hours=30)), now=NOW,
                        baseline_max_age=timedelta(hours=24))
    assert kinds(old) == {RESIZE: FailureKind.NEW}
    assert kinds(VerdictInputs(failed=[RESIZE], baseline=tip(LIST), now=NOW)) == {
        RESIZE: FailureKind.NEW}
    assert kinds(VerdictInputs(failed=[RESIZE], baseline=None, now=NOW)) == {
        RESIZE: FailureKind.NEW}


def test_a_signature_match_makes_a_failure_known_with_its_bug() -> None:
    match = SignatureMatch("resize-sched", BUG, UNICODE, None, "could not be scheduled")
    verdict = classify(VerdictInputs(failed=[UNICODE], matches=[match], now=NOW))
    (only,) = verdict.explanations
    assert only.kind is FailureKind.KNOWN and only.link == BUG
    assert "resize-sched" in only.reason
    assert vote_for_failure(verdict, "zero") == 0


def test_the_tip_takes_precedence_over_a_signature() -> None:
    match = SignatureMatch("sig", BUG, RESIZE)
    assert kinds(VerdictInputs(failed=[RESIZE], baseline=tip(RESIZE), matches=[match],
                               now=NOW)) == {RESIZE: FailureKind.TIP}


def test_flaky_tests_are_listed_and_never_count() -> None:
    verdict = classify(VerdictInputs(failed=[], flaky=[LIST], now=NOW))
    assert [e.kind for e in verdict.explanations] == [FailureKind.FLAKY]
    # No failure at all: nothing to explain (the build succeeded, its vote is +1).
    assert not verdict.failures_explained
    mixed = classify(VerdictInputs(failed=[RESIZE], flaky=[LIST], baseline=tip(RESIZE), now=NOW))
    assert mixed.failures_explained


def test_a_failed_build_without_a_failed_test_is_not_explained() -> None:
    verdict = classify(VerdictInputs(failed=[], now=NOW))
    assert vote_for_failure(verdict, "zero") == -1


def test_the_comment_names_each_explained_failure_and_keeps_the_ciwatch_line() -> None:
    match = SignatureMatch("sched-bug", BUG, UNICODE)
    verdict = classify(VerdictInputs(failed=[RESIZE, UNICODE], flaky=[LIST], baseline=tip(RESIZE),
                                     matches=[match], now=NOW))
    assessment = Assessment(verdict, (match,), ((LIST, 3),))
    line = format_job_line("hyperv-tempest", "http://logs/1/1/hyperv-tempest-9/",
                           BuildState.FAILED, 75)
    message = format_message("hyperv-ci", BuildState.FAILED, line, "2 failed", (), assessment)
    lines = message.splitlines()
    assert lines[0].startswith("Build failed, but every failure is explained")
    assert "* hyperv-tempest http://logs/1/1/hyperv-tempest-9/ : FAILURE in 1m 15s" in lines
    assert (f"- {RESIZE}: also fails on the branch tip at 0123456789ab (baseline build 7) "
            "http://logs/baseline/7/") in lines
    assert f"- {UNICODE}: known failure sched-bug {BUG}" in lines
    assert f"- {LIST}" in lines and "flaky: passed" not in message.split("Flaky tests")[0]
    assert f"- {LIST} (failed in build 3)" in lines
    assert f"- sched-bug: {BUG}" in lines
    assert lines[-1] == "Reply 'recheck' to run hyperv-ci again."


def test_the_comment_of_a_new_failure_lists_it_apart() -> None:
    verdict = classify(VerdictInputs(failed=[RESIZE, LIST], baseline=tip(RESIZE), now=NOW))
    text = "\n".join(format_assessment(Assessment(verdict)))
    assert "New failures (1): these count against the change:\n- " + LIST in text
    assert "Explained failures (1)" in text
    message = format_message("hyperv-ci", BuildState.FAILED, "* j u : FAILURE in 1s", "",
                             (), Assessment(verdict))
    assert message.startswith("Build failed.\n")


def test_many_explained_failures_are_cut_with_a_pointer() -> None:
    ids = [f"tempest.t.T.test_{n}" for n in range(30)]
    verdict = classify(VerdictInputs(failed=ids, baseline=tip(*ids), now=NOW))
    text = format_assessment(Assessment(verdict))
    assert "- and 10 more (test-results.txt)" in text
