"""The `hyperv-ci` command line.

Long-running commands (listen, worker, dashboard, demo) stop cleanly on
SIGINT and SIGTERM: the handler sets an Event that every loop watches.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ci.config import Config, ConfigError, load_config

DEFAULT_CONFIG = "etc/hyperv-ci.yaml"


def stop_event() -> threading.Event:
    """An Event set by SIGINT/SIGTERM (the second signal exits at once)."""
    stop = threading.Event()

    def _handler(signum: int, _frame: object) -> None:
        if stop.is_set():
            raise SystemExit(128 + signum)
        logging.getLogger("hyperv-ci").info("signal %s: stopping", signum)
        stop.set()

    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)
    return stop


def _load(path: str, *, defaulted: bool = False) -> Config:
    if defaulted and not Path(path).exists():
        click.echo(f"error: no configuration: {path} (the default) does not exist; "
                   f"{_which_config()}", err=True)
        raise SystemExit(2)
    try:
        return load_config(path)
    except ConfigError as exc:
        click.echo(f"error: {path}: invalid configuration:\n{exc}", err=True)
        raise SystemExit(2) from None


def _which_config() -> str:
    """Which configuration to pass with -c, for someone who gave none."""
    demo = Path(os.environ.get("HYPERV_CI_STATE_DIR", ".demo")) / "demo-config.yaml"
    if demo.exists():
        return f"the running demo's is {demo}: hyperv-ci -c {demo} ..."
    return ("pass one with -c FILE (or $HYPERV_CI_CONFIG); to set up a CI, start from "
            "a copy of etc/openstack-hyperv.yaml (`make demo` writes the demo's to "
            ".demo/demo-config.yaml)")


def _preflight(path: str, problems: list[Any]) -> None:
    """Exit 2 naming each file the configuration names that cannot serve."""
    if problems:
        lines = "\n".join(str(p) for p in problems)
        click.echo(f"error: {path}: files the configuration names cannot be used:\n{lines}",
                   err=True)
        raise SystemExit(2)


def _check_gerrit(config: Config, path: str) -> None:
    """Exit 2 if Gerrit refuses us (its host key, our key); only warn if it is unreachable."""
    from ci.gerrit import GerritClient, GerritError, GerritRefused

    client = GerritClient(config.gerrit, timeout=15)
    try:
        client.connect().close()
    except GerritRefused as exc:
        click.echo(f"error: {path}: Gerrit refuses this configuration: {exc}", err=True)
        raise SystemExit(2) from None
    except GerritError as exc:
        logging.getLogger("hyperv-ci").warning("Gerrit cannot be reached now (%s); "
                                               "going on, it is retried", exc)


def _sessions(config: Config) -> sessionmaker[Session]:
    from ci.db import ensure_schema, make_engine, make_sessionmaker

    engine = make_engine(config.database.sqlalchemy_url())
    ensure_schema(engine)
    return make_sessionmaker(engine)


class _Ctx:
    def __init__(self, config_path: str, *, defaulted: bool = False) -> None:
        self.config_path = config_path
        self.defaulted = defaulted
        self._config: Config | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = _load(self.config_path, defaulted=self.defaulted)
        return self._config


@click.group()
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
    ctx.obj = _Ctx(config_path, defaulted=source == click.core.ParameterSource.DEFAULT)


@main.command("check-config")
@click.argument("path", type=click.Path(dir_okay=False))
def check_config(path: str) -> None:
    """Validate a configuration file and the files it names; exit 2 naming each bad key."""
    from ci.preflight import all_problems

    config = _load(path)
    _preflight(path, all_problems(config))
    click.echo(f"{path}: OK ({len(config.projects)} projects, {len(config.jobs)} jobs, "
               f"{len(config.nodes)} nodes)")


@main.group()
def db() -> None:
    """Database schema commands."""


@db.command("upgrade")
@click.pass_obj
def db_upgrade(obj: _Ctx) -> None:
    """Upgrade the database schema to the newest migration."""
    from ci.db import make_engine, upgrade

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


def _start_pulse(config: Config, path: Path | None, interval: float,
                 stop: threading.Event) -> None:
    if path is not None:
        from ci.heartbeat import Pulse, database_probe

        Pulse(path, database_probe(config.database.sqlalchemy_url()), interval).start(stop)


@main.command()
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--max-age", default=60.0, show_default=True,
              help="Seconds after which the heartbeat is too old.")
def alive(path: Path, max_age: float) -> None:
    """Exit 0 if the heartbeat file PATH is fresh, 1 if not (a container healthcheck)."""
    from ci.heartbeat import check

    result = check(path, max_age)
    click.echo(f"{path}: {result.reason}", err=not result.ok)
    raise SystemExit(0 if result.ok else 1)


@main.command()
@_heartbeat_option
@click.pass_obj
def listen(obj: _Ctx, heartbeat: Path | None, heartbeat_interval: float) -> None:
    """Follow Gerrit's event stream and queue builds."""
    from ci.preflight import listener_problems
    from listener.stream import run_listener

    _preflight(obj.config_path, listener_problems(obj.config))
    _check_gerrit(obj.config, obj.config_path)
    stop = stop_event()
    _start_pulse(obj.config, heartbeat, heartbeat_interval, stop)
    run_listener(obj.config, stop)


@main.command()
@click.option("--name", help="Worker name (default: from config, else the host name).")
@_heartbeat_option
@click.pass_obj
def worker(obj: _Ctx, name: str | None, heartbeat: Path | None,
           heartbeat_interval: float) -> None:
    """Run queued builds and send their reports."""
    from ci.gerrit import GerritClient
    from ci.preflight import database_problems, gerrit_problems, worker_problems
    from ci.report import send_pending
    from runners.worker import Worker

    config = obj.config
    # The reporter reaches Gerrit from the worker: its files count too.
    reports = config.reporter.enabled
    _preflight(obj.config_path, database_problems(config) + worker_problems(config)
               + (gerrit_problems(config.gerrit) if reports else []))
    if reports:
        _check_gerrit(config, obj.config_path)
    sessions = _sessions(config)

    def report() -> None:
        send_pending(sessions, lambda: GerritClient(config.gerrit), config)

    stop = stop_event()
    _start_pulse(config, heartbeat, heartbeat_interval, stop)
    # The outbox has its own thread: a vote never waits behind a running build.
    Worker(config, sessions, name=name).run(stop, report=report)


@main.command()
@click.option("--host", help="Listen address (default from config).")
@click.option("--port", type=int, help="Port (default from config).")
@click.pass_obj
def dashboard(obj: _Ctx, host: str | None, port: int | None) -> None:
    """Serve the dashboard (waitress)."""
    from ci.preflight import database_problems
    from dashboard.server import serve

    config = obj.config
    _preflight(obj.config_path, database_problems(config))
    serve(config, host or config.dashboard.host, port if port is not None else
          config.dashboard.port)


@main.command()
@click.option("--config", "demo_config", default="etc/demo.yaml", show_default=True,
              help="The demo's configuration.")
@click.option("--state-dir", default=None, help="Where the demo keeps its state (default .demo).")
def demo(demo_config: str, state_dir: str | None) -> None:
    """Run everything on this machine against the simulated Gerrit and lab."""
    from ci.demo import run_demo

    state = Path(state_dir or os.environ.get("HYPERV_CI_STATE_DIR", ".demo"))
    run_demo(Path(demo_config), state, stop_event())


@main.command()
@click.argument("project")
@click.argument("change")
@click.option("--job", "jobs", multiple=True, help="Job to run (default: the project's jobs).")
@click.pass_obj
def enqueue(obj: _Ctx, project: str, change: str, jobs: tuple[str, ...]) -> None:
    """Queue builds for CHANGE[,PATCHSET] of PROJECT (a manual recheck)."""
    from ci.enqueue import manual_enqueue
    from ci.gerrit import GerritError

    config = obj.config
    try:
        created = manual_enqueue(config, _sessions(config), project, change, list(jobs))
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


def _build_dict(build: Any) -> dict[str, Any]:
    change = build.patchset.change
    return {
        "id": build.id, "job": build.job, "state": build.state, "reason": build.reason,
        "project": change.project, "change": change.number, "patchset": build.patchset.number,
        "subject": change.subject, "owner": change.owner_name,
        "created": build.created_at.isoformat(),
        "finished": build.finished_at.isoformat() if build.finished_at else None,
        "log_url": build.log_url, "summary": build.summary,
    }


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--limit", default=50, show_default=True)
@click.pass_obj
def builds(obj: _Ctx, as_json: bool, limit: int) -> None:
    """List recent builds."""
    from ci.models import Build

    with _sessions(obj.config)() as session:
        rows = [_build_dict(b) for b in
                session.scalars(select(Build).order_by(Build.id.desc()).limit(limit))]
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    for row in rows:
        click.echo(f"{row['id']:>5} {row['state']:<14} {row['change']},{row['patchset']:<4} "
                   f"{row['job']:<20} {row['project']:<28} {row['subject']}")


@main.command()
@click.argument("job")
@click.option("--change", "change_spec", required=True, help="CHANGE,PATCHSET to render for.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
@click.pass_obj
def render(obj: _Ctx, job: str, change_spec: str, out_dir: str) -> None:
    """Write every script and config JOB would send, one file each."""
    from ci.enqueue import parse_change_spec
    from runners.render import render_command

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
    from sqlalchemy.exc import SQLAlchemyError

    from ci.db import make_sessionmaker, read_only_engine, schema_is_current
    from ci.enqueue import known_change_ref

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


@main.group()
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
def reports_list(obj: _Ctx, only_failed: bool, only_refused: bool,
                 only_not_sent: bool) -> None:
    """Show the newest reports: state, attempts, change, vote, last error.

    `not-sent`: the change closed before the report went out (nothing posted).
    """
    from ci.models import Report, ReportState

    query = select(Report).order_by(Report.id.desc()).limit(50)
    wanted = [state for state, on in ((ReportState.FAILED, only_failed),
                                      (ReportState.LABEL_REFUSED, only_refused),
                                      (ReportState.NOT_SENT, only_not_sent)) if on]
    if wanted:
        query = query.where(Report.state.in_(wanted))
    with _sessions(obj.config)() as session:
        for r in session.scalars(query):
            vote = "" if r.vote is None else f"{r.label}{r.vote:+d}"
            click.echo(f"{r.id:>6} {r.state:<13} {r.attempts:>3}x {r.change_number},"
                       f"{r.patchset_number:<4} {vote:<12} {r.last_error[:80]}")


@reports.command("retry")
@click.argument("report_id", type=int, required=False)
@click.option("--all-failed", is_flag=True, help="Every report that gave up.")
@click.pass_obj
def reports_retry(obj: _Ctx, report_id: int | None, all_failed: bool) -> None:
    """Send a report that gave up again (REPORT_ID, or --all-failed)."""
    from ci.report import requeue_failed

    if (report_id is None) == (not all_failed):
        click.echo("error: give a REPORT_ID or --all-failed", err=True)
        raise SystemExit(2)
    with _sessions(obj.config)() as session, session.begin():
        requeued = requeue_failed(session, report_id)
    if report_id is not None and not requeued:
        click.echo(f"error: no failed report {report_id}", err=True)
        raise SystemExit(2)
    click.echo(f"requeued {len(requeued)} report(s): a running worker sends them")


@main.group()
def nodes() -> None:
    """The node pool."""


@nodes.command("list")
@click.pass_obj
def nodes_list(obj: _Ctx) -> None:
    """Show every node and its state."""
    from ci.models import Node
    from runners.pool import sync_nodes

    sessions = _sessions(obj.config)
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
def nodes_drain(obj: _Ctx, name: str, undo: bool) -> None:
    """Stop giving NAME new builds (a running build finishes)."""
    from runners.pool import set_drained, sync_nodes

    with _sessions(obj.config)() as session, session.begin():
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
def nodes_enable(obj: _Ctx, name: str, force: bool) -> None:
    """Clean NAME, check it, and put it back into the pool.

    Runs the job's cleanup on the node (for the build that left it dirty) and
    a health check first, and refuses, with the reason, if either fails.
    """
    from runners.pool import NodeBusy, enable, sync_nodes
    from runners.recovery import UnknownNode, enable_node

    sessions = _sessions(obj.config)
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


@main.group()
def events() -> None:
    """The stored Gerrit events."""


@events.command("list")
@click.option("--failed", "only_failed", is_flag=True,
              help="Only events the scheduler gave up on, with the reason.")
@click.option("--pending", "only_pending", is_flag=True, help="Only events not handled yet.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10000))
@click.pass_obj
def events_list(obj: _Ctx, only_failed: bool, only_pending: bool, limit: int) -> None:
    """Show the newest events: id, received, type, state, outcome."""
    from ci.models import Event

    query = select(Event.id, Event.received_at, Event.type, Event.processed_at,
                   Event.failed_at, Event.outcome).order_by(Event.id.desc()).limit(limit)
    if only_failed:
        query = query.where(Event.failed_at.is_not(None))
    if only_pending:
        query = query.where(Event.processed_at.is_(None))
    with _sessions(obj.config)() as session:
        for row in session.execute(query):
            state = "failed" if row.failed_at else ("done" if row.processed_at else "pending")
            outcome = (row.outcome or "").replace("\n", " ")[:160]
            click.echo(f"{row.id:>8} {row.received_at:%Y-%m-%d %H:%M:%S} {row.type[:24]:<24} "
                       f"{state:<8} {outcome}")


def _mount_sim() -> None:
    from sim.cli import sim

    main.add_command(sim)


_mount_sim()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
