"""`hyperv-ci nodes`: list the pool, drain a node, clean, check and enable one."""

from __future__ import annotations

import click
from sqlalchemy import select

from ci.app.common import Ctx
from ci.app.connect import sessions_of
from ci.models import Node
from runners.pool import NodeBusy, enable, set_drained, sync_nodes
from runners.recovery import UnknownNode, enable_node


@click.group()
def nodes() -> None:
    """The node pool."""


@nodes.command("list")
@click.pass_obj
def nodes_list(obj: Ctx) -> None:
    """Show every node and its state."""
    sessions = sessions_of(obj.config)
    with sessions() as session, session.begin():
        sync_nodes(session, obj.config.nodes)
    with sessions() as session:
        for node in session.scalars(select(Node).order_by(Node.name)):
            drained = " (drained)" if node.drained else ""
            click.echo(f"{node.name:<20} {node.label:<10} {node.state:<10}{drained} {node.message}")


@nodes.command("drain")
@click.argument("name")
@click.option("--undo", is_flag=True, help="Undrain instead.")
@click.pass_obj
def nodes_drain(obj: Ctx, name: str, undo: bool) -> None:
    """Stop giving NAME new builds (a running build finishes)."""
    with sessions_of(obj.config)() as session, session.begin():
        sync_nodes(session, obj.config.nodes)  # a fresh database knows no node yet
        if not set_drained(session, name, not undo):
            click.echo(f"error: no node {name!r}", err=True)
            raise SystemExit(2)
    click.echo(f"{name} {'undrained' if undo else 'drained'}")


@nodes.command("enable")
@click.argument("name")
@click.option("--force", is_flag=True,
              help="UNSAFE: skip the cleanup and the health check and put the node back "
              "as it is (whatever a build left running on it stays).")
@click.pass_obj
def nodes_enable(obj: Ctx, name: str, force: bool) -> None:
    """Clean NAME, check it, and put it back into the pool.

    Runs the job's cleanup on the node (for the build that left it dirty) and
    a health check first, and refuses, with the reason, if either fails.
    """
    sessions = sessions_of(obj.config)
    try:
        if force:
            with sessions() as session, session.begin():
                sync_nodes(session, obj.config.nodes)  # a fresh database knows no node yet
                if enable(session, name, "enabled by an operator with --force: not cleaned "
                          "nor checked", force=True) is None:
                    raise UnknownNode(f"no node {name!r}")
            click.echo(f"{name} enabled WITHOUT cleanup or health check (--force)")
            return
        verdict = enable_node(obj.config, sessions, name)
    except UnknownNode as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
    except NodeBusy as exc:
        # Its state belongs to that build or recovery: release or the reaper decides it.
        click.echo(f"error: {exc}; enable it once that is over", err=True)
        raise SystemExit(1) from None
    if not verdict.ready:
        click.echo(f"error: {name} not enabled ({verdict.cause}): {verdict.message}", err=True)
        raise SystemExit(1)
    click.echo(f"{name} {verdict.message}")
