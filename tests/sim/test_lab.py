"""sim/lab.py: the simulated lab reachable by the real executors, with config-shaped output."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from ci.config import DevstackHypervJob, parse_config
from runners.ssh import SSHExecutor
from runners.winrm import WinRMExecutor
from sim.lab import (
    ACCOUNT_PASSWORD_ENV,
    ADMIN_PASSWORD_ENV,
    SERVICE_PASSWORD_ENV,
    WINRM_PASSWORD_ENV,
    SimLab,
)


@pytest.fixture(autouse=True)
def _lab_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The lab sets these for the processes it serves; keep them from leaking between tests.
    for name in (WINRM_PASSWORD_ENV, ADMIN_PASSWORD_ENV, SERVICE_PASSWORD_ENV,
                 ACCOUNT_PASSWORD_ENV):
        monkeypatch.delenv(name, raising=False)


def refused(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize("use_sshd", [True, False], ids=["openssh", "paramiko"])
def test_lab_nodes_answer_the_real_executors(tmp_path: Path, use_sshd: bool) -> None:
    lab = SimLab(tmp_path / "state", hyperv_nodes=2, use_sshd=use_sshd).start()
    try:
        entries = lab.node_configs()
        assert [e["name"] for e in entries] == ["devstack-1", "hv-1", "hv-2"]
        assert all(Path(e["ssh"]["key_file"]).is_absolute() for e in entries if "ssh" in e)
        devstack, hv1, hv2 = lab.nodes()

        ssh = SSHExecutor(devstack)
        try:
            stack_sh = Path(lab.job_overrides()["devstack_dir"]) / "stack.sh"
            result = ssh.run(["test", "-x", str(stack_sh)], timeout=10)
            assert result.ok
        finally:
            ssh.close()

        for node in (hv1, hv2):
            winrm = WinRMExecutor(node)
            try:
                result = winrm.run_powershell("# hyperv-ci-step: lab-check\nWrite-Output 'ok'\n",
                                              timeout=10)
            finally:
                winrm.close()
            assert result.ok
            assert "lab-check" in [s[1] for s in lab.winrm[node.name].scripts]
    finally:
        ports = [e.get("ssh", e.get("winrm"))["port"] for e in lab.node_configs()]
        lab.stop()
    assert all(refused(port) for port in ports)


def test_overrides_and_nodes_make_a_valid_config(tmp_path: Path) -> None:
    with SimLab(tmp_path / "state", hyperv_nodes=1) as lab:
        config = parse_config({
            "gerrit": {"host": "127.0.0.1", "username": "ci", "key_file": "/k",
                       "known_hosts": "/kh"},
            "projects": [{"name": "openstack/nova", "jobs": ["hyperv"]}],
            "jobs": {"hyperv": {"type": "devstack-hyperv", **lab.job_overrides()}},
            "nodes": lab.node_configs(),
        })
        job = config.jobs["hyperv"]
        assert isinstance(job, DevstackHypervJob)
        assert job.hyperv_nodes == 1
        assert Path(job.tempest_dir).is_dir()
        assert Path(job.workspace).is_relative_to(lab.state_dir)
        # Every lab secret resolves from the environment the lab set, and is redacted.
        assert job.admin_password.resolve() and job.service_password.resolve()
        # WinRM, admin, service and the nodes' service account.
        assert len(config.secrets()) == 4
        assert lab.faults_dir.is_dir()
        assert (lab.lab_dir / "hyperv" / "hv-1.json").is_file()
