"""The controller's half of the devstack-hyperv job: which driver a change runs,
the image, the data network and their config checks, and what the controller's
scripts do (run for real against stand-ins at the PATH seam)."""

from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from ci.changes import ChangeInfo
from ci.config import ConfigError, parse_config
from runners.job_values import RenderError, in_tree_driver_available
from runners.render import render_job
from sim.devstack import make_devstack_node
from sim.lab import SimLab

IMAGE = "https://images.example.org/cirros-0.6.2-x86_64-disk.vhdx"
WINRM = {"username": "Administrator", "password": {"password_env": "HV_PW"}}
SSH = {"username": "stack", "key_file": "/k", "known_hosts": "/kh"}


def config_data(job: dict[str, Any] | None = None, **controller: Any) -> dict[str, Any]:
    return {
        "gerrit": {"host": "127.0.0.1", "username": "ci", "key_file": "/k", "known_hosts": "/kh"},
        "projects": [{"name": "openstack/nova", "jobs": ["hyperv"]}],
        "jobs": {"hyperv": {"type": "devstack-hyperv", "image": IMAGE, **(job or {})}},
        "nodes": [
            {"name": "devstack-1", "label": "devstack", "address": "10.0.0.5", "ssh": SSH,
             **controller},
            {"name": "hv-1", "label": "hyperv", "address": "10.0.0.11", "winrm": WINRM},
            {"name": "hv-2", "label": "hyperv", "address": "10.0.0.12", "winrm": WINRM},
        ],
    }


def change(project: str = "openstack/nova", branch: str = "unmaintained/2023.1") -> ChangeInfo:
    return ChangeInfo(project=project, branch=branch, number=9, patchset=1,
                     ref="refs/changes/09/9/1", revision="b" * 40, subject="s", owner_name="o")


def render(data: dict[str, Any], ref: ChangeInfo | None = None) -> Any:
    config = parse_config(data)
    return render_job(config, "hyperv", ref or change(), config.nodes)


def nova_driver(data: dict[str, Any], ref: ChangeInfo) -> str:
    conf = render(data, ref)["hv-1-nova.conf"]
    return next(line for line in conf.splitlines() if line.startswith("compute_driver"))


@pytest.mark.parametrize(("branch", "available"), [
    ("unmaintained/2023.1", True), ("stable/2023.2", True), ("unmaintained/zed", True),
    ("unmaintained/yoga", True), ("unmaintained/2024.1", False), ("stable/2025.1", False),
    ("master", False),
])
def test_in_tree_driver_cut_off(branch: str, available: bool) -> None:
    # nova removed nova/virt/hyperv in 2024.1 (29.0.0); zed and yoga still carry it.
    assert in_tree_driver_available(branch) is available


def test_each_project_runs_the_driver_its_change_touches() -> None:
    data = config_data()
    assert nova_driver(data, change()) == "compute_driver = hyperv.HyperVDriver"
    assert nova_driver(data, change("openstack/compute-hyperv")) == (
        "compute_driver = compute_hyperv.driver.HyperVDriver")
    for project in ("openstack/networking-hyperv", "openstack/os-win"):
        assert nova_driver(data, change(project)) == (
            "compute_driver = compute_hyperv.driver.HyperVDriver")
    with pytest.raises(RenderError, match="a nova change on 'master' cannot be tested"):
        render(data, change(branch="master"))


def test_local_conf_enables_the_networking_hyperv_plugin_and_the_image() -> None:
    conf = render(config_data())["devstack-1-local.conf"]
    assert ("enable_plugin networking-hyperv https://opendev.org/openstack/networking-hyperv "
            "unmaintained/2023.1") in conf
    assert "extras.d" not in render(config_data())["devstack-1-stack.sh"].replace(
        "rm -f -- extras.d/70-hyperv-ci-networking-hyperv.sh", "").split("# networking-hyperv")[0]
    for line in ("DOWNLOAD_DEFAULT_IMAGES=False", f"IMAGE_URLS={IMAGE}",
                 "DEFAULT_IMAGE_NAME=cirros-0",  # upload_image cuts at the first dot
                 "DEFAULT_IMAGE_FILE_NAME=cirros-0.6.2-x86_64-disk.vhdx",
                 "img_file = /opt/stack/devstack/files/cirros-0.6.2-x86_64-disk.vhdx",
                 "img_disk_format = vhdx", "attach_encrypted_volume = False"):
        assert line in conf.splitlines(), line
    path = render(config_data({"image": "/srv/images/win.vhd"}))["devstack-1-local.conf"]
    assert "IMAGE_URLS=file:///srv/images/win.vhd" in path
    assert "img_file = /srv/images/win.vhd" in path and "img_disk_format = vhd" in path


def test_a_networking_hyperv_change_is_the_plugin() -> None:
    conf = render(config_data(), change("openstack/networking-hyperv"))["devstack-1-local.conf"]
    assert "enable_plugin networking-hyperv /opt/stack/networking-hyperv hyperv-ci-9-1" in conf
    assert "NETWORKING_HYPERV_REPO" not in conf


def test_a_hostile_branch_never_names_the_plugin_branch() -> None:
    with pytest.raises(RenderError, match="networking_hyperv_ref"):
        render(config_data(), change("openstack/os-win", "stable/2023.1'; rm -rf ~"))


@pytest.mark.parametrize(("image", "message"), [
    (None, "image: Field required"),
    ("https://example.org/cirros.qcow2", ".vhd or .vhdx"),
    ("https://example.org/cirros.vhdx.gz", ".vhd or .vhdx"),
    ("relative/path.vhdx", "absolute path"),
    ("/srv/my images/a.vhdx", "without spaces"),
])
def test_the_image_is_an_operator_setting(image: str | None, message: str) -> None:
    data = config_data({"image": image})
    if image is None:  # no image at all: refused when the config is loaded
        del data["jobs"]["hyperv"]["image"]
    with pytest.raises((ConfigError, RenderError), match=message):
        render(data)


def test_vlan_ranges_are_checked_and_per_controller() -> None:
    conf = render(config_data(vlan_range="600:699"))["devstack-1-local.conf"]
    assert "TENANT_VLAN_RANGE=600:699" in conf and "ML2_VLAN_RANGES=physnet1:600:699" in conf
    for bad in ("0:100", "100:5000", "200:100", "500-600"):
        with pytest.raises(ConfigError, match="VLAN range"):
            parse_config(config_data({"vlan_range": bad}))
    data = config_data(vlan_range="600:699")
    data["nodes"].append({"name": "devstack-2", "label": "devstack", "address": "10.1.0.5",
                          "ssh": SSH, "vlan_range": "650:750"})
    overlap = r"devstack-1 \(600:699\) and devstack-2 \(650:750\) share"
    with pytest.raises(ConfigError, match=overlap):
        parse_config(data)
    data["nodes"][-1]["vlan_range"] = "700:799"
    parse_config(data)
    del data["nodes"][-1]["vlan_range"]  # the job's default 500:2000 overlaps 600:699
    with pytest.raises(ConfigError, match="share VLANs"):
        parse_config(data)
    hv = config_data()
    hv["nodes"][1]["data_interface"] = "eth1"
    with pytest.raises(ConfigError, match="belong to a devstack node"):
        parse_config(hv)


def fake_tools(tmp_path: Path) -> tuple[Path, Path]:
    """ovs-vsctl, ip and sudo that record their argv (the PATH seam)."""
    bin_dir, calls = tmp_path / "fakebin", tmp_path / "calls.txt"
    bin_dir.mkdir()
    for tool in ("ovs-vsctl", "ip", "sudo"):
        script = bin_dir / tool
        script.write_text(f'#!/bin/sh\necho "{tool} $*" >> {calls}\n'
                          + ('[ "$1" = -n ] && shift; exec "$@"\n' if tool == "sudo" else ""),
                          encoding="utf-8")
        script.chmod(0o755)
    return bin_dir, calls


def test_stack_sh_puts_the_data_interface_into_the_bridge(tmp_path: Path) -> None:
    devstack = tmp_path / "devstack"
    devstack.mkdir()
    (devstack / "stack.sh").write_text("#!/bin/sh\necho stacked\n", encoding="utf-8")
    (devstack / "stack.sh").chmod(0o755)
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "local.conf").write_text("", encoding="utf-8")
    data = config_data({"devstack_dir": str(devstack), "workspace": str(tmp_path / "ws")},
                       data_interface="ens4f1")
    script = render(data)["devstack-1-stack.sh"]
    bin_dir, calls = fake_tools(tmp_path)
    env = dict(os.environ, PATH=f"{bin_dir}:/usr/bin:/bin")
    proc = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    recorded = calls.read_text(encoding="utf-8")
    assert "ovs-vsctl --may-exist add-port br-physnet1 ens4f1" in recorded
    assert "ip link set dev ens4f1 up" in recorded
    without = render(config_data({"devstack_dir": str(devstack)}))["devstack-1-stack.sh"]
    assert "add-port" not in without


def test_collect_logs_gathers_the_system_state(tmp_path: Path) -> None:
    node = make_devstack_node(tmp_path / "node", tmp_path / "lab")
    (node.logs_dir / "q-svc.log").write_text("q-svc started\n", encoding="utf-8")
    data = config_data({"devstack_dir": str(node.devstack_dir),
                        "tempest_dir": str(node.tempest_dir),
                        "workspace": str(tmp_path / "ws")})
    script = render(data)["devstack-1-collect-logs.sh"]
    assert "/etc/cinder" in script
    # A slow client: the listings run in the background and must be in the archive.
    real = node.bin_dir / "openstack"
    real.rename(node.bin_dir / "openstack.real")
    real.write_text('#!/bin/sh\nsleep 1\nexec "$0.real" "$@"\n', encoding="utf-8")
    real.chmod(0o755)
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=False,
                          env=dict(os.environ, PATH="/usr/bin:/bin"))
    assert proc.returncode == 0, proc.stderr
    with tarfile.open(tmp_path / "ws" / "logs.tar.gz") as archive:
        listings = {name: archive.extractfile(f"logs/system/{name}").read().decode()
                    for name in ("compute-services.txt", "network-agents.txt")}
    # The node is not stacked: the client's own answer, complete, is what is archived.
    assert all("Unable to establish connection" in text for text in listings.values())
    system = tmp_path / "ws" / "logs" / "system"
    assert "RabbitMQ version" in (system / "rabbitmq-status.txt").read_text(encoding="utf-8")
    assert "Bridge br-physnet1" in (system / "ovs-vsctl-show.txt").read_text(encoding="utf-8")
    if not Path("/var/log/syslog").exists():  # else the real syslog file is copied
        assert "q-svc started" in (system / "syslog.txt").read_text(encoding="utf-8")


def test_the_lab_points_the_job_at_an_image_on_the_controller(tmp_path: Path) -> None:
    with SimLab(tmp_path / "lab", hyperv_nodes=1) as lab:
        image = Path(lab.job_overrides()["image"])
        assert image.is_file() and image.suffix == ".vhdx"
