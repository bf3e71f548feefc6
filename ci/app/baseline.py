"""`hyperv-ci baseline`: run a job on a branch tip now, list the baseline builds."""

from __future__ import annotations

import re

import click

from ci.app.common import Ctx
from ci.app.connect import sessions_of
from ci.baseline import list_baselines, manual_slot, queue_baseline
from ci.models import utcnow


@click.group()
def baseline() -> None:
    """Baseline builds: a job run on a branch tip, to compare changes' failures with."""


@baseline.command("run")
@click.option("--project", required=True, help="A configured project, e.g. openstack/nova.")
@click.option("--branch", required=True, help="A branch the project's config watches.")
@click.option("--job", "jobs", multiple=True, help="The job to run (default: the project's).")
@click.pass_obj
def baseline_run(obj: Ctx, project: str, branch: str, jobs: tuple[str, ...]) -> None:
    """Queue a baseline build of BRANCH's tip now (besides the schedule)."""
    config = obj.config
    configured = next((p for p in config.projects if p.name == project), None)
    if configured is None:
        raise click.UsageError(f"{project!r} is not a configured project")
    if not any(re.fullmatch(pattern, branch) for pattern in configured.branches):
        raise click.UsageError(f"{project} does not watch branch {branch!r} "
                               f"({', '.join(configured.branches)})")
    unknown = [job for job in jobs if job not in configured.jobs]
    if unknown:
        raise click.UsageError(f"not a job of {project}: {', '.join(unknown)}")
    slot = manual_slot(utcnow())
    with sessions_of(config)() as session, session.begin():
        queued = [queue_baseline(session, project, branch, job, slot, reason="baseline (manual)")
                  for job in (jobs or tuple(configured.jobs))]
        lines = [f"queued baseline build {b.id}: {b.job} on the tip of {project} {branch}"
                 for b in queued if b is not None]
    for line in lines:
        click.echo(line)


@baseline.command("list")
@click.option("--limit", default=20, show_default=True)
@click.pass_obj
def baseline_list(obj: Ctx, limit: int) -> None:
    """The newest baseline builds: state, branch, the commit they tested."""
    with sessions_of(obj.config)() as session:
        rows = list_baselines(session, limit)
    for row in rows:
        commit = (row.commit or "-")[:12]
        click.echo(f"{row.build_id:>5} {row.state:<10} {row.project} {row.branch} {row.job} "
                   f"{commit} {row.log_url or ''}".rstrip())
