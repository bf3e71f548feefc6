"""The review comment a build's report carries, and its vote: pure functions.

The outbox that sends them is ci/report.py; the verdict's part of the comment
(explained and new failures) is ci/verdict.py's `format_assessment`.
"""

from __future__ import annotations

from collections.abc import Sequence

from ci.models import BuildState
from ci.verdict import Assessment, format_assessment

RESULT_WORDS = {
    BuildState.SUCCEEDED: "SUCCESS",
    BuildState.FAILED: "FAILURE",
    BuildState.ERROR: "ERROR",
    BuildState.MERGE_CONFLICT: "MERGE CONFLICT",
}
HEADLINES = {
    BuildState.SUCCEEDED: "Build succeeded.",
    BuildState.FAILED: "Build failed.",
    BuildState.ERROR: "Build error: the CI itself failed; this is not a verdict on the change.",
    BuildState.MERGE_CONFLICT: "Merge failed: the change does not merge onto its branch; "
    "please rebase. No vote was given.",
}
FLAKY_LISTED = 20  # flaky test ids named in a comment; the rest are in test-results.txt


def format_duration(seconds: float | None) -> str:
    """`1h 02m 03s`, `4m 05s`, `12s` — the shape Zuul's reports use."""
    if seconds is None:
        return "0s"
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def format_job_line(job: str, log_url: str | None, state: BuildState,
                    duration: float | None) -> str:
    """`* hyperv-tempest http://LOGS/... : SUCCESS in 1h 02m 03s`."""
    url = log_url or "(no logs)"
    return f"* {job} {url} : {RESULT_WORDS[state]} in {format_duration(duration)}"


def vote_for(state: BuildState, voting: bool) -> int | None:
    """+1 / -1 for a verdict on the change; None for anything that is the CI's business."""
    if not voting:
        return None
    if state == BuildState.SUCCEEDED:
        return 1
    if state == BuildState.FAILED:
        return -1
    return None


# A failed build whose every failure the verdict explained (ci/verdict.py).
EXPLAINED_HEADLINE = ("Build failed, but every failure is explained (below): "
                      "not counted against the change.")


def format_message(ci_name: str, state: BuildState, job_line: str, summary: str = "",
                   flaky: Sequence[str] = (), assessment: Assessment | None = None,
                   forced_by: str | None = None) -> str:
    """The review comment: a headline, the job line, a short detail, and the flaky tests
    (or, given the verdict's `assessment`, its failures, explained or new, and flaky tests);
    for a forced build (`forced_by`), who forced it, since the file filter excludes it."""
    explained = (assessment is not None and state == BuildState.FAILED
                 and assessment.verdict.failures_explained)
    parts = [EXPLAINED_HEADLINE if explained else HEADLINES[state], "", job_line]
    if forced_by:
        parts += ["", f"Forced by {forced_by} from the {ci_name} dashboard: the file "
                  "filter excludes this change, so it would not run by itself."]
    if summary and state != BuildState.SUCCEEDED:
        parts += ["", summary.strip()[:2000]]
    if assessment is not None:
        parts += format_assessment(assessment)
    elif flaky:
        # Named even on success: a flaky test is a problem someone should look at.
        parts += ["", f"Flaky tests ({len(flaky)}): failed, then passed when re-run; "
                  "not counted against the change:"]
        parts += [f"- {test_id}" for test_id in flaky[:FLAKY_LISTED]]
        if len(flaky) > FLAKY_LISTED:
            parts.append(f"- and {len(flaky) - FLAKY_LISTED} more (test-results.txt)")
    if not forced_by:  # a 'recheck' comment does not run a change the filter excludes
        parts += ["", f"Reply 'recheck' to run {ci_name} again."]
    return "\n".join(parts)
