"""The verdict's I/O: gather a finished build's evidence, store the outcome, read it back.

`assess` runs in the transaction that finishes the build (ci/report.py
`queue_report`), after its test results are added: it matches the
known-failure signatures, finds the branch's baseline and the patchset's
earlier builds, classifies the failures (ci/verdict.py, pure) and stores the
signature matches and the explanations, so the build page shows what the
vote's comment said.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from ci.baseline import FAILING, latest_baseline
from ci.config import Config
from ci.models import Build, BuildState, FailureVerdict, SignatureMatch, TestResult, utcnow
from ci.signatures import FailedTest, match_failures
from ci.signatures import SignatureMatch as Match
from ci.verdict import Assessment, Verdict, VerdictInputs, classify, recheck_flaky

FLAKY = "flaky"
PASSING = ("success", "xfail", FLAKY)


def _results(session: Session, build_id: int, statuses: tuple[str, ...]) -> list[TestResult]:
    return list(session.scalars(select(TestResult).where(
        TestResult.build_id == build_id, TestResult.status.in_(statuses))
        .order_by(TestResult.id)))


def _match(session: Session, build: Build, config: Config,
           failed: list[TestResult]) -> tuple[Match, ...]:
    signatures = config.verdict.known_failures
    if not signatures:
        return ()
    log_dir = Path(build.log_path) if build.log_path else None
    return tuple(match_failures(signatures, [FailedTest(t.test_id, t.details) for t in failed],
                                log_dir, config.verdict.scan_bytes))


def _own_and_earlier_failures(session: Session, build: Build) -> list[TestResult]:
    """The build's failed and flaky results, and the failed results of the earlier
    finished builds of the same patchset and job (none for a baseline), by build."""
    own = and_(TestResult.build_id == build.id, TestResult.status.in_((*FAILING, FLAKY)))
    where = own
    if build.patchset_id is not None:
        where = or_(own, and_(Build.patchset_id == build.patchset_id, Build.job == build.job,
                              Build.id < build.id, Build.finished_at.is_not(None),
                              TestResult.status.in_(FAILING)))
    return list(session.scalars(select(TestResult).join(Build).where(where)
                                .order_by(TestResult.build_id, TestResult.id)))


def assess(session: Session, build: Build, config: Config) -> Assessment:
    """Classify a finished build's failures and store the signature matches and verdict.

    A baseline build's signature matches are stored too; it has no verdict (nothing
    is reported for it).
    """
    # One statement: this build's failed and flaky results, and the failures of the
    # earlier builds of its patchset and job (the claim-to-result path has a budget).
    own: list[TestResult] = []
    earlier: dict[str, int] = {}
    for result in _own_and_earlier_failures(session, build):
        if result.build_id == build.id:
            own.append(result)
        else:
            earlier[result.test_id] = result.build_id  # ordered by build: the newest wins
    failed = [t for t in own if t.status in FAILING]
    flaky = [t for t in own if t.status == FLAKY]
    matches = _match(session, build, config, failed) if build.state == BuildState.FAILED else ()
    if build.patchset is None:
        baseline_only = Assessment(Verdict(()), matches)
        _store(session, build, baseline_only)
        return baseline_only
    baseline = None
    if build.patchset is not None and failed:
        change = build.patchset.change
        baseline = latest_baseline(session, change.project, change.branch, build.job)
    verdict = classify(VerdictInputs(
        failed=[t.test_id for t in failed], flaky=[t.test_id for t in flaky], baseline=baseline,
        matches=matches, now=utcnow(),
        baseline_max_age=timedelta(hours=config.verdict.baseline_max_age_hours)))
    passing = [t.test_id for t in _results(session, build.id, PASSING)] if earlier else []
    assessment = Assessment(verdict, matches, tuple(recheck_flaky(earlier, passing)))
    _store(session, build, assessment)
    return assessment


def _store(session: Session, build: Build, assessment: Assessment) -> None:
    session.add_all(SignatureMatch(build_id=build.id, signature_id=m.signature_id, bug=m.bug,
                                   test_id=m.test_id, file=m.file, excerpt=m.excerpt)
                    for m in assessment.matches)
    session.add_all(FailureVerdict(build_id=build.id, test_id=e.test_id, kind=e.kind.value,
                                   reason=e.reason, link=e.link)
                    for e in assessment.verdict.explanations)
    session.flush()


def build_verdict(session: Session, build_id: int) -> dict[str, Any]:
    """What the build page's verdict panel shows (dashboard/templates/_verdict.html)."""
    verdicts = list(session.scalars(select(FailureVerdict).where(
        FailureVerdict.build_id == build_id).order_by(FailureVerdict.id)))
    matches = list(session.scalars(select(SignatureMatch).where(
        SignatureMatch.build_id == build_id).order_by(SignatureMatch.id)))
    return {
        "explanations": [{"test_id": v.test_id, "kind": v.kind, "reason": v.reason,
                          "link": v.link} for v in verdicts],
        "matches": [{"signature": m.signature_id, "bug": m.bug, "test_id": m.test_id,
                     "file": m.file, "excerpt": m.excerpt} for m in matches],
    }
