"""devstack's rules in the simulated controller: the job's rendered local.conf
stacks, and each mistake a real devstack refuses ends the simulated stack.sh
with devstack's (or neutron's) message."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from ci.changes import ChangeInfo
from ci.config import parse_config
from runners.render import render_job
from sim.devstack import DevstackNodePaths, make_devstack_node
from sim.devstack_node.rules import known_variables

BRANCH = "unmaintained/2023.1"


@pytest.fixture
def node(tmp_path: Path) -> DevstackNodePaths:
    return make_devstack_node(tmp_path / "node 节点", tmp_path / "lab")


def rendered_conf(node: DevstackNodePaths, project: str = "openstack/nova",
                  branch: str = BRANCH, **job: Any) -> str:
    winrm = {"username": "Administrator", "password": {"password_env": "HV_PW"}}
    ssh = {"username": "stack", "key_file": "/k", "known_hosts": "/kh"}
    # Not under the node root: IMAGE_URLS is split on spaces (stackrc), which the root has.
    image = node.lab_dir.parent / "images" / "cirros-0.6.2-x86_64-disk.vhdx"
    config = parse_config({
        "gerrit": {"host": "127.0.0.1", "username": "ci", "key_file": "/k", "known_hosts": "/kh"},
        "projects": [{"name": project, "jobs": ["hyperv"]}],
        "jobs": {"hyperv": {"type": "devstack-hyperv", "devstack_dir": str(node.devstack_dir),
                            "tempest_dir": str(node.tempest_dir), "image": str(image),
                            **job}},
        "nodes": [
            {"name": "devstack-1", "label": "devstack", "address": "10.0.0.5", "ssh": ssh},
            {"name": "hv-1", "label": "hyperv", "address": "10.0.0.11", "winrm": winrm},
            {"name": "hv-2", "label": "hyperv", "address": "10.0.0.12", "winrm": winrm},
        ],
    })
    change = ChangeInfo(project=project, branch=branch, number=7, patchset=2,
                       ref="refs/changes/07/7/2", revision="a" * 40, subject="s", owner_name="o")
    return render_job(config, "hyperv", change, config.nodes)["devstack-1-local.conf"]


def stack(node: DevstackNodePaths, conf: str) -> subprocess.CompletedProcess[str]:
    (node.devstack_dir / "local.conf").write_text(conf, encoding="utf-8")
    return subprocess.run(["./stack.sh"], cwd=node.devstack_dir, capture_output=True,
                          text=True, encoding="utf-8", timeout=60, check=False)


def tempest_conf(node: DevstackNodePaths) -> str:
    return (node.tempest_dir / "etc" / "tempest.conf").read_text(encoding="utf-8")


def test_the_rendered_local_conf_stacks(node: DevstackNodePaths) -> None:
    proc = stack(node, rendered_conf(node))
    assert proc.returncode == 0, proc.stderr
    assert "Fetching DevStack plugins" in proc.stdout
    assert "Installing networking-hyperv." in proc.stdout
    assert "[WARNING]" not in proc.stdout  # no skipped extras.d, no unknown variable
    assert node.stacked
    conf = tempest_conf(node)
    assert "img_disk_format = vhdx" in conf and "attach_encrypted_volume = False" in conf
    assert "cirros-0.6.2-x86_64-disk.vhdx" in conf
    assert "Uploading image cirros-0 (vhdx)" in proc.stdout


def test_the_old_extras_d_hook_is_skipped_and_neutron_fails(node: DevstackNodePaths) -> None:
    # What hyperv-ci rendered before: the hook, and no enable_plugin.
    conf = "\n".join(line for line in rendered_conf(node).splitlines()
                     if not line.startswith("enable_plugin"))
    (node.devstack_dir / "extras.d").mkdir()
    (node.devstack_dir / "extras.d" / "70-hyperv-ci-networking-hyperv.sh").write_text(
        'setup_develop "$DEST/networking-hyperv"\n', encoding="utf-8")
    (node.devstack_dir / "extras.d" / "80-tempest.sh").write_text("", encoding="utf-8")
    proc = stack(node, conf)
    assert "[WARNING] ./stack.sh:use of extras.d is no longer supported" in proc.stdout
    assert ("[WARNING] ./stack.sh:processing of project 70-hyperv-ci-networking-hyperv.sh "
            "is skipped") in proc.stdout
    assert "80-tempest.sh is skipped" not in proc.stdout
    assert proc.returncode == 1
    assert proc.stderr.strip().endswith("functions-common:2365 Neutron did not start")
    server_log = (node.logs_dir / "q-svc.log").read_text(encoding="utf-8")
    assert "The following mechanism drivers were not found: {'hyperv'}" in server_log
    assert not node.stacked


def test_an_ml2_driver_nobody_installs_ends_stack_sh(node: DevstackNodePaths) -> None:
    conf = rendered_conf(node).replace("openvswitch,hyperv", "openvswitch,hyperv,l2population")
    assert stack(node, conf).returncode == 0  # built into neutron
    conf = conf.replace("l2population", "cisco_nexus")
    proc = stack(node, conf)
    assert proc.returncode == 1 and "Neutron did not start" in proc.stderr
    assert "not found: {'cisco_nexus'}" in (node.logs_dir / "q-svc.log").read_text(
        encoding="utf-8")


def test_download_default_images_adds_the_qcow2_cirros(node: DevstackNodePaths) -> None:
    conf = rendered_conf(node).replace("DOWNLOAD_DEFAULT_IMAGES=False\n", "")
    proc = stack(node, conf)
    assert "Uploading image cirros-0.6.3-x86_64-disk (qcow2)" in proc.stdout
    assert proc.returncode == 1
    assert ("tempest's image_ref_alt is cirros-0.6.3-x86_64-disk (qcow2), which the Hyper-V "
            "computes cannot boot: Invalid image format 'qcow2'") in proc.stderr
    # Without DEFAULT_IMAGE_NAME, stackrc makes the cirros the image_ref itself.
    conf = "\n".join(line for line in conf.splitlines()
                     if not line.startswith("DEFAULT_IMAGE_NAME="))
    proc = stack(node, conf)
    assert proc.returncode == 1 and "tempest's image_ref is cirros-0.6.3" in proc.stderr


@pytest.mark.parametrize(("ref", "message"), [
    ("stable/nonexistent", "git call failed: [git fetch origin stable/nonexistent]"),
    ("stable/ocata", "git call failed: [git fetch origin stable/ocata]"),
])
def test_enable_plugin_needs_the_branch(node: DevstackNodePaths, ref: str, message: str) -> None:
    proc = stack(node, rendered_conf(node, networking_hyperv_ref=ref))
    assert proc.returncode == 1 and message in proc.stderr
    assert "couldn't find remote ref" in proc.stdout


def test_enable_plugin_needs_the_repository(node: DevstackNodePaths) -> None:
    proc = stack(node, rendered_conf(node, git_base="https://git.example.org"))
    assert proc.returncode == 1
    assert ("git call failed: [git clone --no-checkout "
            "https://git.example.org/openstack/networking-hyperv") in proc.stderr


def test_a_plugin_branch_without_plugin_sh_installs_nothing(node: DevstackNodePaths) -> None:
    # networking-hyperv's master was emptied at retirement: fetched, but no plugin.sh,
    # so devstack's run_plugins sources nothing and the ML2 driver is missing.
    proc = stack(node, rendered_conf(node, networking_hyperv_ref="master"))
    assert "Installing networking-hyperv." not in proc.stdout
    assert proc.returncode == 1 and "Neutron did not start" in proc.stderr


def test_a_networking_hyperv_change_installs_its_checkout(node: DevstackNodePaths) -> None:
    conf = rendered_conf(node, project="openstack/networking-hyperv")
    assert f"enable_plugin networking-hyperv '{node.root}/networking-hyperv'" in conf
    proc = stack(node, conf)  # no checkout there: devstack clones the path, git fails
    assert proc.returncode == 1 and "git call failed: [git clone" in proc.stderr
    checkout = node.root / "networking-hyperv"
    (checkout / "devstack").mkdir(parents=True)
    (checkout / "devstack" / "plugin.sh").write_text("# plugin\n", encoding="utf-8")
    proc = stack(node, conf)  # RECLONE=no: the prepared checkout is used as it is
    assert proc.returncode == 0, proc.stderr
    assert "Installing networking-hyperv." in proc.stdout


def test_unknown_local_conf_variables_are_reported(node: DevstackNodePaths) -> None:
    conf = rendered_conf(node).replace(
        "LOG_COLOR=False\n", "LOG_COLOR=False\nNETWORKING_HYPERV_REPO=/x\nTEMPEST_CONCURENCY=4\n")
    proc = stack(node, conf)
    assert proc.returncode == 0, proc.stderr
    warnings = [line.split(" | ", 1)[1] for line in proc.stdout.splitlines() if "[WARNING]" in line]
    assert warnings == [
        "[WARNING] local.conf: NETWORKING_HYPERV_REPO is read by neither devstack nor an "
        "enabled plugin",
        "[WARNING] local.conf: TEMPEST_CONCURENCY is read by neither devstack nor an "
        "enabled plugin"]


def test_every_variable_the_job_sets_is_one_devstack_reads(node: DevstackNodePaths) -> None:
    # Fatal here rather than in the simulated stack.sh: the job's own names must
    # all be devstack's; an operator's extra ones only warn.
    import re
    for project in ("openstack/nova", "openstack/networking-hyperv", "openstack/os-win"):
        conf = rendered_conf(node, project=project)
        localrc = conf.split("[[test-config", 1)[0]
        names = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", localrc, re.M))
        assert names and names <= known_variables(), names - known_variables()
