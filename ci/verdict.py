"""The baseline-aware verdict: which failures of a change's build are the change's fault.

Pure functions; ci/verdict_record.py gathers their inputs and stores the outcome.

Each failed test of a failed build is, in this order of precedence:

- **also failing on the tip**: it failed in the branch's latest baseline
  build of the same job (ci/baseline.py), finished within
  `verdict.baseline_max_age_hours`; the branch is broken, not the change;
- **known**: a known-failure signature matches it (ci/signatures.py);
- **new**: anything else. Only new failures give Verified -1.

Tests that failed and then passed when re-run in the same build are
**flaky** (runners/rerun.py): they never failed the build, and are listed
with the explained failures. A build whose every failure is explained gets
no -1: Verified 0 with the comment, or no vote (`verdict.explained`).

A test that failed in an earlier build of the same patchset and job and
passed in this one (a recheck) is flaky across builds: named in the comment,
never a reason for the vote either way (the tip may have moved between the
two builds, so passing once does not clear a failure of another merge).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from ci.signatures import SignatureMatch

ExplainedPolicy = Literal["zero", "no-vote"]


class FailureKind(enum.StrEnum):
    TIP = "also-failing-on-tip"
    KNOWN = "known"
    FLAKY = "flaky"
    NEW = "new"


@dataclass(frozen=True)
class BaselineEvidence:
    """The branch's latest finished baseline of a job: what failed on the tip."""

    build_id: int
    url: str  # its build page or logs: the comment links it
    finished_at: datetime
    commit: str | None
    failed: frozenset[str]


@dataclass(frozen=True)
class Explanation:
    """Why one test is (or is not) the change's fault."""

    test_id: str
    kind: FailureKind
    reason: str
    link: str | None = None


@dataclass(frozen=True)
class VerdictInputs:
    failed: Sequence[str]  # the build's failed test ids, in result order
    flaky: Sequence[str] = ()  # failed, then passed on re-run in this build
    baseline: BaselineEvidence | None = None
    matches: Sequence[SignatureMatch] = ()
    now: datetime | None = None  # for the baseline's age; None: it is not checked
    baseline_max_age: timedelta = timedelta(hours=24)


@dataclass(frozen=True)
class Verdict:
    explanations: tuple[Explanation, ...]

    @property
    def new(self) -> tuple[Explanation, ...]:
        return tuple(e for e in self.explanations if e.kind is FailureKind.NEW)

    @property
    def explained(self) -> tuple[Explanation, ...]:
        return tuple(e for e in self.explanations if e.kind is not FailureKind.NEW)

    @property
    def failures_explained(self) -> bool:
        """True when the build failed on tests and every one of them is explained."""
        failures = [e for e in self.explanations if e.kind is not FailureKind.FLAKY]
        return bool(failures) and all(e.kind is not FailureKind.NEW for e in failures)


def usable_baseline(baseline: BaselineEvidence | None, now: datetime | None,
                    max_age: timedelta) -> BaselineEvidence | None:
    """The baseline if it is recent enough to say anything about the tip."""
    if baseline is None:
        return None
    if now is not None and now - baseline.finished_at > max_age:
        return None
    return baseline


def classify(inputs: VerdictInputs) -> Verdict:
    """Each failed test's explanation, then each flaky test's."""
    baseline = usable_baseline(inputs.baseline, inputs.now, inputs.baseline_max_age)
    by_test: dict[str, SignatureMatch] = {}
    for match in inputs.matches:
        if match.test_id is not None:
            by_test.setdefault(match.test_id, match)
    found: list[Explanation] = []
    for test_id in dict.fromkeys(inputs.failed):
        if baseline is not None and test_id in baseline.failed:
            commit = f" at {baseline.commit[:12]}" if baseline.commit else ""
            found.append(Explanation(test_id, FailureKind.TIP,
                                     f"also fails on the branch tip{commit} "
                                     f"(baseline build {baseline.build_id})", baseline.url))
        elif (known := by_test.get(test_id)) is not None:
            found.append(Explanation(test_id, FailureKind.KNOWN,
                                     f"known failure {known.signature_id}", known.bug))
        else:
            found.append(Explanation(test_id, FailureKind.NEW, "new failure"))
    for test_id in dict.fromkeys(inputs.flaky):
        found.append(Explanation(test_id, FailureKind.FLAKY, "flaky: passed on re-run"))
    return Verdict(tuple(found))


def vote_for_failure(verdict: Verdict, policy: ExplainedPolicy) -> int | None:
    """The vote of a failed build of a voting job: -1 unless every failure is explained."""
    if not verdict.failures_explained:
        return -1
    return 0 if policy == "zero" else None


@dataclass(frozen=True)
class Assessment:
    """A finished build's verdict and the evidence the comment names."""

    verdict: Verdict
    matches: tuple[SignatureMatch, ...] = ()
    # (test id, earlier build id): failed in an earlier build of this patchset, passed now.
    recheck_flaky: tuple[tuple[str, int], ...] = field(default_factory=tuple)


LISTED = 20  # tests named per section of a comment; the rest are in test-results.txt


def _listed(lines: list[str], total: int) -> list[str]:
    if total > LISTED:
        return [*lines[:LISTED], f"- and {total - LISTED} more (test-results.txt)"]
    return lines


def _link(text: str | None) -> str:
    return f" {text}" if text else ""


def format_assessment(assessment: Assessment) -> list[str]:
    """The comment's verdict sections: new failures, explained ones, flaky tests, the
    signatures that matched. Empty when there is nothing to say."""
    verdict = assessment.verdict
    parts: list[str] = []
    new = verdict.new
    explained = [e for e in verdict.explained if e.kind is not FailureKind.FLAKY]
    flaky = [e for e in verdict.explained if e.kind is FailureKind.FLAKY]
    if new and explained:
        parts += ["", f"New failures ({len(new)}): these count against the change:"]
        parts += _listed([f"- {e.test_id}" for e in new], len(new))
    if explained:
        parts += ["", f"Explained failures ({len(explained)}): not counted against the change:"]
        parts += _listed([f"- {e.test_id}: {e.reason}{_link(e.link)}" for e in explained],
                         len(explained))
    if flaky:
        parts += ["", f"Flaky tests ({len(flaky)}): failed, then passed when re-run; "
                  "not counted against the change:"]
        parts += _listed([f"- {e.test_id}" for e in flaky], len(flaky))
    if assessment.recheck_flaky:
        total = len(assessment.recheck_flaky)
        parts += ["", f"Flaky on recheck ({total}): failed in an earlier build of this "
                  "patchset, passed in this one:"]
        parts += _listed([f"- {test_id} (failed in build {earlier})"
                          for test_id, earlier in assessment.recheck_flaky], total)
    signatures = {m.signature_id: m.bug for m in assessment.matches}
    if signatures:
        parts += ["", f"Known-failure signatures matched ({len(signatures)}):"]
        parts += [f"- {name}: {bug}" for name, bug in signatures.items()]
    return parts
