"""The option-definition check, run for real in `.venv-oslo`: the rendered
configs pass, and known-bad control files fail (so the check can fail)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ci.changes import ChangeInfo
from ci.config import Config, parse_config
from runners.oslo_check import (
    DEFAULT_PYTHON,
    ROOT,
    OsloCheckError,
    check_config_file,
    check_rendered,
)
from runners.render import RenderedJob, render_job

SECRETS = {
    "admin_password": "adm1n",
    "service_password": "s3rv%ce@pw/1",
    "rabbit_password": "r@bbit:pw%2F#",
    "database_password": "db",
}


@pytest.fixture(scope="module")
def oslo_venv() -> Path:
    python = ROOT / DEFAULT_PYTHON
    if not python.exists():
        pytest.fail(f"{python} is missing: run `make oslo-venv` to build the checker's virtualenv")
    return python


def make_config(**job: Any) -> Config:
    winrm = {"username": "Administrator", "password": {"password_env": "HV_PW"}}
    ssh = {"username": "stack", "key_file": "/k", "known_hosts": "/kh"}
    return parse_config({
        "gerrit": {"host": "127.0.0.1", "username": "ci", "key_file": "/k", "known_hosts": "/kh"},
        "projects": [{"name": "openstack/nova", "jobs": ["hyperv"]},
                     {"name": "openstack/compute-hyperv", "jobs": ["hyperv"]}],
        "jobs": {"hyperv": {"type": "devstack-hyperv",
                            "image": "/opt/stack/images/cirros-0.6.2-x86_64-disk.vhdx", **job}},
        "nodes": [
            {"name": "devstack-1", "label": "devstack", "address": "10.0.0.5", "ssh": ssh},
            {"name": "hv-1", "label": "hyperv", "address": "10.0.0.11", "winrm": winrm},
            {"name": "hv-2", "label": "hyperv", "address": "10.0.0.12", "winrm": winrm},
        ],
    })


def rendered_job(branch: str = "unmaintained/2023.1", secrets: dict[str, str] | None = None,
                 project: str = "openstack/compute-hyperv", **job: Any) -> RenderedJob:
    # compute-hyperv's change runs compute-hyperv's driver; a nova change, nova's own.
    config = make_config(**job)
    change = ChangeInfo(project=project, branch=branch, number=1, patchset=1,
                       ref="refs/changes/01/1/1", revision="b" * 40,
                       subject="Zoë's 修复", owner_name="Zoë")
    return render_job(config, "hyperv", change, config.nodes, secrets or SECRETS)


@pytest.fixture(scope="module")
def rendered() -> RenderedJob:
    return rendered_job()


def test_rendered_configs_pass(oslo_venv: Path, rendered: RenderedJob) -> None:
    results = check_rendered(rendered, python=oslo_venv)
    assert sorted(results) == [
        "hv-1-neutron_hyperv_agent.conf", "hv-1-nova.conf",
        "hv-2-neutron_hyperv_agent.conf", "hv-2-nova.conf",
    ]
    assert results == {name: [] for name in results}


def test_in_tree_driver_config_passes(oslo_venv: Path, tmp_path: Path) -> None:
    job = rendered_job(project="openstack/nova")
    assert "compute_driver = hyperv.HyperVDriver\n" in job["hv-1-nova.conf"]
    path = tmp_path / "nova.conf"
    path.write_text(job["hv-1-nova.conf"], encoding="utf-8")
    assert check_config_file(path, "nova", python=oslo_venv) == []


# Reads [neutron] password back the way nova would: through oslo.config's
# interpolation, which takes `$name` for another option's value.
READ_BACK = """
import json, sys
from oslo_config import cfg
conf = cfg.ConfigOpts()
conf.register_opts([cfg.StrOpt("password", secret=True)], group="neutron")
conf(args=[], default_config_files=[sys.argv[1]], use_env=False)
print(json.dumps(conf.neutron.password))
"""


def test_password_with_dollar_signs_passes_and_reads_back(
        oslo_venv: Path, tmp_path: Path) -> None:
    password = "s3rv$ce$$pw${host}é"
    job = rendered_job(secrets={**SECRETS, "service_password": password,
                                "rabbit_password": password})
    results = check_rendered(job, python=oslo_venv)
    assert results == {name: [] for name in results} and len(results) == 4
    path = tmp_path / "nova.conf"
    path.write_text(job["hv-1-nova.conf"], encoding="utf-8")
    proc = subprocess.run([str(oslo_venv), "-I", "-c", READ_BACK, str(path)],
                          capture_output=True, text=True, encoding="utf-8", check=True)
    assert json.loads(proc.stdout) == password


def _mutate(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new)


NOVA_BAD = {
    "misspelt option": (("vswitch_name = ", "vswitch_nam = "),
                        "[hyperv] vswitch_nam: unknown option"),
    "bad value": (("dynamic_memory_ratio = 1.0", "dynamic_memory_ratio = 1,5"),
                  "[hyperv] dynamic_memory_ratio: bad value"),
    "bad choice": (("[DEFAULT]\n", "[DEFAULT]\nconfig_drive_format = iso9661\n"),
                   "config_drive_format: bad value"),
    "unknown section": (("[vnc]\n", "[hyperv_typo]\n[vnc]\n"), "[hyperv_typo]: unknown section"),
    "wrong driver": (("compute_driver = compute_hyperv.driver.HyperVDriver",
                      "compute_driver = libvirt.LibvirtDriver"),
                     "compute_driver: 'libvirt.LibvirtDriver' is not a Hyper-V driver"),
    "misspelt auth option": (("username = neutron", "usernam = neutron"),
                             "[neutron] usernam: unknown option"),
}


@pytest.mark.parametrize("case", sorted(NOVA_BAD))
def test_bad_nova_conf_fails(
    oslo_venv: Path, rendered: RenderedJob, tmp_path: Path, case: str
) -> None:
    (old, new), expected = NOVA_BAD[case]
    path = tmp_path / "nova.conf"
    path.write_text(_mutate(rendered["hv-1-nova.conf"], old, new), encoding="utf-8")
    problems = check_config_file(path, "nova", python=oslo_venv)
    assert any(expected in p for p in problems), problems


AGENT_BAD = {
    "below minimum": (("polling_interval = 2", "polling_interval = 0"),
                      "[AGENT] polling_interval: bad value"),
    "not a boolean": (("enable_security_group = True", "enable_security_group = maybe"),
                      "enable_security_group: bad value"),
    "unknown firewall": (("firewall_driver = hyperv", "firewall_driver = hyperv_typo"),
                         "firewall_driver: 'hyperv_typo'"),
    "unknown section": (("[SECURITYGROUP]", "[SECURITYGROUPS]"),
                        "[SECURITYGROUPS]: unknown section"),
}


@pytest.mark.parametrize("case", sorted(AGENT_BAD))
def test_bad_agent_conf_fails(
    oslo_venv: Path, rendered: RenderedJob, tmp_path: Path, case: str
) -> None:
    (old, new), expected = AGENT_BAD[case]
    path = tmp_path / "neutron_hyperv_agent.conf"
    text = _mutate(rendered["hv-1-neutron_hyperv_agent.conf"], old, new)
    path.write_text(text, encoding="utf-8")
    problems = check_config_file(path, "neutron-hyperv-agent", python=oslo_venv)
    assert any(expected in p for p in problems), problems


def test_unparseable_file_is_a_problem(oslo_venv: Path, tmp_path: Path) -> None:
    path = tmp_path / "nova.conf"
    path.write_text("[DEFAULT\nhost = x\n", encoding="utf-8")
    problems = check_config_file(path, "nova", python=oslo_venv)
    assert problems and problems[0].startswith("cannot parse")


def test_missing_virtualenv_says_how_to_build_it(tmp_path: Path) -> None:
    path = tmp_path / "nova.conf"
    path.write_text("[DEFAULT]\n", encoding="utf-8")
    with pytest.raises(OsloCheckError, match="make oslo-venv"):
        check_config_file(path, "nova", python=tmp_path / "no-venv" / "bin" / "python")
