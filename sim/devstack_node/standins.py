"""System tools of the simulated controller that log collection reads:
`journalctl` (the journal: no syslog file here), `rabbitmq-diagnostics status`
and `rabbitmqctl status`, `ovs-vsctl show`, and `sudo` (runs its command: the
sandbox has no root).

They live in the node's bin/ directory, which `source openrc` puts first on
PATH, so the job's scripts find them as they find the real ones.
"""

from __future__ import annotations

import shlex
from pathlib import Path

SUDO = """#!/bin/sh
# sudo stand-in (simulated controller): devstack's user may run anything.
[ "$1" = "-n" ] && shift
exec "$@"
"""

JOURNALCTL = """#!/bin/sh
# journalctl stand-in (simulated controller): the services' log lines.
for f in {logs}/*.log; do
    [ -f "$f" ] && cat -- "$f"
done
exit 0
"""

# RabbitMQ 3.8+ ships both tools, and `rabbitmq-diagnostics status` prints what
# `rabbitmqctl status` does. Without this one, the host's own rabbitmq-diagnostics
# (if installed) ran instead: an Erlang VM start of a second or so, for an error.
RABBITMQCTL = """#!/bin/sh
# {tool} stand-in (simulated controller): `status` as RabbitMQ 3.x prints it.
if [ "$1" = status ]; then
    cat <<'OUT'
Status of node rabbit@devstack-1 ...
Runtime

OS PID: 1401
OS: Linux
Uptime (seconds): 3600
RabbitMQ version: 3.9.13
Node name: rabbit@devstack-1

Listeners

Interface: [::], port: 5672, protocol: amqp, purpose: AMQP 0-9-1 and AMQP 1.0
OUT
    exit 0
fi
echo "{tool} stand-in: not modelled: $*" >&2
exit 64
"""

OVS_VSCTL = """#!/bin/sh
# ovs-vsctl stand-in (simulated controller): `show` of devstack's bridges.
if [ "$1" = show ]; then
    cat <<'OUT'
6b1c3f6e-0d7e-4d58-9a0e-4c1f6a1b2c3d
    Manager "ptcp:6640:127.0.0.1"
    Bridge br-int
        fail_mode: secure
        Port br-int
            Interface br-int
                type: internal
        Port int-br-physnet1
            Interface int-br-physnet1
                type: patch
    Bridge br-physnet1
        Port br-physnet1
            Interface br-physnet1
                type: internal
        Port phy-br-physnet1
            Interface phy-br-physnet1
                type: patch
    ovs_version: "2.17.9"
OUT
    exit 0
fi
echo "ovs-vsctl stand-in: not modelled: $*" >&2
exit 1
"""


def install_standins(bin_dir: Path, logs_dir: Path) -> None:
    """Write the stand-ins into `bin_dir` (the node's bin/)."""
    scripts = {"sudo": SUDO, "journalctl": JOURNALCTL.replace("{logs}", shlex.quote(str(logs_dir))),
               "rabbitmqctl": RABBITMQCTL.replace("{tool}", "rabbitmqctl"),
               "rabbitmq-diagnostics": RABBITMQCTL.replace("{tool}", "rabbitmq-diagnostics"),
               "ovs-vsctl": OVS_VSCTL}
    for name, text in scripts.items():
        path = bin_dir / name
        path.write_text(text, encoding="utf-8")
        path.chmod(0o755)
