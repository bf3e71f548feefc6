"""`hyperv-ci lab check` as an operator runs it: the installed command, a YAML file,
the simulated lab (controller, Hyper-V node VMs on a parent host)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sim.lab import SimLab
from sim.lab_probe import lab_state

CLI = str(Path(sys.executable).with_name("hyperv-ci"))


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimLab]:
    with SimLab(tmp_path_factory.mktemp("lab-cli"), hyperv_nodes=2,
                provisioned=True) as started:
        yield started


def write_config(lab: SimLab, path: Path) -> Path:
    data: dict[str, Any] = {
        "gerrit": {"host": "127.0.0.1", "username": "ci", "key_file": "/nonexistent/key",
                   "known_hosts": "/nonexistent/known_hosts"},
        "projects": [{"name": "openstack/nova", "jobs": ["hyperv"]}],
        "jobs": {"hyperv": {"type": "devstack-hyperv", **lab.job_overrides()}},
        "nodes": lab.node_configs(),
        "parent_hosts": lab.parent_host_configs(),
    }
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def lab_check(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # The lab's passwords are in this process's environment (SimLab sets them).
    return subprocess.run([CLI, "-c", str(config), "lab", "check", *args], text=True,
                          capture_output=True, timeout=120, check=False)


def test_every_check_passes_and_exits_0(lab: SimLab, tmp_path: Path) -> None:
    done = lab_check(write_config(lab, tmp_path / "lab.yaml"))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    checks = [line for line in lines if line.startswith(("PASS", "FAIL"))]
    assert checks and all(line.startswith("PASS ") for line in checks), done.stdout
    for node in ("worker", "devstack-1", "hv-1", "hv-2", "hv-parent-1"):
        assert any(f"  {node} " in line for line in checks), node
    assert lines[-1] == f"{len(checks)} checks, 0 failed"


def test_a_failing_check_prints_its_fix_and_exits_1(lab: SimLab, tmp_path: Path) -> None:
    host = lab.winrm["hv-2"].model
    host.system_services["MSiSCSI"] = ("Stopped", "Manual")
    try:
        done = lab_check(write_config(lab, tmp_path / "lab.yaml"), "hv-2", "--json")
    finally:
        host.system_services["MSiSCSI"] = ("Running", "Automatic")
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is False
    [failure] = [c for c in report["checks"] if not c["passed"]]
    assert (failure["node"], failure["name"]) == ("hv-2", "msiscsi")
    assert "Start-Service -Name MSiSCSI" in failure["fix"]


def test_the_text_report_shows_the_fix_under_the_fail(lab: SimLab, tmp_path: Path) -> None:
    state = lab_state(lab.winrm["hv-1"].model)
    state.clock_offset = -900.0
    try:
        done = lab_check(write_config(lab, tmp_path / "lab.yaml"), "hv-1")
    finally:
        state.clock_offset = 0.0
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith("FAIL") and " clock " in line)
    skew = float(lines[index].split("behind the worker by ")[1].split(" s")[0])
    assert 850 < skew < 950
    assert lines[index + 1].strip().startswith("fix: ") and "w32tm" in lines[index + 1]


def test_an_unknown_node_exits_2(lab: SimLab, tmp_path: Path) -> None:
    done = lab_check(write_config(lab, tmp_path / "lab.yaml"), "hv-9")
    assert done.returncode == 2
    assert "no node or parent host 'hv-9'" in done.stderr
