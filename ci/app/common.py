"""What every `hyperv-ci` command shares: its configuration and how a bad one exits.

Light on purpose (click and ci.config only): every command loads it, `alive` too.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ci.config import Config, ConfigError, load_config

if TYPE_CHECKING:
    from ci.preflight import FileProblem

DEFAULT_CONFIG = "etc/hyperv-ci.yaml"


def load(path: str, *, defaulted: bool = False) -> Config:
    """The configuration at `path`; exit 2 saying why when there is none or it is invalid."""
    if defaulted and not Path(path).exists():
        click.echo(f"error: no configuration: {path} (the default) does not exist; "
                   f"{which_config()}", err=True)
        raise SystemExit(2)
    try:
        return load_config(path)
    except ConfigError as exc:
        click.echo(f"error: {path}: invalid configuration:\n{exc}", err=True)
        raise SystemExit(2) from None


def which_config() -> str:
    """Which configuration to pass with -c, for someone who gave none."""
    demo = Path(os.environ.get("HYPERV_CI_STATE_DIR", ".demo")) / "demo-config.yaml"
    if demo.exists():
        return f"the running demo's is {demo}: hyperv-ci -c {demo} ..."
    return ("pass one with -c FILE (or $HYPERV_CI_CONFIG); to set up a CI, start from "
            "a copy of etc/openstack-hyperv.yaml (`make demo` writes the demo's to "
            ".demo/demo-config.yaml)")


def exit_on_problems(path: str, problems: Sequence[FileProblem]) -> None:
    """Exit 2 naming each file the configuration names that cannot serve."""
    if problems:
        lines = "\n".join(str(p) for p in problems)
        click.echo(f"error: {path}: files the configuration names cannot be used:\n{lines}",
                   err=True)
        raise SystemExit(2)


class Ctx:
    """The click context object: the configuration, loaded on first use."""

    def __init__(self, config_path: str, *, defaulted: bool = False) -> None:
        self.config_path = config_path
        self.defaulted = defaulted
        self._config: Config | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load(self.config_path, defaulted=self.defaulted)
        return self._config
