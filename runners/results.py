"""A build's test results as plain text: why it failed, readable in one click.

The worker publishes `test-results.txt` at the top of every log tree that has
test results: failures with their tracebacks first, then flaky tests (failed,
then passed when re-run) with the traceback of their failure, then skips with
their reasons, then every test. Plain text on purpose: the log servers serve
untrusted output and never render HTML from a log tree.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from runners.subunit import FLAKY, TestOutcome, summarize

RESULTS_FILE = "test-results.txt"
_FAILING = ("fail", "uxsuccess")
_RULE = "=" * 72
_THIN = "-" * 72
_ATTRS = re.compile(r"\[[^\]]*\]$")


def short_name(test_id: str) -> str:
    """`Class.test_method` of a tempest-style id, without its `[id-...,smoke]` attributes."""
    bare = _ATTRS.sub("", test_id)
    return ".".join(bare.split(".")[-2:])


def format_failures(outcomes: Sequence[TestOutcome]) -> str:
    """Each failing test with its traceback (empty when nothing failed)."""
    blocks = []
    for t in outcomes:
        if t.status not in _FAILING:
            continue
        what = "FAIL" if t.status == "fail" else "UNEXPECTED SUCCESS"
        details = t.details.rstrip() or "(the stream carried no traceback)"
        blocks.append(f"{_RULE}\n{what}: {t.test_id}\n{_THIN}\n{details}\n")
    return "\n".join(blocks)


def format_flaky(outcomes: Sequence[TestOutcome]) -> str:
    """Each flaky test with why it failed before it passed (empty when none was flaky)."""
    blocks = []
    for t in outcomes:
        if t.status == FLAKY:
            details = t.details.rstrip() or "(the stream carried no traceback)"
            blocks.append(f"{_RULE}\nFLAKY: {t.test_id}\n{_THIN}\n{details}\n")
    return "\n".join(blocks)


def format_results(outcomes: Sequence[TestOutcome], heading: str) -> str:
    """The whole report: heading, counts, failures, skips, then every test."""
    summary = summarize(outcomes)
    parts = [heading, summary.line(), ""]
    failures = format_failures(outcomes)
    if failures:
        parts += [f"FAILED TESTS ({len(summary.failed)})", "", failures]
    flaky = format_flaky(outcomes)
    if flaky:
        parts += [f"FLAKY TESTS ({len(summary.flaky)}): failed, then passed when re-run; "
                  "not counted as failures", "", flaky]
    skips = [t for t in outcomes if t.status == "skip"]
    if skips:
        parts.append(f"SKIPPED TESTS ({len(skips)})")
        for t in skips:
            reason = " ".join(t.details.split())
            parts.append(f"  {t.test_id}" + (f"\n      {reason}" if reason else ""))
        parts.append("")
    parts.append(f"ALL TESTS ({len(outcomes)})")
    for t in outcomes:
        took = "" if t.duration is None else f"{t.duration:.2f}s"
        parts.append(f"  {t.status:<10}{took:>9}  {t.test_id}")
    return "\n".join(parts) + "\n"
