"""The verdict's I/O: gather a finished build's evidence, store the outcome, read it back.

`assess` runs in the transaction that finishes the build (ci/report.py
`queue_report`), after its test results are added: it matches the
known-failure signatures, finds the branch's baseline and the patchset's
earlier builds, classifies the failures (ci/verdict.py, pure) and stores the
signature matches and the explanations, so the build page shows what the
vote's comment said.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

from sqlalchemy import (
    Row,
    Select,
    Table,
    and_,
    bindparam,
    insert,
    literal,
    null,
    or_,
    select,
    union_all,
)
from sqlalchemy.orm import Session

from ci.baseline import FAILING, latest_baseline
from ci.config import Config
from ci.models import (
    Build,
    BuildState,
    FailureVerdict,
    SignatureMatch,
    TestFlip,
    TestResult,
    utcnow,
)
from ci.signatures import FailedTest, match_failures
from ci.signatures import SignatureMatch as Match
from ci.test_flips import Run, recorded
from ci.verdict import (
    Assessment,
    FailureKind,
    Verdict,
    VerdictInputs,
    classify,
)

FLAKY = "flaky"


def _match(session: Session, build: Build, config: Config,
           failed: list[Run]) -> tuple[Match, ...]:
    signatures = config.verdict.known_failures
    if not signatures:
        return ()
    log_dir = Path(build.log_path) if build.log_path else None
    return tuple(match_failures(signatures, [FailedTest(t.test_id, t.details) for t in failed],
                                log_dir, config.verdict.scan_bytes))


_RESULTS = cast(Table, TestResult.__table__)
_BUILDS = cast(Table, Build.__table__)
_FLIPS = cast(Table, TestFlip.__table__)
_MATCHES = cast(Table, SignatureMatch.__table__)
_VERDICTS = cast(Table, FailureVerdict.__table__)


def _code_results_query(*, on_patchset: bool) -> Select[Any]:
    """The one statement of `_code_results`, built once per shape: building and hashing
    it for every build cost the worker more CPU than PostgreSQL spends running it.
    Core columns (no ORM entity): its rows become `Run`s, never objects."""
    own = and_(_RESULTS.c.build_id == bindparam("build_id"),
               _RESULTS.c.status.in_((*FAILING, FLAKY)))
    where = own
    if on_patchset:
        code = select(_BUILDS.c.id).where(
            _BUILDS.c.patchset_id == bindparam("patchset_id"), _BUILDS.c.job == bindparam("job"),
            or_(_BUILDS.c.id == bindparam("build_id"),
                and_(_BUILDS.c.id < bindparam("build_id"), _BUILDS.c.finished_at.is_not(None))))
        failed_tests = select(_RESULTS.c.test_id).where(_RESULTS.c.build_id.in_(code),
                                                        _RESULTS.c.status.in_(FAILING))
        # build_id IN (a few builds) at the top: the results are read per build on
        # its index, never all of them (an OR around it would scan the table).
        where = and_(_RESULTS.c.build_id.in_(code), or_(
            _RESULTS.c.test_id.in_(failed_tests),
            and_(_RESULTS.c.build_id == bindparam("build_id"), _RESULTS.c.status == FLAKY)))
    return (select(_RESULTS.c.build_id, _RESULTS.c.test_id, _RESULTS.c.status,
                   _RESULTS.c.details, _BUILDS.c.finished_at, _BUILDS.c.state)
            .join_from(_RESULTS, _BUILDS, _BUILDS.c.id == _RESULTS.c.build_id).where(where)
            .order_by(_RESULTS.c.build_id, _RESULTS.c.id))


_CODE_RESULTS = _code_results_query(on_patchset=True)
_OWN_RESULTS = _code_results_query(on_patchset=False)


def _code_results(session: Session, build: Build) -> list[Run]:
    """One statement: the build's failed and flaky results and, on the earlier finished
    builds of its patchset and job (none for a baseline), every result of each test that
    failed in one of them or in this build (this build's too): all a flip needs."""
    # A Core statement does not autoflush: the caller's pending results go first.
    session.flush()
    if build.patchset_id is None:
        rows = session.execute(_OWN_RESULTS, {"build_id": build.id})
    else:
        rows = session.execute(_CODE_RESULTS, {"build_id": build.id,
                                               "patchset_id": build.patchset_id,
                                               "job": build.job})
    return [Run(r.build_id, r.test_id, r.status, r.finished_at, r.state, r.details or "")
            for r in rows]


def assess(session: Session, build: Build, config: Config, *,
           has_results: bool = True) -> Assessment:
    """Classify a finished build's failures and store the signature matches, the verdict
    and the flips its results add (ci/test_flips.py).

    A baseline build's signature matches and re-run flips are stored too; it has no
    verdict (nothing is reported for it).
    """
    # One statement: this build's failed and flaky results, and the results of the
    # earlier builds of its patchset and job that the verdict and the flips compare
    # (the claim-to-result path has a budget).
    # A build that stored no result (the caller knows: `has_results=False`) has
    # nothing of its own to classify or flip (ci.test_flips.recorded skips a test
    # that did not run in it), so the other builds' rows would change nothing.
    runs = _code_results(session, build) if has_results else []
    own = [r for r in runs if r.build_id == build.id]
    failed = [t for t in own if t.status in FAILING]
    flaky = [t for t in own if t.status == FLAKY]
    flips = recorded(build, runs)
    matches = _match(session, build, config, failed) if build.state == BuildState.FAILED else ()
    if build.patchset is None:
        baseline_only = Assessment(Verdict(()), matches)
        _store(session, build, baseline_only, flips)
        return baseline_only
    baseline = None
    if build.patchset is not None and failed:
        change = build.patchset.change
        baseline = latest_baseline(session, change.project, change.branch, build.job)
    verdict = classify(VerdictInputs(
        failed=[t.test_id for t in failed], flaky=[t.test_id for t in flaky], baseline=baseline,
        matches=matches, now=utcnow(),
        baseline_max_age=timedelta(hours=config.verdict.baseline_max_age_hours)))
    assessment = Assessment(verdict, matches, recovered_on_recheck(own, flips))
    _store(session, build, assessment, flips)
    return assessment


def recovered_on_recheck(own: Sequence[Run], flips: Sequence[TestFlip]
                         ) -> tuple[tuple[str, int], ...]:
    """(test id, earlier build) of each test that failed in an earlier build of this
    patchset and job and passes in this one: the comment's "flaky on recheck", read
    from the flips this build adds (ci/test_history.flips_of, the dashboard's rule),
    in this build's result order."""
    order = {r.test_id: i for i, r in reversed(list(enumerate(own)))}
    found = [(f.test_id, f.from_build_id) for f in flips
             if f.kind == "recheck" and f.recovered and f.from_build_id is not None]
    return tuple(sorted(found, key=lambda t: order.get(t[0], len(order))))


def _store(session: Session, build: Build, assessment: Assessment,
           flips: list[TestFlip]) -> None:
    """Core INSERTs (one executemany a table, none when there is nothing): the rows are
    read back by queries, never as these objects, so the ORM's flush is not needed."""
    matches = [{"build_id": build.id, "signature_id": m.signature_id, "bug": m.bug,
                "test_id": m.test_id, "file": m.file, "excerpt": m.excerpt}
               for m in assessment.matches]
    # A flaky test's explanation is its re-run flip (the same fact, one row):
    # build_verdict reads it back from there.
    verdicts = [{"build_id": build.id, "test_id": e.test_id, "kind": e.kind.value,
                 "reason": e.reason, "link": e.link}
                for e in assessment.verdict.explanations if e.kind is not FailureKind.FLAKY]
    # Every column ci.test_flips set on the flip (none is left to a default).
    flip_rows = [{c.key: vars(f)[c.key] for c in _FLIPS.c if c.key in vars(f)} for f in flips]
    for table, rows in ((_MATCHES, matches), (_VERDICTS, verdicts), (_FLIPS, flip_rows)):
        if rows:
            session.execute(insert(table), rows)


def build_verdict(session: Session, build_id: int) -> dict[str, Any]:
    """What the build page's verdict panel shows (dashboard/templates/_verdict.html): the
    stored explanations, then its flaky tests' (its re-run flips), and the matches."""
    stored = select(FailureVerdict.id, FailureVerdict.test_id, FailureVerdict.kind,
                    FailureVerdict.reason, FailureVerdict.link, literal(0).label("src")
                    ).where(FailureVerdict.build_id == build_id)
    reruns = select(TestFlip.id, TestFlip.test_id, literal(FailureKind.FLAKY.value),
                    literal(""), null(), literal(1)).where(
        TestFlip.build_id == build_id, TestFlip.kind == "rerun")
    rows: list[Row[Any]] = list(session.execute(union_all(stored, reruns).order_by("src", "id")))
    explained = [{"test_id": r.test_id, "kind": r.kind, "reason": r.reason, "link": r.link}
                 for r in rows if r.src == 0]
    # Builds assessed before migration 0012 stored their flaky explanations themselves.
    listed = {e["test_id"] for e in explained if e["kind"] == FailureKind.FLAKY.value}
    flaky = [r.test_id for r in rows if r.src == 1 and r.test_id not in listed]
    explained += [{"test_id": e.test_id, "kind": e.kind.value, "reason": e.reason,
                   "link": e.link} for e in classify(VerdictInputs(failed=(), flaky=flaky))
                  .explanations]
    matches = list(session.scalars(select(SignatureMatch).where(
        SignatureMatch.build_id == build_id).order_by(SignatureMatch.id)))
    return {
        "explanations": explained,
        "matches": [{"signature": m.signature_id, "bug": m.bug, "test_id": m.test_id,
                     "file": m.file, "excerpt": m.excerpt} for m in matches],
    }
