"""The `hyperv-ci` command line: the root group and where each command lives.

A command's module is imported only when that command runs: `hyperv-ci alive`
is a container healthcheck run every few seconds, and must not pay for
SQLAlchemy, paramiko and Flask, which the processes load. `--help` loads
them all (it shows each command's summary).

The commands: ci/app/run.py (the processes, check-config, db), ci/app/admin.py
(queue, builds, reports, events, render), ci/app/nodes.py, ci/app/alive.py.
The simulators have their own command, `hyperv-ci-sim` (sim/cli.py).
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from ci.app.common import DEFAULT_CONFIG, Ctx

# name → "module:attribute" of its click command (or group).
COMMANDS = {
    "check-config": "ci.app.run:check_config",
    "db": "ci.app.run:db",
    "listen": "ci.app.run:listen",
    "worker": "ci.app.run:worker",
    "dashboard": "ci.app.run:dashboard",
    "demo": "ci.app.run:demo",
    "alive": "ci.app.alive:alive",
    "enqueue": "ci.app.admin:enqueue",
    "builds": "ci.app.admin:builds",
    "render": "ci.app.admin:render",
    "reports": "ci.app.admin:reports",
    "events": "ci.app.admin:events",
    "nodes": "ci.app.nodes:nodes",
    "users": "ci.app.users:users",
    "baseline": "ci.app.baseline:baseline",
    "signatures": "ci.app.signatures:signatures",
    "lab": "ci.app.lab:lab",
}


class LazyGroup(click.Group):
    """A group whose commands are imported when they are looked up (click's own
    "lazily loading subcommands" pattern)."""

    def __init__(self, *args: object, lazy: dict[str, str], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = self.lazy.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        module, _, attribute = target.partition(":")
        command = getattr(importlib.import_module(module), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{target} is not a click command")
        return command


@click.group(cls=LazyGroup, lazy=COMMANDS)
@click.option("-c", "--config", "config_path", envvar="HYPERV_CI_CONFIG",
              default=DEFAULT_CONFIG, show_default=True, help="The YAML configuration file.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.pass_context
def main(ctx: click.Context, config_path: str, verbose: bool) -> None:
    """hyperv-ci: a third-party CI for OpenStack's Hyper-V drivers."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("paramiko").setLevel(logging.WARNING)
    # Alembic narrates every schema check; ci.db says when it really upgrades.
    logging.getLogger("alembic").setLevel(logging.DEBUG if verbose else logging.WARNING)
    source = ctx.get_parameter_source("config_path")
    ctx.obj = Ctx(config_path, defaulted=source == click.core.ParameterSource.DEFAULT)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
