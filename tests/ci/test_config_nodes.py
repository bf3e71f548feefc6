"""The lab's configuration: provisioned nodes, parent hosts and lab sets, and every
reference between them checked on load, naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ci.config import ConfigError, load_config, parse_config

WINRM = {"username": "Administrator", "password": {"password_env": "HV_PASSWORD"}}
SSH = {"username": "stack", "key_file": "id", "known_hosts": "kh"}


def lab() -> dict:
    return {
        "gerrit": {"host": "review.example.org", "username": "ci", "key_file": "id",
                   "known_hosts": "kh"},
        "projects": [{"name": "openstack/nova", "jobs": ["unit"]}],
        "jobs": {"unit": {"type": "local", "command": ["true"]}},
        "parent_hosts": [{"name": "hv-parent-1", "address": "10.0.0.5", "winrm": dict(WINRM)}],
        "nodes": [
            {"name": "ctl1", "label": "devstack", "address": "10.0.1.10", "ssh": dict(SSH),
             "provision": "checkpoint", "parent": "hv-parent-1", "vlan_range": "500:549"},
            {"name": "hv1", "label": "hyperv", "address": "10.0.1.11", "winrm": dict(WINRM),
             "provision": "checkpoint", "parent": "hv-parent-1", "vm": "hv1-vm",
             "checkpoint": "clean-2026", "marker": "hv1 clean 2026-12-01 ü"},
            {"name": "hv2", "label": "hyperv", "address": "10.0.1.12", "winrm": dict(WINRM)},
        ],
        "lab_sets": [{"name": "set-a", "controller": "ctl1", "hyperv": ["hv1", "hv2"]}],
    }


def test_a_lab_with_parents_and_sets_loads() -> None:
    config = parse_config(lab())
    ctl, hv1, hv2 = config.nodes
    assert (ctl.provisioned, ctl.vm_name, ctl.checkpoint, ctl.marker) == (
        True, "ctl1", "clean", None)
    assert (hv1.vm_name, hv1.checkpoint, hv1.marker) == ("hv1-vm", "clean-2026",
                                                         "hv1 clean 2026-12-01 ü")
    assert hv2.provision == "static" and not hv2.provisioned
    assert config.parent_hosts[0].as_node().winrm == config.parent_hosts[0].winrm
    assert config.lab_sets[0].hyperv == ["hv1", "hv2"]


def test_without_lab_sections_nothing_changes() -> None:
    data = lab()
    for key in ("parent_hosts", "lab_sets"):
        data.pop(key)
    for node in data["nodes"]:
        for key in ("provision", "parent", "vm", "checkpoint", "marker"):
            node.pop(key, None)
    config = parse_config(data)
    assert config.parent_hosts == [] and config.lab_sets == []
    assert all(node.provision == "static" for node in config.nodes)


def _node(data: dict, name: str) -> dict:
    return next(node for node in data["nodes"] if node["name"] == name)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: _node(d, "hv1").pop("parent"),
         "nodes.1: Value error, provision: checkpoint needs 'parent'"),
        (lambda d: _node(d, "hv1").update(parent="hv-parent-9"),
         "nodes.1.parent: unknown parent host 'hv-parent-9'"),
        (lambda d: _node(d, "hv2").update(marker="m"),
         "nodes.2: Value error, parent, vm, checkpoint and marker belong to a node with "
         "provision: checkpoint"),
        (lambda d: _node(d, "hv2").update(checkpoint="clean"), "belong to a node with"),
        (lambda d: _node(d, "hv1").update(provision="nodepool"), "nodes.1.provision"),
        (lambda d: _node(d, "hv1").update(vm="hv1'; Remove-VM *"), "nodes.1.vm"),
        (lambda d: _node(d, "hv1").update(marker="two\nlines"), "nodes.1.marker"),
        (lambda d: _node(d, "hv1").update(vm="CTL1"),
         "nodes.1.vm: nodes ctl1 and hv1 are the same VM 'CTL1' on hv-parent-1"),
        (lambda d: d["parent_hosts"].append(dict(d["parent_hosts"][0])),
         "parent_hosts: parent host names must be unique"),
        (lambda d: d["parent_hosts"][0].update(name="hv2"), "'hv2' is also a node's name"),
        (lambda d: d["parent_hosts"][0].pop("winrm"), "parent_hosts.0.winrm: Field required"),
        (lambda d: d["lab_sets"][0].update(controller="hv2"),
         "lab_sets.0.controller: hv2 is a hyperv node, not a devstack node"),
        (lambda d: d["lab_sets"][0].update(hyperv=["hv1", "ctl1"]),
         "lab_sets.0.hyperv: ctl1 is a devstack node, not a hyperv node"),
        (lambda d: d["lab_sets"][0].update(hyperv=["hv1", "hv7"]),
         "lab_sets.0.hyperv: unknown node 'hv7'"),
        (lambda d: d["lab_sets"][0].update(hyperv=[]), "lab_sets.0.hyperv"),
        (lambda d: d["lab_sets"][0].update(hyperv=["hv1", "hv1"]),
         "hv1 is already in lab set set-a"),
        (lambda d: d["lab_sets"].append({"name": "set-a", "controller": "ctl1",
                                         "hyperv": ["hv2"]}),
         "lab_sets: lab set names must be unique"),
        (lambda d: (d["nodes"].append({"name": "ctl2", "label": "devstack", "address": "x",
                                       "ssh": dict(SSH), "vlan_range": "600:649"}),
                    d["lab_sets"][0].update(hyperv=["hv1"]),
                    d["lab_sets"].append({"name": "set-b", "controller": "ctl2",
                                          "hyperv": ["hv1"]})),
         "lab_sets.1.hyperv: hv1 is already in lab set set-a: a node belongs to one lab set"),
    ],
)
def test_bad_lab_config_names_the_key(mutate, expected: str) -> None:
    data = lab()
    mutate(data)
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert expected in str(err.value)


def test_parent_host_secrets_are_redacted_and_paths_resolve(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = lab()
    data["parent_hosts"][0]["winrm"] = {"username": "Administrator", "ca_file": "ca.pem",
                                        "password": {"password_file": "parent.secret"}}
    (tmp_path / "parent.secret").write_text("Pärent-s3cret\n", encoding="utf-8")
    monkeypatch.setenv("HV_PASSWORD", "node-pw")
    path = tmp_path / "ci.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    config = load_config(path)
    access = config.parent_hosts[0].winrm
    assert access.ca_file == tmp_path / "ca.pem"
    assert access.password.password_file == tmp_path / "parent.secret"
    assert "Pärent-s3cret" in config.secrets()
