"""`openstack` client stand-in: the two listings the job checks, in the real JSON shapes.

`openstack compute service list [--service NAME] [-f json]` and
`openstack network agent list [-f json]` answer from the Windows nodes'
published state (`<lab>/hyperv/<node>.json`): a nova-compute service per
node, `State: up` while its service runs, and a "HyperV agent" per node,
`Alive: true` while the agent runs; plus the controller's own services.
It needs `source openrc` (OS_AUTH_URL) and a stacked cloud, as the real one does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from sim.devstack_node import Node, die, load_node

_NS = uuid.UUID("6f1f2c1e-0b7c-4cf0-9b53-2a4f0d7a1c3e")
CONTROLLER_SERVICES = ("nova-scheduler", "nova-conductor")
CONTROLLER_AGENTS = (("Open vSwitch agent", "neutron-openvswitch-agent"),
                     ("DHCP agent", "neutron-dhcp-agent"), ("L3 agent", "neutron-l3-agent"),
                     ("Metadata agent", "neutron-metadata-agent"))


def hyperv_nodes(lab_dir: Path) -> list[dict[str, Any]]:
    """The published state of every Windows node, by file name order."""
    nodes = []
    for path in sorted((lab_dir / "hyperv").glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # half-written or unreadable: the node is not reporting
        if isinstance(data, dict):
            data.setdefault("node", path.stem)
            nodes.append(data)
    return nodes


def _updated() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000", time.gmtime())


def compute_services(node: Node, service: str | None) -> list[dict[str, Any]]:
    rows = [(node.hostname, binary, True) for binary in CONTROLLER_SERVICES]
    for state in hyperv_nodes(node.lab_dir):
        services = state.get("services") or {}
        if "nova-compute" in services:
            rows.append((str(state["node"]), "nova-compute", services["nova-compute"] == "Running"))
    return [
        {"ID": str(uuid.uuid5(_NS, f"{host}/{binary}")), "Binary": binary, "Host": host,
         "Zone": "nova" if binary == "nova-compute" else "internal", "Status": "enabled",
         "State": "up" if up else "down", "Updated At": _updated()}
        for host, binary, up in rows if service in (None, binary)
    ]


def network_agents(node: Node) -> list[dict[str, Any]]:
    rows = [(node.hostname, kind, binary, True) for kind, binary in CONTROLLER_AGENTS]
    for state in hyperv_nodes(node.lab_dir):
        services = state.get("services") or {}
        if "neutron-hyperv-agent" in services:
            rows.append((str(state["node"]), "HyperV agent", "neutron-hyperv-agent",
                         services["neutron-hyperv-agent"] == "Running"))
    return [
        {"ID": str(uuid.uuid5(_NS, f"{host}/{binary}")), "Agent Type": kind, "Host": host,
         "Availability Zone": "nova" if kind in ("DHCP agent", "L3 agent") else None,
         "Alive": alive, "State": True, "Binary": binary}
        for host, kind, binary, alive in rows
    ]


def _print(rows: list[dict[str, Any]], fmt: str) -> None:
    if fmt == "json":
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    columns = list(rows[0]) if rows else []
    for row in [dict(zip(columns, columns, strict=True)), *rows]:
        print(" | ".join(str(row[c]) for c in columns))


def main(argv: list[str]) -> None:
    node = load_node(argv[0])
    parser = argparse.ArgumentParser(prog="openstack")
    parser.add_argument("words", nargs="+")
    parser.add_argument("--service")
    parser.add_argument("-f", "--format", default="table", choices=["json", "table", "value"])
    args = parser.parse_args(argv[1:])
    if not os.environ.get("OS_AUTH_URL"):
        die("Missing value auth-url required for auth plugin password")
    if not node.stacked_file.exists():
        die(f"Failed to discover available identity versions when contacting "
            f"{os.environ['OS_AUTH_URL']}. Attempting to parse version from URL.\n"
            f"Unable to establish connection to {os.environ['OS_AUTH_URL']}: "
            "[Errno 111] Connection refused")
    words = args.words
    if words == ["compute", "service", "list"]:
        _print(compute_services(node, args.service), args.format)
    elif words == ["network", "agent", "list"]:
        _print(network_agents(node), args.format)
    else:
        die(f"openstack: '{' '.join(words)}' is not an openstack command. See 'openstack --help'.",
            2)


if __name__ == "__main__":
    main(sys.argv[1:])
