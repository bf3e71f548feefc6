"""Shared fixtures for the runners tests: a real OpenSSH sshd on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ci.config import NodeConfig
from runners.ssh import SSHExecutor
from sim.sshd import OpenSSHServer


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenSSHServer]:
    """One sshd for the whole session (it starts in milliseconds, but keys take longer)."""
    server = OpenSSHServer(tmp_path_factory.mktemp("sshd")).start()
    yield server
    server.stop()


@pytest.fixture
def ssh_node(sshd: OpenSSHServer) -> NodeConfig:
    return sshd.node_config("devstack-1")


@pytest.fixture
def executor(ssh_node: NodeConfig) -> Iterator[SSHExecutor]:
    ex = SSHExecutor(ssh_node, kill_grace=2.0)
    yield ex
    ex.close()


@pytest.fixture
def remote_dir(tmp_path: Path) -> Path:
    """A directory 'on the node' (same host: sshd runs commands as the current user)."""
    path = tmp_path / "remote 目录"
    path.mkdir()
    return path
