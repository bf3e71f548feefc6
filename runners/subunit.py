"""Subunit v2 streams (from `tempest run --subunit` / `stestr run --subunit`) to per-test results.

The verdict of a tempest run comes from here, never from the runner's exit
code (`stestr run --subunit` exits 0 when tests fail) nor from grepping its
console output, whose format changes between releases.
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import subunit
import testtools
from testtools.testresult.real import TestDict

from runners.base import TestOutcome

logger = logging.getLogger(__name__)

__all__ = ["FLAKY", "STATUSES", "STREAM_STATUSES", "Summary", "TestOutcome", "parse_subunit",
           "summarize"]

# What a subunit stream can end a test with.
STREAM_STATUSES = ("success", "fail", "skip", "xfail", "uxsuccess")
# Plus ours: a test that failed, then passed when re-run (runners.rerun): not a failure.
FLAKY = "flaky"
STATUSES = (*STREAM_STATUSES, FLAKY)
_FAILING = frozenset({"fail", "uxsuccess"})
# Details worth showing for a test, most useful first.
_DETAIL_ORDER = ("traceback", "reason")


@dataclass(frozen=True)
class Summary:
    """Counts per status and the verdict of a run."""

    counts: dict[str, int] = field(default_factory=dict)
    total: int = 0
    failed: tuple[str, ...] = ()  # ids of fail and uxsuccess tests, in stream order
    flaky: tuple[str, ...] = ()  # ids of tests that passed only when re-run

    @property
    def executed(self) -> int:
        """Tests that ran (everything but skips; a flaky test ran)."""
        return self.total - self.counts.get("skip", 0)

    @property
    def passed(self) -> bool:
        """No failure, no unexpected success, and at least one test really ran."""
        return not self.failed and self.executed > 0

    def line(self) -> str:
        """A one-line human summary, e.g. for a Gerrit comment."""
        parts = [f"{self.counts.get(s, 0)} {s}" for s in STATUSES if self.counts.get(s)]
        return f"{self.total} tests: " + (", ".join(parts) if parts else "none ran")


def _details_text(details: dict[str, Any]) -> str:
    names = [n for n in _DETAIL_ORDER if n in details]
    names += sorted(n for n in details if n not in _DETAIL_ORDER)
    texts: list[str] = []
    for name in names:
        content = details[name]
        if content.content_type.type != "text":
            continue  # binary attachments (e.g. captured pickles) are not for humans
        try:
            text = content.as_text()
        except (UnicodeDecodeError, LookupError):
            text = b"".join(content.iter_bytes()).decode("utf-8", errors="replace")
        if text.strip():
            texts.append(text if name in _DETAIL_ORDER else f"{name}:\n{text}")
    return "\n".join(texts)


def _duration(timestamps: Iterable[Any]) -> float | None:
    start, stop = list(timestamps)[:2]
    if start is None or stop is None:
        return None
    return max((stop - start).total_seconds(), 0.0)


def parse_subunit(stream: BinaryIO | bytes) -> list[TestOutcome]:
    """Every test of a subunit v2 stream, in the order they completed.

    Bytes that are not subunit are tolerated (collected under a "stdout"
    attachment and ignored); a corrupt packet shows up as a failing test
    named `subunit.parser`, so a damaged stream can never pass. A test the
    stream started but never finished (a worker crashed) counts as `fail`.
    """
    fileobj: BinaryIO = io.BytesIO(stream) if isinstance(stream, bytes | bytearray) else stream
    outcomes: list[TestOutcome] = []

    def on_test(test: TestDict) -> None:
        status = test["status"]
        if status == "exists":
            return  # the enumeration event both producers send before running
        details = _details_text(test["details"])
        if status not in STREAM_STATUSES:
            logger.warning("test %s ended with status %r; counting it as failed",
                           test["id"], status)
            details = (details + "\n" if details else "") + "the test did not complete"
            status = "fail"
        outcomes.append(TestOutcome(test["id"], status, _duration(test["timestamps"]), details))

    result = testtools.StreamToDict(on_test)
    case = subunit.ByteStreamToStreamResult(fileobj, non_subunit_name="stdout")
    result.startTestRun()
    try:
        case.run(result)
    finally:
        result.stopTestRun()
    return outcomes


def summarize(results: Iterable[TestOutcome]) -> Summary:
    """Count the results per status and decide whether the run passed."""
    results = list(results)
    counts = Counter(r.status for r in results)
    failed = tuple(r.test_id for r in results if r.status in _FAILING)
    flaky = tuple(r.test_id for r in results if r.status == FLAKY)
    return Summary(counts=dict(counts), total=len(results), failed=failed, flaky=flaky)
