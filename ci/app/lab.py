"""`hyperv-ci lab check`: the lab preflight (runners/lab_check.py), one line per check."""

from __future__ import annotations

import logging

import click

from ci.app.common import Ctx


@click.group()
def lab() -> None:
    """The lab: its nodes, controllers and parent hosts."""


@lab.command("check")
@click.argument("names", nargs=-1, metavar="[NODE]...")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
@click.option("--job", "job_name", default=None,
              help="The devstack-hyperv job whose settings the nodes are checked against "
              "(default: the first one).")
@click.pass_obj
def lab_check(obj: Ctx, names: tuple[str, ...], as_json: bool, job_name: str | None) -> None:
    """Connect to every node and parent host (or the NODEs named) and check what builds need.

    Prints PASS or FAIL per check, with the fix under each FAIL; exits 1 if any
    check fails, 2 if the check cannot start (an unknown node, no job to check for).
    """
    from runners.lab_check import LabCheckError, run_lab_check

    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        # The report is the output; the executors' per-step INFO lines only with -v.
        logging.getLogger("runners").setLevel(logging.WARNING)
    try:
        report = run_lab_check(obj.config, names, job_name=job_name)
    except LabCheckError as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
    if as_json:
        click.echo(report.to_json())
    else:
        for line in report.lines():
            click.echo(line)
    if not report.ok:
        raise SystemExit(1)
