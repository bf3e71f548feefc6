"""Reporting results back to Gerrit: the outbox (I/O). The comment and the vote
are ci/report_format.py's (pure).

A finished build queues one `Report` row in the transaction that finishes
it (unique per build: never two votes for one build). The reporter claims
pending rows, sends `gerrit review`, and retries with capped backoff for a
time budget (a day by default: Gerrit maintenance must not cost a vote);
before a retry it asks Gerrit whether the earlier attempt landed after all,
so a lost acknowledgement does not produce a second comment. Every worker
process sends the outbox from its own thread (`Worker.run(report=...)`).

A vote Gerrit refuses (the CI account may not vote that label or value) fails
the whole review, comment included; that is permanent, so the reporter posts
the same comment without the vote, once, marks the report `label-refused`
and logs, at ERROR, what to fix.

Before it sends, the reporter asks Gerrit whether the change is still open
(ci.report_checks: one query for every due report): a report for an abandoned
or merged change is recorded `not-sent`, never posted, whether or not the
listener saw the change close. A send Gerrit answers with a permanent error
("no such patch set") is failed at once, with Gerrit's words; only failures
that may clear are retried for the time budget.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol, cast

from sqlalchemy import Table, insert, select, update
from sqlalchemy.orm import Session, make_transient_to_detached, sessionmaker

from ci.config import Config
from ci.db import rows_changed
from ci.gerrit_errors import GerritRejected, LabelRefused
from ci.models import Build, BuildState, Report, ReportState, TestResult, utcnow
from ci.report_checks import (
    CannotAsk,
    ChangeStatuses,
    SendFailure,
    Verdict,
    classify_send_error,
    closed_reason,
)
from ci.report_format import RESULT_WORDS, format_job_line, format_message, vote_for
from ci.verdict import vote_for_failure
from ci.verdict_record import assess
from ci.wakeup import REPORTS, announce

logger = logging.getLogger(__name__)

# TestResult.status of a test that failed, then passed when re-run (runners.subunit.FLAKY).
FLAKY_STATUS = "flaky"
# Sending a review claims its row for this long, so two reporters never send it twice.
# Every worker runs a reporter, so the claim must outlast the slowest send:
# GerritClient's 30 s timeouts for connect, banner, auth, the `already_posted`
# query and the review add up to minutes in the worst case.
CLAIM_SECONDS = 600
# What the verdict classifies: a build that ran its tests.
ASSESSED = (BuildState.SUCCEEDED, BuildState.FAILED)


def queue_report(session: Session, build: Build, config: Config,
                 flaky: Sequence[str] | None = None, *, has_results: bool = True,
                 ) -> Report | None:
    """Queue the build's report in the caller's transaction (None: nothing to report).

    `flaky`: the build's flaky test ids when the caller has them at hand (the
    worker does), else they are read from its stored results; `has_results=False`
    (the worker's word that the build stored no test result) spares the verdict
    its SELECT. The reporter is woken once the transaction commits (ci.wakeup).
    """
    state = BuildState(build.state)
    if build.patchset is None:
        # A baseline build (ci/baseline.py): never reported; its signature matches are kept.
        if state in ASSESSED:
            assess(session, build, config, has_results=has_results)
        return None
    # Assessed even when nothing is reported: it records the build's flips too.
    assessment = (assess(session, build, config, has_results=has_results)
                  if state in ASSESSED else None)
    if state not in RESULT_WORDS or not config.reporter.enabled:
        return None
    if state == BuildState.ERROR and not config.reporter.report_errors:
        return None
    job = config.jobs.get(build.job)
    voting = bool(job and job.voting)
    vote = vote_for(state, voting)
    line = format_job_line(build.job, build.log_url, state, build.duration_seconds)
    if assessment is not None and vote == -1:
        # Only new failures count against the change (ci/verdict.py).
        vote = vote_for_failure(assessment.verdict, config.verdict.explained)
    if flaky is None:
        flaky = list(session.scalars(
            select(TestResult.test_id).where(TestResult.build_id == build.id,
                                             TestResult.status == FLAKY_STATUS)
            .order_by(TestResult.id)))
    message = format_message(config.gerrit.ci_name, state, line, build.summary, flaky,
                             assessment, forced_by=build.forced_by)
    change = build.patchset.change
    now = utcnow()
    values = {
        "build_id": build.id, "project": change.project, "change_number": change.number,
        "patchset_number": build.patchset.number,
        "label": config.gerrit.label if vote is not None else None, "vote": vote,
        "message": message, "state": ReportState.PENDING, "attempts": 0,
        "next_attempt_at": now, "created_at": now, "sent_at": None, "last_error": "",
        "label_refused": None,
    }
    # A Core INSERT, not the ORM's flush (the unit of work was most of the cost of
    # queuing a report); every column is given, so the returned object is the row.
    report_id = session.execute(_INSERT_REPORT, values).scalar_one()
    report = Report(id=report_id, **values)
    make_transient_to_detached(report)
    session.add(report)  # persistent, as a flushed one was: callers may change it
    announce(session, REPORTS)
    return report


_INSERT_REPORT = insert(cast(Table, Report.__table__)).returning(Report.__table__.c.id)


class ReviewClient(Protocol):
    """The part of `ci.gerrit.GerritClient` the reporter uses."""

    def review(self, project: str, change: int, patchset: int, *, message: str,
               labels: dict[str, int] | None = None, tag: str | None = None) -> None: ...

    def query(self, query: str, *, current_patch_set: bool = ..., patch_sets: bool = ...,
              files: bool = ..., comments: bool = ...) -> list[dict[str, Any]]: ...


def _claim(session: Session) -> Report | None:
    now = utcnow()
    candidate = session.scalar(
        select(Report).where(Report.state == ReportState.PENDING, Report.next_attempt_at <= now)
        .order_by(Report.id).limit(1)
    )
    if candidate is None:
        return None
    result = session.execute(
        update(Report)
        .where(Report.id == candidate.id, Report.state == ReportState.PENDING,
               Report.next_attempt_at == candidate.next_attempt_at)
        .values(attempts=Report.attempts + 1,
                next_attempt_at=now + timedelta(seconds=CLAIM_SECONDS))
    )
    if rows_changed(result) != 1:
        return None
    session.refresh(candidate)
    return candidate


def requeue_failed(session: Session, report_id: int | None = None) -> list[Report]:
    """Put FAILED reports (one, or all) back in the outbox; returns them.

    For an operator once Gerrit is reachable again: the retry budget starts
    over, and the attempts count is kept, so the reporter first asks Gerrit
    whether an earlier attempt landed (a vote is still never posted twice).
    """
    query = select(Report).where(Report.state == ReportState.FAILED)
    if report_id is not None:
        query = query.where(Report.id == report_id)
    reports = list(session.scalars(query.order_by(Report.id)))
    now = utcnow()
    for report in reports:
        report.state = ReportState.PENDING
        report.created_at = report.next_attempt_at = now
        logger.info("report %s requeued by an operator (change %s,%s)", report.id,
                    report.change_number, report.patchset_number)
    if reports:
        announce(session, REPORTS)
    return reports


def already_posted(client: ReviewClient, report: Report, username: str) -> bool:
    """Did an earlier attempt of this report reach Gerrit (its message is on the change)?"""
    rows = client.query(f"change:{report.change_number}", comments=True)
    # The job line carries the build's own log URL: unique to this report.
    marker = next((ln for ln in report.message.splitlines() if ln.startswith("* ")), "")
    for row in rows:
        for comment in row.get("comments", []):
            reviewer = comment.get("reviewer", {})
            if reviewer.get("username") == username and marker and marker in comment.get(
                "message", ""
            ):
                return True
    return False


def _due_changes(sessions: sessionmaker[Session], limit: int) -> list[int]:
    """The changes of the reports due now: their statuses are asked for together."""
    with sessions() as session:
        return list(session.scalars(
            select(Report.change_number).where(Report.state == ReportState.PENDING,
                                               Report.next_attempt_at <= utcnow())
            .order_by(Report.id).limit(limit)))


def send_pending(
    sessions: sessionmaker[Session],
    client_factory: Callable[[], ReviewClient],
    config: Config,
    *,
    limit: int = 50,
) -> int:
    """Send due reports; returns how many were sent.

    A report whose change closed is recorded `not-sent`. A failed attempt
    that may work later backs off exponentially (capped at
    `reporter.max_backoff_seconds`) and is retried until
    `reporter.retry_seconds` after the report was queued; one that never
    can is failed at once.
    """
    sent = 0
    client: ReviewClient | None = None
    statuses = ChangeStatuses()
    due = _due_changes(sessions, limit)
    try:
        for _ in range(limit):
            with sessions() as session, session.begin():
                report = _claim(session)
            if report is None:
                break
            try:
                client = client or client_factory()
                closed = _deliver(sessions, client, report, config, statuses, due)
            except Exception as exc:
                _close(client)
                client = None
                _failed(sessions, report, config, classify_send_error(exc))
                continue
            if closed is not None:
                _not_sent(sessions, report, closed)
                continue
            refused = report.label_refused
            with sessions() as session, session.begin():
                session.execute(update(Report).where(Report.id == report.id).values(
                    state=ReportState.LABEL_REFUSED if refused else ReportState.SENT,
                    sent_at=utcnow(), last_error=refused or ""))
            sent += 1
            logger.info("report %s sent: change %s,%s vote %s", report.id, report.change_number,
                        report.patchset_number, "refused" if refused else report.vote)
    finally:
        # The reporter runs every few seconds: an unclosed client would leave
        # an SSH connection (and paramiko's thread) behind each time.
        _close(client)
    return sent


def _votes(report: Report) -> dict[str, int]:
    if report.label_refused or not report.label or report.vote is None:
        return {}
    return {report.label: report.vote}


def _deliver(sessions: sessionmaker[Session], client: ReviewClient, report: Report,
             config: Config, statuses: ChangeStatuses, due: list[int]) -> str | None:
    """Post the report (unless an earlier attempt did); without the vote once Gerrit refused it.

    Returns why it was not posted (`change closed (ABANDONED)`), else None.
    """
    if report.attempts > 1 and _posted_earlier(client, report, config):
        logger.info("report %s was already posted by an earlier attempt", report.id)
        return None
    status = statuses.status(client, report.change_number, due)
    if status is None:
        raise GerritRejected(f"change {report.change_number} is not in Gerrit (deleted, or not "
                             f"visible to {config.gerrit.username})")
    closed = closed_reason(status)
    if closed is not None:
        return closed
    votes = _votes(report)
    try:
        client.review(report.project, report.change_number, report.patchset_number,
                      message=report.message, labels=votes, tag=config.gerrit.tag)
    except LabelRefused as refused:
        if not votes:
            raise
        _note_refusal(sessions, report, refused, config)
        # The same comment, log link and all, without the vote: Gerrit recorded
        # nothing of the refused review. Sent once; a transient failure of this
        # send is retried like any other, never with the vote again.
        client.review(report.project, report.change_number, report.patchset_number,
                      message=report.message, labels={}, tag=config.gerrit.tag)
    return None


def _posted_earlier(client: ReviewClient, report: Report, config: Config) -> bool:
    try:
        return already_posted(client, report, config.gerrit.username)
    except Exception as exc:
        # Not knowing is never a reason to post twice, nor to give up: retry.
        raise CannotAsk(f"cannot ask Gerrit whether an earlier attempt landed: "
                        f"{type(exc).__name__}: {exc}") from exc


def _note_refusal(sessions: sessionmaker[Session], report: Report, refused: LabelRefused,
                  config: Config) -> None:
    with sessions() as session, session.begin():
        # Only while our claim holds (another reporter may own the row now).
        result = session.execute(update(Report).where(
            Report.id == report.id, Report.state == ReportState.PENDING,
            Report.next_attempt_at == report.next_attempt_at).values(
                label_refused=refused.message))
    if rows_changed(result) != 1:
        raise refused
    report.label_refused = refused.message
    vote = f"{report.label}{report.vote:+d}" if report.vote is not None else report.label
    logger.error(
        "report %s: Gerrit refused the vote %s on change %s,%s (%s): %s. The comment is "
        "posted without it, and the vote is not retried. To fix: ask the Gerrit admins to "
        "grant label %s -1..+1 to %s on %s, or set gerrit.label to a label that account "
        "may vote on.", report.id, vote, report.change_number, report.patchset_number,
        report.project, refused.message, report.label, config.gerrit.username,
        report.project)


def _close(client: ReviewClient | None) -> None:
    close = getattr(client, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            logger.debug("closing the Gerrit client failed", exc_info=True)


def retry_delay(attempts: int, max_backoff: int) -> int:
    """Seconds before the next attempt: 2, 4, 8, ... capped at `max_backoff`."""
    return min(max_backoff, 2 ** min(attempts, 32))


def _failed(sessions: sessionmaker[Session], report: Report, config: Config,
            failure: SendFailure) -> None:
    if failure.verdict is Verdict.CHANGE_CLOSED:
        _not_sent(sessions, report, failure.reason)
        return
    error = failure.reason
    now = utcnow()
    give_up_at: datetime = report.created_at + timedelta(seconds=config.reporter.retry_seconds)
    # The last retry lands on the deadline itself rather than past it.
    next_at = min(now + timedelta(seconds=retry_delay(report.attempts,
                                                      config.reporter.max_backoff_seconds)),
                  give_up_at)
    final = failure.verdict is Verdict.FAIL_NOW
    give_up = final or now >= give_up_at
    values: dict[str, object] = {"last_error": error[:2000], "next_attempt_at": next_at}
    if give_up:
        values["state"] = ReportState.FAILED
    with sessions() as session, session.begin():
        # Only while our claim holds: if it ran out, another reporter owns the
        # row now (it may even have sent it, and SENT must stay SENT).
        result = session.execute(update(Report).where(
            Report.id == report.id, Report.state == ReportState.PENDING,
            Report.next_attempt_at == report.next_attempt_at).values(**values))
    if rows_changed(result) != 1:
        logger.warning("report %s attempt %s failed after its claim ran out: %s", report.id,
                       report.attempts, error)
    elif final:
        logger.error("report %s (change %s,%s vote %s) FAILED for good: Gerrit's answer cannot "
                     "change, so it is not retried; the vote was NOT posted: %s", report.id,
                     report.change_number, report.patchset_number, report.vote, error)
    elif give_up:
        logger.error("GIVING UP on report %s (change %s,%s vote %s) after %s attempts over "
                     "%s s; the vote was NOT posted; last error: %s", report.id,
                     report.change_number, report.patchset_number, report.vote,
                     report.attempts, config.reporter.retry_seconds, error)
    else:
        logger.warning("report %s attempt %s failed (retrying at %s): %s", report.id,
                       report.attempts, next_at.isoformat(timespec="seconds"), error)


def _not_sent(sessions: sessionmaker[Session], report: Report, reason: str) -> None:
    """The change closed before the report went out: record why, post nothing."""
    with sessions() as session, session.begin():
        result = session.execute(update(Report).where(
            Report.id == report.id, Report.state == ReportState.PENDING,
            Report.next_attempt_at == report.next_attempt_at).values(
                state=ReportState.NOT_SENT, last_error=reason))
    if rows_changed(result) != 1:
        logger.warning("report %s: %s, noticed after its claim ran out", report.id, reason)
        return
    logger.warning("report %s NOT sent: %s (change %s,%s, vote %s withheld)", report.id, reason,
                   report.change_number, report.patchset_number, report.vote)
