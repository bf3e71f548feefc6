"""Fixtures of the listener suite: a config watching nova's Hyper-V driver."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ci.config import Config, parse_config
from sim.gerrit import SimGerrit, make_client_identity

FIXTURES = Path(__file__).parent.parent / "fixtures" / "gerrit"

MakeConfig = Callable[..., Config]


def config_data(database_url: str | None = None, **gerrit: Any) -> dict[str, Any]:
    """A config dict: nova (Hyper-V files only) and compute-hyperv (whole repo)."""
    database = {"database": {"url": database_url}} if database_url else {}
    return {
        **database,
        "gerrit": {"host": "127.0.0.1", "username": "hyperv-ci", "key_file": "/nonexistent/key",
                   "known_hosts": "/nonexistent/known_hosts", **gerrit},
        "projects": [
            {"name": "openstack/nova", "branches": ["master", "stable/.*"],
             "files": ["^nova/virt/hyperv/", "^nova/tests/unit/virt/hyperv/"],
             "jobs": ["hyperv-tempest"]},
            {"name": "openstack/compute-hyperv", "jobs": ["hyperv-tempest", "hyperv-unit"]},
        ],
        "jobs": {
            "hyperv-tempest": {"type": "local", "command": ["true"]},
            "hyperv-unit": {"type": "local", "command": ["true"]},
        },
    }


@pytest.fixture
def make_config() -> MakeConfig:
    """Build the test config, with gerrit settings overridden by keyword."""

    def make(database_url: str | None = None, **gerrit: Any) -> Config:
        return parse_config(config_data(database_url, **gerrit))

    return make


@pytest.fixture
def config(make_config: MakeConfig) -> Config:
    return make_config()


@pytest.fixture
def client_key(tmp_path: Path) -> tuple[Path, str]:
    """The CI account's key pair: (private key file, public key line)."""
    return make_client_identity(tmp_path, "hyperv-ci")


@pytest.fixture
def sim_gerrit(tmp_path: Path, client_key: tuple[Path, str]) -> Iterator[SimGerrit]:
    """A running simulated Gerrit that lets `hyperv-ci` in with `client_key`."""
    sim = SimGerrit(tmp_path / "sim", users={"hyperv-ci": client_key[1]}).start()
    yield sim
    sim.stop()


@pytest.fixture
def stream_config(make_config: MakeConfig, sim_gerrit: SimGerrit, client_key: tuple[Path, str],
                  sqlite_url: str) -> Config:
    """The test config pointed at the simulated Gerrit (and the test's SQLite file)."""
    return make_config(database_url=sqlite_url, host="127.0.0.1", port=sim_gerrit.port,
                       key_file=str(client_key[0]), known_hosts=str(sim_gerrit.known_hosts_file),
                       keepalive=5)
