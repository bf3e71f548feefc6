"""Files a configuration names: checked at start (exit 2, key named) and by check-config.

Through the real command (`hyperv-ci`, a subprocess) and the simulated Gerrit.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ci.config import parse_config
from ci.preflight import all_problems
from sim.gerrit import SimGerrit, make_client_identity

CLI = str(Path(sys.executable).with_name("hyperv-ci"))


@pytest.fixture
def identity(tmp_path: Path) -> tuple[Path, str]:
    return make_client_identity(tmp_path / "client", "hyperv-ci")


@pytest.fixture
def gerrit(tmp_path: Path, identity: tuple[Path, str]) -> Iterator[SimGerrit]:
    server = SimGerrit(tmp_path / "sim", users={"hyperv-ci": identity[1]}).start()
    yield server
    server.stop()


def good_config(tmp_path: Path, gerrit: SimGerrit | None = None,
                key_file: Path | None = None) -> dict[str, Any]:
    """A config whose every named file exists (Gerrit need not answer unless given)."""
    files = tmp_path / "files"
    files.mkdir(exist_ok=True)
    node_key, public = make_client_identity(files, "node")
    known = files / "known_hosts"
    gerrit_line = (gerrit.host_key_line() if gerrit else f"[review.example.org]:29418 {public}")
    known.write_text(f"{gerrit_line}\n192.0.2.10 {public}\n", encoding="utf-8")
    for name in ("ca.pem", "winrm-password", "admin-password"):
        (files / name).write_text("x\n", encoding="utf-8")
    winrm = {"scheme": "https", "username": "Administrator", "ca_file": str(files / "ca.pem"),
             "password": {"password_file": str(files / "winrm-password")}}
    return {
        "database": {"url": f"sqlite:///{tmp_path / 'ci.db'}"},
        "gerrit": {"host": "127.0.0.1" if gerrit else "review.example.org",
                   "port": gerrit.port if gerrit else 29418, "username": "hyperv-ci",
                   "key_file": str(key_file or node_key), "known_hosts": str(known)},
        "projects": [{"name": "openstack/nova", "jobs": ["hyperv-tempest"]}],
        "jobs": {"hyperv-tempest": {
            "type": "devstack-hyperv", "hyperv_nodes": 1,
            "image": "/opt/stack/images/cirros-0.6.2-x86_64-disk.vhdx",
            "admin_password": {"password_file": str(files / "admin-password")},
            "service_password": {"password_env": "HYPERV_CI_TEST_SERVICE_PASSWORD"}}},
        "nodes": [
            {"name": "ctl-01", "label": "devstack", "address": "192.0.2.10",
             "ssh": {"username": "stack", "key_file": str(node_key),
                     "known_hosts": str(known)}},
            {"name": "hv-a", "label": "hyperv", "address": "192.0.2.21", "winrm": winrm},
        ],
        "logs": {"dir": str(tmp_path / "logs")},
        "worker": {"poll_interval": 0.2, "git_cache_dir": str(tmp_path / "git-cache")},
    }


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "hyperv-ci.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def run(*args: str, cwd: Path, status: int, env: dict[str, str] | None = None,
        ) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "HYPERV_CI_TEST_SERVICE_PASSWORD": "pw", **(env or {})}
    environment.pop("HYPERV_CI_CONFIG", None)
    done = subprocess.run([CLI, *args], capture_output=True, text=True, encoding="utf-8",
                          cwd=cwd, env=environment, timeout=60, check=False)
    assert done.returncode == status, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    return done


def test_check_config_passes_when_every_named_file_serves(tmp_path: Path) -> None:
    path = write(tmp_path, good_config(tmp_path))
    assert "OK" in run("check-config", str(path), cwd=tmp_path, status=0).stdout


def _remove(key: str) -> Callable[[dict[str, Any]], Path]:
    """Delete the file the config names at dotted `key`; returns its path."""
    def mutate(data: dict[str, Any]) -> Path:
        node: Any = data
        *parents, last = key.split(".")
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        path = Path(node[last])
        node[last] = str(path.with_name("missing-" + path.name))
        return path
    return mutate


@pytest.mark.parametrize("key", [
    "gerrit.key_file", "gerrit.known_hosts", "nodes.0.ssh.key_file", "nodes.0.ssh.known_hosts",
    "nodes.1.winrm.ca_file", "nodes.1.winrm.password.password_file",
    "jobs.hyperv-tempest.admin_password.password_file",
])
def test_check_config_names_a_missing_file(tmp_path: Path, key: str) -> None:
    data = good_config(tmp_path)
    _remove(key)(data)
    err = run("check-config", str(write(tmp_path, data)), cwd=tmp_path, status=2).stderr
    assert f"{key}: " in err and "no such file" in err


def test_check_config_names_a_host_missing_from_known_hosts(tmp_path: Path) -> None:
    data = good_config(tmp_path)
    known = Path(data["gerrit"]["known_hosts"])
    known.write_text(known.read_text(encoding="utf-8").splitlines()[0] + "\n",
                     encoding="utf-8")  # the Gerrit line only: the controller is gone
    err = run("check-config", str(write(tmp_path, data)), cwd=tmp_path, status=2).stderr
    assert "nodes.0.ssh.known_hosts: " in err and "has no key for 192.0.2.10" in err
    assert "gerrit.known_hosts" not in err
    data["gerrit"]["port"] = 2222
    assert [p.key for p in all_problems(parse_config(data))] == [
        "gerrit.known_hosts", "nodes.0.ssh.known_hosts"]
    assert "has no key for [review.example.org]:2222" in str(all_problems(parse_config(data))[0])


def test_listen_exits_2_at_start_for_a_missing_key_file(tmp_path: Path) -> None:
    data = good_config(tmp_path)
    _remove("gerrit.key_file")(data)
    err = run("-c", str(write(tmp_path, data)), "listen", cwd=tmp_path, status=2).stderr
    assert "gerrit.key_file: " in err and "no such file" in err


def test_listen_exits_2_at_start_for_a_wrong_host_key(tmp_path: Path, gerrit: SimGerrit,
                                                      identity: tuple[Path, str]) -> None:
    data = good_config(tmp_path, gerrit, identity[0])
    _, impostor = make_client_identity(tmp_path / "other", "impostor")
    Path(data["gerrit"]["known_hosts"]).write_text(
        f"[127.0.0.1]:{gerrit.port} {impostor}\n", encoding="utf-8")
    err = run("-c", str(write(tmp_path, data)), "listen", cwd=tmp_path, status=2).stderr
    assert "Gerrit refuses this configuration" in err
    assert "does not match gerrit.known_hosts" in err
    assert gerrit.state.subscriber_count() == 0


def test_listen_exits_2_at_start_for_a_key_gerrit_refuses(tmp_path: Path, gerrit: SimGerrit,
                                                          ) -> None:
    stranger, _ = make_client_identity(tmp_path / "stranger", "stranger")
    data = good_config(tmp_path, gerrit, stranger)
    err = run("-c", str(write(tmp_path, data)), "listen", cwd=tmp_path, status=2).stderr
    assert "refused gerrit.key_file" in err


def test_worker_exits_2_at_start_for_a_missing_node_key(tmp_path: Path) -> None:
    data = good_config(tmp_path)
    data["reporter"] = {"enabled": False}
    _remove("nodes.0.ssh.key_file")(data)
    err = run("-c", str(write(tmp_path, data)), "worker", cwd=tmp_path, status=2).stderr
    assert "nodes.0.ssh.key_file: " in err and "no such file" in err


def test_no_config_given_says_which_to_use(tmp_path: Path) -> None:
    env = {"HYPERV_CI_STATE_DIR": str(tmp_path / ".demo")}
    err = run("builds", cwd=tmp_path, status=2, env=env).stderr
    assert "etc/hyperv-ci.yaml (the default) does not exist" in err
    assert "etc/openstack-hyperv.yaml" in err
    demo = tmp_path / ".demo" / "demo-config.yaml"
    demo.parent.mkdir()
    demo.write_text("{}\n", encoding="utf-8")
    err = run("builds", cwd=tmp_path, status=2, env=env).stderr
    assert f"hyperv-ci -c {demo}" in err
