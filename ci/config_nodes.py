"""The configuration of the lab: nodes and how the CI reaches them, the Hyper-V
parent hosts that carry provisioned node VMs, and lab sets (one controller plus
its Hyper-V nodes, handed to one build at a time)."""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ci.config_base import Secret, _check_secret_given, _check_vlan_range, _Strict

NODE_NAME = r"^[A-Za-z0-9_.-]+$"


class SSHAccess(_Strict):
    port: int = Field(22, ge=1, le=65535)
    username: str
    key_file: Path
    known_hosts: Path


class WinRMAccess(_Strict):
    scheme: Literal["http", "https"] = "https"
    port: int | None = Field(None, ge=1, le=65535)
    path: str = "/wsman"
    transport: Literal["basic", "ntlm", "kerberos", "credssp", "plaintext", "ssl"] = "ntlm"
    username: str
    password: Secret
    ca_file: Path | None = None
    # Certificate validation is on unless an operator turns it off for one node.
    verify_certificate: bool = True
    operation_timeout: int = Field(20, ge=1)
    read_timeout: int = Field(30, ge=2)
    # What native tools that ignore the shell's UTF-8 code page write in (the
    # node's OEM code page: cp437 for en-US, cp850 for much of Western Europe).
    oem_codepage: str = "cp437"

    _password_given = field_validator("password")(_check_secret_given)

    @field_validator("oem_codepage")
    @classmethod
    def _codepage(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown code page {value!r}") from None
        return value

    @model_validator(mode="after")
    def _timeouts(self) -> WinRMAccess:
        if self.read_timeout <= self.operation_timeout:
            raise ValueError("read_timeout must be greater than operation_timeout")
        return self

    @property
    def endpoint_port(self) -> int:
        return self.port or (5986 if self.scheme == "https" else 5985)


# A Hyper-V VM name: Hyper-V allows up to 100 characters (New-VM -Name). The
# set is kept to what is safe in a PowerShell single-quoted literal and a log
# line; the scripts quote it anyway.
_VM_NAME = r"^[A-Za-z0-9_. -]{1,100}$"


class NodeConfig(_Strict):
    name: str = Field(pattern=NODE_NAME)
    label: Literal["devstack", "hyperv"]
    address: str
    ssh: SSHAccess | None = None
    winrm: WinRMAccess | None = None
    secrets: list[Secret] = Field(default_factory=list)
    # A devstack controller's data network: the NIC that goes into the OVS
    # bridge of the physical network (devstack creates the bridge but adds no
    # port: lib/neutron, OVS_PHYSICAL_BRIDGE), and this lab set's tenant VLANs.
    data_interface: str | None = Field(None, pattern=r"^[A-Za-z0-9_.:-]{1,15}$")
    vlan_range: str | None = None
    # static: a hand-installed host, reset by teardown + bootstrap every build.
    # checkpoint: a VM on `parent`, reverted to its clean checkpoint before
    # every build and turned off after it.
    provision: Literal["static", "checkpoint"] = "static"
    parent: str | None = Field(None, pattern=NODE_NAME)
    vm: str | None = Field(None, pattern=_VM_NAME)
    checkpoint: str = Field("clean", pattern=_VM_NAME)
    # What the checkpoint carries in its marker file (docs/nodes.md): proof
    # that the machine answering is the reverted VM, not a stale or wrong one.
    marker: str | None = Field(None, min_length=1, max_length=200, pattern=r"^[^\r\n]+$")

    _validate_vlan = field_validator("vlan_range")(_check_vlan_range)

    @model_validator(mode="after")
    def _access(self) -> NodeConfig:
        if self.label == "devstack" and self.ssh is None:
            raise ValueError("a devstack node needs an 'ssh' section")
        if self.label == "hyperv" and self.winrm is None:
            raise ValueError("a hyperv node needs a 'winrm' section")
        if self.label != "devstack" and (self.data_interface or self.vlan_range):
            raise ValueError("data_interface and vlan_range belong to a devstack node")
        if self.provision == "checkpoint" and self.parent is None:
            raise ValueError("provision: checkpoint needs 'parent', the Hyper-V host of its VM")
        if self.provision == "static" and (
                self.parent is not None or self.vm is not None or self.marker is not None
                or "checkpoint" in self.model_fields_set):
            raise ValueError("parent, vm, checkpoint and marker belong to a node with "
                             "provision: checkpoint")
        return self

    @property
    def vm_name(self) -> str:
        """The VM's name on its parent host (the node's name unless configured)."""
        return self.vm or self.name

    @property
    def provisioned(self) -> bool:
        return self.provision == "checkpoint"


class ParentHostConfig(_Strict):
    """A Hyper-V host that carries node VMs, reached over WinRM like a hyperv node."""

    name: str = Field(pattern=NODE_NAME)
    address: str
    winrm: WinRMAccess

    def as_node(self) -> NodeConfig:
        """The host as a node record, for the WinRM executor (never a pool node)."""
        return NodeConfig(name=self.name, label="hyperv", address=self.address,
                          winrm=self.winrm)


class LabSetConfig(_Strict):
    """One controller and its Hyper-V nodes: what one build gets at a time."""

    name: str = Field(pattern=NODE_NAME)
    controller: str
    hyperv: list[str] = Field(min_length=1)


def check_lab(nodes: list[NodeConfig], parents: list[ParentHostConfig],
              lab_sets: list[LabSetConfig]) -> None:
    """The references between nodes, parent hosts and lab sets (ValueError on the first
    problem, naming the key)."""
    by_name = {node.name: node for node in nodes}
    parent_names = [p.name for p in parents]
    if len(parent_names) != len(set(parent_names)):
        raise ValueError("parent_hosts: parent host names must be unique")
    for name in parent_names:
        if name in by_name:
            raise ValueError(f"parent_hosts: {name!r} is also a node's name: a parent host "
                             "carries node VMs and is never a node itself")
    vms: dict[tuple[str, str], str] = {}
    for index, node in enumerate(nodes):
        if node.parent is None:
            continue
        if node.parent not in parent_names:
            raise ValueError(f"nodes.{index}.parent: unknown parent host {node.parent!r} "
                             "(list it under parent_hosts)")
        # Hyper-V VM names are case-insensitive on one host (Get-VM -Name matches so).
        key = (node.parent, node.vm_name.lower())
        if key in vms:
            raise ValueError(f"nodes.{index}.vm: nodes {vms[key]} and {node.name} are the "
                             f"same VM {node.vm_name!r} on {node.parent}")
        vms[key] = node.name
    set_names = [s.name for s in lab_sets]
    if len(set_names) != len(set(set_names)):
        raise ValueError("lab_sets: lab set names must be unique")
    member_of: dict[str, str] = {}
    for index, lab_set in enumerate(lab_sets):
        where = f"lab_sets.{index}"
        members = [(f"{where}.controller", lab_set.controller, "devstack")]
        members += [(f"{where}.hyperv", name, "hyperv") for name in lab_set.hyperv]
        for place, name, label in members:
            member = by_name.get(name)
            if member is None:
                raise ValueError(f"{place}: unknown node {name!r}")
            if member.label != label:
                raise ValueError(f"{place}: {name} is a {member.label} node, not a {label} node")
            if name in member_of:
                # Two sets sharing a node would let two builds use it at once.
                raise ValueError(f"{place}: {name} is already in lab set {member_of[name]}: "
                                 "a node belongs to one lab set")
            member_of[name] = lab_set.name
