"""More than one lab set in the simulated lab: one more controller per set.

Every controller of a real lab is its own machine, so one job configuration
(devstack_dir, tempest_dir, workspace, image) fits them all. Here they share
one machine: controller N's tree is built under `state_dir/devstack-N`, and
its sshd runs in a mount namespace of its own where that tree is bind-mounted
over the first controller's (`state_dir/devstack`), so each controller's
sessions find their own tree at the job's paths (sim/sshd.py `bind`; root
only). The lab dir (Windows nodes' published state, fault files) is shared:
a controller lists every Windows node of the lab, and the job checks its
own by name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sim import sshd
from sim.devstack import make_devstack_node
from sim.lab_probe import install_controller_tools

# Each set's tenant VLANs: the config refuses two controllers sharing one.
VLANS_PER_SET = 50
FIRST_VLAN = 500


class LabSetsUnavailable(RuntimeError):
    """More than one lab set needs OpenSSH's sshd and root (mount namespaces)."""


@dataclass
class ExtraController:
    name: str
    tree: Path
    server: sshd.OpenSSHServer


def home_of(tree: Path) -> Path:
    """A provisioned controller's CI account home (where its checkpoint's marker is)."""
    home = tree / "home"
    home.mkdir(parents=True, exist_ok=True)
    return home


def vlan_range(index: int) -> str:
    """Lab set `index` (1-based)'s tenant VLAN range."""
    first = FIRST_VLAN + (index - 1) * VLANS_PER_SET
    return f"{first}:{first + VLANS_PER_SET - 1}"


def can_run_sets(use_sshd: bool | None) -> str | None:
    """Why this machine cannot simulate several lab sets (None: it can)."""
    if use_sshd is False or not sshd.available():
        return "several lab sets need OpenSSH's sshd (Debian package openssh-server)"
    if os.geteuid() != 0:
        return "several lab sets need root: each controller's sshd bind-mounts its tree"
    return None


def start_controller(state_dir: Path, lab_dir: Path, name: str, index: int,
                     prepare: Any, *, machine: bool = False) -> ExtraController:
    """Controller `index` (2, 3, ...): its tree, prepared by `prepare(tree, devstack)`,
    served by an sshd that shows it at the first controller's paths; `machine`:
    with its own host name and home (a VM a parent host carries)."""
    tree = state_dir / f"devstack-{index}"
    devstack = make_devstack_node(tree, lab_dir)
    prepare(tree, devstack)
    tools = install_controller_tools(tree)
    server = sshd.OpenSSHServer(state_dir / f"sshd-{index}", bind=(tree, state_dir / "devstack"),
                                hostname=name if machine else None,
                                home=home_of(tree) if machine else None)
    server.path_prefix = tools
    server.start()
    return ExtraController(name, tree, server)


def controller_entry(name: str, server: Any, vlans: str | None) -> dict[str, Any]:
    """A controller's `nodes:` entry."""
    entry: dict[str, Any] = {
        "name": name, "label": "devstack", "address": "127.0.0.1",
        "ssh": {"port": server.port, "username": server.username,
                "key_file": str(server.client_key_file),
                "known_hosts": str(server.known_hosts_file)}}
    if vlans is not None:
        entry["vlan_range"] = vlans
    return entry
