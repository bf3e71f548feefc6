"""The commands that run a process (listen, worker, dashboard, demo), check a
configuration, or upgrade the schema.

Each process checks at start what it will need (the files the configuration
names, Gerrit's answer) and exits 2 naming the problem; then it is wired in
ci/app/processes.py. Long-running commands stop cleanly on SIGINT and SIGTERM.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from ci.app import processes
from ci.app.common import Ctx, exit_on_problems, load
from ci.app.connect import check_gerrit
from ci.app.demo import run_demo
from ci.db import make_engine, upgrade
from ci.preflight import (
    all_problems,
    database_problems,
    gerrit_problems,
    listener_problems,
    worker_problems,
)


@click.command("check-config")
@click.argument("path", type=click.Path(dir_okay=False))
def check_config(path: str) -> None:
    """Validate a configuration file and the files it names; exit 2 naming each bad key."""
    config = load(path)
    exit_on_problems(path, all_problems(config))
    click.echo(f"{path}: OK ({len(config.projects)} projects, {len(config.jobs)} jobs, "
               f"{len(config.nodes)} nodes)")


@click.group()
def db() -> None:
    """Database schema commands."""


@db.command("upgrade")
@click.pass_obj
def db_upgrade(obj: Ctx) -> None:
    """Upgrade the database schema to the newest migration."""
    engine = make_engine(obj.config.database.sqlalchemy_url())
    upgrade(engine)
    click.echo(f"database at {engine.url.render_as_string(hide_password=True)} is up to date")


def _heartbeat_option(command: Any) -> Any:
    command = click.option("--heartbeat-interval", default=15.0, show_default=True,
                           help="Seconds between heartbeats.")(command)
    return click.option(
        "--heartbeat", type=click.Path(dir_okay=False, path_type=Path),
        help="Touch this file while the database answers (`hyperv-ci alive` reads it).",
    )(command)


def _heartbeat(path: Path | None, interval: float) -> processes.Heartbeat | None:
    return None if path is None else processes.Heartbeat(path, interval)


@click.command()
@_heartbeat_option
@click.pass_obj
def listen(obj: Ctx, heartbeat: Path | None, heartbeat_interval: float) -> None:
    """Follow Gerrit's event stream and queue builds."""
    exit_on_problems(obj.config_path, listener_problems(obj.config))
    check_gerrit(obj.config, obj.config_path)
    processes.run_listener(obj.config, heartbeat=_heartbeat(heartbeat, heartbeat_interval))


@click.command()
@click.option("--name", help="Worker name (default: from config, else the host name).")
@_heartbeat_option
@click.pass_obj
def worker(obj: Ctx, name: str | None, heartbeat: Path | None,
           heartbeat_interval: float) -> None:
    """Run queued builds and send their reports."""
    config = obj.config
    # The reporter reaches Gerrit from the worker: its files count too.
    reports = config.reporter.enabled
    exit_on_problems(obj.config_path, database_problems(config) + worker_problems(config)
                     + (gerrit_problems(config.gerrit) if reports else []))
    if reports:
        check_gerrit(config, obj.config_path)
    processes.run_worker(config, name=name, heartbeat=_heartbeat(heartbeat, heartbeat_interval))


@click.command()
@click.option("--host", help="Listen address (default from config).")
@click.option("--port", type=int, help="Port (default from config).")
@click.pass_obj
def dashboard(obj: Ctx, host: str | None, port: int | None) -> None:
    """Serve the dashboard (waitress)."""
    exit_on_problems(obj.config_path, database_problems(obj.config))
    processes.run_dashboard(obj.config, host, port)


@click.command()
@click.option("--config", "demo_config", default="etc/demo.yaml", show_default=True,
              help="The demo's configuration.")
@click.option("--state-dir", default=None, help="Where the demo keeps its state (default .demo).")
def demo(demo_config: str, state_dir: str | None) -> None:
    """Run everything on this machine against the simulated Gerrit and lab."""
    state = Path(state_dir or os.environ.get("HYPERV_CI_STATE_DIR", ".demo"))
    run_demo(Path(demo_config), state, processes.stop_on_signals())
