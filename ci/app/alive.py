"""`hyperv-ci alive FILE`: the containers' healthcheck (reads a process's heartbeat file)."""

from __future__ import annotations

from pathlib import Path

import click

from ci.heartbeat import check


@click.command()
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--max-age", default=60.0, show_default=True,
              help="Seconds after which the heartbeat is too old.")
def alive(path: Path, max_age: float) -> None:
    """Exit 0 if the heartbeat file PATH is fresh, 1 if not (a container healthcheck)."""
    result = check(path, max_age)
    click.echo(f"{path}: {result.reason}", err=not result.ok)
    raise SystemExit(0 if result.ok else 1)
