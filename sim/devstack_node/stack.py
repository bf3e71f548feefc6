"""`stack.sh` and `unstack.sh` stand-ins.

stack.sh reads `local.conf` beside it, refuses one without a
`[[local|localrc]]` section or one that enables `n-cpu` on the controller
(the Hyper-V nodes are the computes), follows devstack's rules on extras.d,
plugins, ML2 drivers and images (sim/devstack_node/stacking.py, rules.py),
writes tempest's etc/tempest.conf, prints devstack-like progress, writes
`logs/stack.sh.log` and per-service logs, and records the stack in
`state/stacked.json`. Lab faults: `faults/stack` (fail with its text on
stderr), `faults/stack-hang` (hang, for timeout tests), `faults/stack-slow`
(a number of seconds each clone and service start takes, so the live output
can be watched; without it stack.sh takes no time of its own: a real one's
20 minutes are not what the simulation is for).
"""

from __future__ import annotations

import json
import re
import sys
import time

from sim.devstack_node import Node, die, load_node, log
from sim.devstack_node.stacking import configure_tempest, prepare, start_neutron
from sim.devstack_node.tempest_install import install_tempest

SERVICES = ("key", "g-api", "n-api", "n-cond", "n-sch", "placement-api", "q-svc",
            "q-agt", "q-dhcp", "q-l3", "q-meta")
_ENABLE = re.compile(r"^\s*enable_service\s+(.*)$")
_SERVICES_VAR = re.compile(r"^\s*ENABLED_SERVICES\s*(\+?=)\s*\"?([^\"]*)\"?\s*$")
_DISABLE = re.compile(r"^\s*disable_service\s+(.*)$")


def localrc(text: str) -> list[str] | None:
    """The lines of the [[local|localrc]] section, or None when there is none."""
    lines: list[str] | None = None
    for line in text.splitlines():
        if line.strip().startswith("[["):
            if lines is not None:
                break
            if re.match(r"^\[\[\s*local\s*\|\s*localrc\s*\]\]\s*$", line.strip()):
                lines = []
            continue
        if lines is not None:
            lines.append(line)
    return lines


def n_cpu_enabled(lines: list[str]) -> bool:
    """Whether the section explicitly leaves n-cpu enabled (later lines win)."""
    enabled = False
    for line in lines:
        if m := _ENABLE.match(line):
            enabled = enabled or "n-cpu" in m.group(1).replace(",", " ").split()
        elif m := _SERVICES_VAR.match(line):
            names = m.group(2).replace(",", " ").split()
            enabled = ("n-cpu" in names) or (enabled and m.group(1) == "+=")
        elif (m := _DISABLE.match(line)) and "n-cpu" in m.group(1).replace(",", " ").split():
            enabled = False
    return enabled


def _seconds(text: str | None) -> float:
    """A fault file's number of seconds (0 when unset or not a number)."""
    try:
        return max(0.0, float((text or "").strip() or 0))
    except ValueError:
        return 0.0


def stack(node: Node) -> None:
    node.logs_dir.mkdir(parents=True, exist_ok=True)
    main_log = node.logs_dir / "stack.sh.log"

    def say(line: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S.000")
        print(f"{stamp} | {line}", flush=True)
        with main_log.open("a", encoding="utf-8") as fh:
            fh.write(f"{stamp} | {line}\n")

    if node.fault("stack-wait") is not None:
        # A test holds every stack.sh here until it removes the fault, e.g. to see
        # two lab sets' builds stacking at the same time.
        say("+ ./stack.sh:main:230   lab fault stack-wait: waiting until it is removed")
        while node.fault("stack-wait") is not None:
            time.sleep(0.1)
    if node.fault("stack-hang") is not None:
        say("+ lib/nova:start_nova_api:1023   wait_for_service 60 http://127.0.0.1/compute/v2.1")
        time.sleep(3600)
    conf_file = node.devstack_dir / "local.conf"
    try:
        text = conf_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        die(f"stack.sh: {conf_file} not found: upload local.conf before stacking")
    lines = localrc(text)
    if lines is None:
        die(f"stack.sh: {conf_file} has no [[local|localrc]] section")
    if n_cpu_enabled(lines):
        die("stack.sh: n-cpu is enabled on the controller; the Hyper-V nodes are the "
            "computes (use 'disable_service n-cpu')")
    (node.logs_dir / "local.conf.txt").write_text(text, encoding="utf-8")
    say("+ ./stack.sh:main:230   echo 'stack.sh log /opt/stack/logs/stack.sh.log'")
    say("Installing package prerequisites")
    state = prepare(node, lines, say)
    fault = node.fault("stack")
    pace = _seconds(node.fault("stack-slow"))
    for project in ("keystone", "glance", "nova", "placement", "neutron", "tempest"):
        say(f"Cloning into '/opt/stack/{project}'...")
        time.sleep(pace)
    for service in SERVICES:
        say(f"Starting {service} — démarrage du service {service} (启动服务)")
        log(node.logs_dir / f"{service}.log", f"INFO {service} [-] Starting {service} service")
        if service == "q-svc":
            start_neutron(node, state, say)
        time.sleep(pace)
    if fault is not None:
        say("[ERROR] ./stack.sh:1234 Neutron did not start")
        die(fault or "stack.sh: scripted failure")
    say("Created network « private » (私有网络) with subnet 10.0.0.0/26")
    configure_tempest(node, state, text, say)
    say("This is your host IP address: 127.0.0.1")
    say("Keystone is serving at http://127.0.0.1/identity/")
    say("DevStack Version: 2023.2")
    say("stack.sh completed in 1 seconds.")
    install_tempest(node)  # where devstack on the node's branch puts it, never on PATH
    node.stacked_file.parent.mkdir(parents=True, exist_ok=True)
    node.stacked_file.write_text(
        json.dumps({"time": time.time(), "services": list(SERVICES)}), encoding="utf-8")


def unstack(node: Node) -> None:
    print("Stopping devstack services", flush=True)
    for service in SERVICES:
        log(node.logs_dir / f"{service}.log", f"INFO {service} [-] Stopping {service} service")
    node.stacked_file.unlink(missing_ok=True)


def main(argv: list[str]) -> None:
    command, root = argv[0], argv[1]
    node = load_node(root)
    if command == "stack":
        stack(node)
    elif command == "unstack":
        unstack(node)
    else:
        die(f"unknown command {command!r}", 2)


if __name__ == "__main__":
    main(sys.argv[1:])
