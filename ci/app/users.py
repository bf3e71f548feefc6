"""`hyperv-ci users`: the dashboard's accounts (add, remove, disable, list).

A password is never an argument (argv is visible to every user of the host
in `ps` and lands in shell history): it is asked twice at a prompt that does
not echo, or read from `--password-file` (`-` for standard input, for scripts).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ci import accounts
from ci.app.common import Ctx
from ci.app.connect import sessions_of


@click.group()
def users() -> None:
    """Dashboard accounts: who may recheck, abort, drain and enable."""


def _password(password_file: str | None) -> str:
    if password_file == "-":  # noqa: S105 - the name for standard input
        return sys.stdin.readline().rstrip("\r\n")
    if password_file:
        # One line; the trailing newline an editor or `echo` adds is not part of it.
        return Path(password_file).read_text(encoding="utf-8").rstrip("\r\n")
    return str(click.prompt("Password", hide_input=True, confirmation_prompt=True))


@users.command("add")
@click.argument("name")
@click.option("--password-file", type=click.Path(dir_okay=False, allow_dash=True),
              help="Read the password from this file ('-': standard input) instead of a prompt.")
@click.pass_obj
def users_add(obj: Ctx, name: str, password_file: str | None) -> None:
    """Add the operator NAME (the password is asked twice, or read from a file)."""
    password = _password(password_file)
    try:
        with sessions_of(obj.config)() as session, session.begin():
            account = accounts.create(session, name, password)
    except accounts.AccountError as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
    click.echo(f"{account.name} added ({account.role})")


@users.command("remove")
@click.argument("name")
@click.pass_obj
def users_remove(obj: Ctx, name: str) -> None:
    """Delete NAME's account (its audit entries keep the name; its sessions end)."""
    try:
        with sessions_of(obj.config)() as session, session.begin():
            removed = accounts.remove(session, name)
    except accounts.AccountError as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
    if not removed:
        click.echo(f"error: no account {name!r}", err=True)
        raise SystemExit(2)
    click.echo(f"{name} removed")


@users.command("disable")
@click.argument("name")
@click.option("--undo", is_flag=True, help="Enable the account again.")
@click.pass_obj
def users_disable(obj: Ctx, name: str, undo: bool) -> None:
    """Stop NAME from logging in or acting, keeping the account (its sessions end)."""
    try:
        with sessions_of(obj.config)() as session, session.begin():
            found = accounts.set_disabled(session, name, not undo)
    except accounts.AccountError as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
    if not found:
        click.echo(f"error: no account {name!r}", err=True)
        raise SystemExit(2)
    click.echo(f"{name} {'enabled' if undo else 'disabled'}")


@users.command("list")
@click.pass_obj
def users_list(obj: Ctx) -> None:
    """Every account, its role, when it was made, whether it is disabled."""
    with sessions_of(obj.config)() as session:
        rows = accounts.list_accounts(session)
    for account in rows:
        state = "disabled" if account.disabled else "active"
        click.echo(f"{account.name:<24} {account.role:<10} {state:<9} "
                   f"{account.created_at:%Y-%m-%d %H:%M} UTC")
