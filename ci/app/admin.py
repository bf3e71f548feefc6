"""Operator commands on the database: queue a change, list builds, reports and
events, retry reports, and render what a job would send."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from ci.app.common import Ctx
from ci.app.connect import sessions_of
from ci.baseline import change_info_of
from ci.config import Config, ConfigError
from ci.db import make_sessionmaker, read_only_engine, schema_is_current
from ci.enqueue import known_change_ref, manual_enqueue, parse_change_spec
from ci.gerrit_errors import GerritError
from ci.models import Build, Event, Report, ReportState
from ci.report import requeue_failed
from runners.render import render_command


@click.command()
@click.argument("project")
@click.argument("change")
@click.option("--job", "jobs", multiple=True, help="Job to run (default: the project's jobs).")
@click.pass_obj
def enqueue(obj: Ctx, project: str, change: str, jobs: tuple[str, ...]) -> None:
    """Queue builds for CHANGE[,PATCHSET] of PROJECT (a manual recheck)."""
    config = obj.config
    try:
        created = manual_enqueue(config, sessions_of(config), project, change, list(jobs))
    except ValueError as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
    except GerritError as exc:  # looking the change up failed: say so, no traceback
        click.echo(f"error: cannot look up {project} {change} in Gerrit: {exc}", err=True)
        raise SystemExit(1) from None
    for build_id, job in created:
        click.echo(f"queued build {build_id}: {job}")
    if not created:
        click.echo("nothing queued (a build of that patchset is already waiting, "
                   "or a newer patchset replaced it)")


def _build_dict(build: Build) -> dict[str, Any]:
    # A baseline build (ci/baseline.py) runs a branch tip: change and patchset 0.
    change = change_info_of(build)
    return {
        "id": build.id, "job": build.job, "state": build.state, "reason": build.reason,
        "project": change.project, "change": change.number, "patchset": change.patchset,
        "subject": change.subject, "owner": change.owner_name,
        "created": build.created_at.isoformat(),
        "finished": build.finished_at.isoformat() if build.finished_at else None,
        "log_url": build.log_url, "summary": build.summary,
    }


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--limit", default=50, show_default=True)
@click.pass_obj
def builds(obj: Ctx, as_json: bool, limit: int) -> None:
    """List recent builds."""
    with sessions_of(obj.config)() as session:
        rows = [_build_dict(b) for b in
                session.scalars(select(Build).order_by(Build.id.desc()).limit(limit))]
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    for row in rows:
        click.echo(f"{row['id']:>5} {row['state']:<14} {row['change']},{row['patchset']:<4} "
                   f"{row['job']:<20} {row['project']:<28} {row['subject']}")


@click.command()
@click.argument("job")
@click.option("--change", "change_spec", required=True, help="CHANGE,PATCHSET to render for.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
@click.pass_obj
def render(obj: Ctx, job: str, change_spec: str, out_dir: str) -> None:
    """Write every script and config JOB would send, one file each."""
    config = obj.config
    if job not in config.jobs:
        click.echo(f"error: unknown job {job!r}", err=True)
        raise SystemExit(2)
    try:
        number, patchset = parse_change_spec(change_spec)
    except ValueError as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
    # The real change when the database knows it; otherwise an example one.
    change = _preview_change(config, number, patchset)
    for path in render_command(config, job, change_spec, Path(out_dir), change=change):
        click.echo(str(path))


def _preview_change(config: Config, number: int, patchset: int | None) -> Any:
    """The change as the database knows it, read without creating, migrating or
    writing the database; None (an example change) when it cannot be read."""
    try:
        engine = read_only_engine(config.database.sqlalchemy_url())
        if engine is None:
            return None
        try:
            if not schema_is_current(engine):
                click.echo("note: the database has no current schema; rendering an example "
                           "change", err=True)
                return None
            return known_change_ref(make_sessionmaker(engine), number, patchset)
        finally:
            engine.dispose()
    except (SQLAlchemyError, OSError, ConfigError) as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        click.echo(f"note: cannot read the database ({reason}); rendering an example change",
                   err=True)
        return None


@click.group()
def reports() -> None:
    """The votes and comments outbox."""


@reports.command("list")
@click.option("--failed", "only_failed", is_flag=True, help="Only reports that gave up.")
@click.option("--refused", "only_refused", is_flag=True,
              help="Only reports whose vote Gerrit refused (posted without it; fix the "
              "CI account's label permissions or gerrit.label).")
@click.option("--not-sent", "only_not_sent", is_flag=True,
              help="Only reports withheld because the change was abandoned or merged first.")
@click.pass_obj
def reports_list(obj: Ctx, only_failed: bool, only_refused: bool,
                 only_not_sent: bool) -> None:
    """Show the newest reports: state, attempts, change, vote, last error.

    `not-sent`: the change closed before the report went out (nothing posted).
    """
    query = select(Report).order_by(Report.id.desc()).limit(50)
    wanted = [state for state, on in ((ReportState.FAILED, only_failed),
                                      (ReportState.LABEL_REFUSED, only_refused),
                                      (ReportState.NOT_SENT, only_not_sent)) if on]
    if wanted:
        query = query.where(Report.state.in_(wanted))
    with sessions_of(obj.config)() as session:
        for r in session.scalars(query):
            vote = "" if r.vote is None else f"{r.label}{r.vote:+d}"
            click.echo(f"{r.id:>6} {r.state:<13} {r.attempts:>3}x {r.change_number},"
                       f"{r.patchset_number:<4} {vote:<12} {r.last_error[:80]}")


@reports.command("retry")
@click.argument("report_id", type=int, required=False)
@click.option("--all-failed", is_flag=True, help="Every report that gave up.")
@click.pass_obj
def reports_retry(obj: Ctx, report_id: int | None, all_failed: bool) -> None:
    """Send a report that gave up again (REPORT_ID, or --all-failed)."""
    if (report_id is None) == (not all_failed):
        click.echo("error: give a REPORT_ID or --all-failed", err=True)
        raise SystemExit(2)
    with sessions_of(obj.config)() as session, session.begin():
        requeued = requeue_failed(session, report_id)
    if report_id is not None and not requeued:
        click.echo(f"error: no failed report {report_id}", err=True)
        raise SystemExit(2)
    click.echo(f"requeued {len(requeued)} report(s): a running worker sends them")


@click.group()
def events() -> None:
    """The stored Gerrit events."""


@events.command("list")
@click.option("--failed", "only_failed", is_flag=True,
              help="Only events the scheduler gave up on, with the reason.")
@click.option("--pending", "only_pending", is_flag=True, help="Only events not handled yet.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10000))
@click.pass_obj
def events_list(obj: Ctx, only_failed: bool, only_pending: bool, limit: int) -> None:
    """Show the newest events: id, received, type, state, outcome."""
    query = select(Event.id, Event.received_at, Event.type, Event.processed_at,
                   Event.failed_at, Event.outcome).order_by(Event.id.desc()).limit(limit)
    if only_failed:
        query = query.where(Event.failed_at.is_not(None))
    if only_pending:
        query = query.where(Event.processed_at.is_(None))
    with sessions_of(obj.config)() as session:
        for row in session.execute(query):
            state = "failed" if row.failed_at else ("done" if row.processed_at else "pending")
            outcome = (row.outcome or "").replace("\n", " ")[:160]
            click.echo(f"{row.id:>8} {row.received_at:%Y-%m-%d %H:%M:%S} {row.type[:24]:<24} "
                       f"{state:<8} {outcome}")
