"""Verdicts of `hyperv-ci lab check` on a parent Hyper-V host: pure functions.

A parent host carries the VMs of provisioned nodes (`provision: checkpoint`).
Each such node needs its VM, its clean checkpoint and, for a Hyper-V node VM,
nested virtualization (`Set-VMProcessor -ExposeVirtualizationExtensions
$true`; without it the role installs in the VM but no guest starts) and MAC
address spoofing on its adapters (without it nested guests get no network).
"""

from __future__ import annotations

from dataclasses import dataclass

from ci.config import NodeConfig
from runners.lab_verdict import CheckResult, ProbeError, failed, listify, passed, tagged_json


@dataclass(frozen=True)
class VMFacts:
    name: str
    exists: bool
    state: str
    checkpoints: list[str]
    nested: bool
    mac_spoofing: list[str]  # each network adapter's MacAddressSpoofing (On/Off)


def parse_parent_facts(stdout: str) -> tuple[bool, int, dict[str, VMFacts]]:
    """(Hyper-V module present, the host's clock in ms, each VM's facts by lower-cased name)."""
    data = tagged_json(stdout)
    try:
        vms = {}
        for entry in listify(data["vms"]):
            assert isinstance(entry, dict)
            vm = VMFacts(name=str(entry["Name"]), exists=bool(entry["Exists"]),
                         state=str(entry["State"] or ""),
                         checkpoints=[str(c) for c in listify(entry["Checkpoints"])],
                         nested=bool(entry["ExposeVirtualizationExtensions"]),
                         mac_spoofing=[str(m) for m in listify(entry.get("MacAddressSpoofing"))])
            vms[vm.name.lower()] = vm  # Hyper-V VM names are case-insensitive
        return bool(data["hyperv_module"]), int(data["unix_ms"]), vms
    except (KeyError, TypeError, ValueError, AssertionError) as exc:
        raise ProbeError(f"the parent host's facts lack or garble {exc}") from None


def parent_verdicts(parent: str, module: bool, nodes: list[NodeConfig],
                    vms: dict[str, VMFacts]) -> list[CheckResult]:
    """Per node VM on `parent`: `vm`, `checkpoint` and (Hyper-V nodes) `nested-virtualization`.

    The node's name goes into each result's detail; the result's node is the parent.
    """
    if not module:
        return [failed("hyperv-role", parent, "no Hyper-V module on the parent host",
                       "Install-WindowsFeature -Name Hyper-V -IncludeManagementTools -Restart")]
    results = []
    for node in nodes:
        vm_name = node.vm_name
        vm = vms.get(vm_name.lower())
        who = f"{node.name}: VM {vm_name!r}"
        if vm is None or not vm.exists:
            results.append(failed("vm", parent, f"{who} does not exist on {parent}",
                                  f"create the VM (docs/lab.md), or fix nodes.{node.name}.vm"))
            continue
        results.append(passed("vm", parent, f"{who} exists ({vm.state})"))
        wanted = node.checkpoint
        if wanted not in vm.checkpoints:
            have = ", ".join(vm.checkpoints) or "none"
            results.append(failed("checkpoint", parent, f"{who} has no checkpoint {wanted!r} "
                                  f"(has: {have})",
                                  f"prepare the VM, then Checkpoint-VM -Name '{vm_name}' "
                                  f"-SnapshotName '{wanted}' (docs/lab.md)"))
        else:
            results.append(passed("checkpoint", parent, f"{who} has checkpoint {wanted!r}"))
        if node.label != "hyperv":
            continue
        if vm.nested:
            results.append(passed("nested-virtualization", parent,
                                  f"{who} exposes the virtualization extensions"))
        else:
            results.append(failed("nested-virtualization", parent, f"{who} does not expose the "
                                  "virtualization extensions: no guest can start in it",
                                  f"Stop-VM -Name '{vm_name}' -TurnOff; Set-VMProcessor -VMName "
                                  f"'{vm_name}' -ExposeVirtualizationExtensions $true; then "
                                  "take the checkpoint again"))
        # Microsoft, "Run Hyper-V in a Virtual Machine with Nested Virtualization":
        # nested guests reach the network through the VM's adapter only with MAC
        # address spoofing on (the VM's vSwitch drops frames from unknown MACs).
        if vm.mac_spoofing and all(m == "On" for m in vm.mac_spoofing):
            results.append(passed("mac-address-spoofing", parent,
                                  f"{who}: MAC address spoofing On on every adapter"))
        else:
            shown = ", ".join(vm.mac_spoofing) or "no adapter"
            results.append(failed(
                "mac-address-spoofing", parent,
                f"{who}: MacAddressSpoofing {shown}: guests on the node get no network",
                f"Get-VMNetworkAdapter -VMName '{vm_name}' | Set-VMNetworkAdapter "
                "-MacAddressSpoofing On; then take the checkpoint again"))
    return results
