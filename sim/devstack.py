"""The simulated devstack controller: a directory tree served over SSH.

`make_devstack_node(root, lab_dir)` lays out, under `root`:

    devstack/stack.sh, unstack.sh, openrc   stand-ins (upload local.conf beside them)
    tempest/                                 the bundled suite (sim/tempest_suite) + .stestr.conf
    bin/openstack                            stand-in command (`source openrc` puts bin/ first)
    logs/                                    what log collection copies: stack.sh.log,
                                             local.conf.txt, <service>.log, tempest.log
    state/stacked.json                       present while the cloud is stacked
    node.json                                the node's settings for the stand-ins
                                             (`devstack_branch`: the simulated devstack's)

stack.sh installs the `tempest` stand-in where devstack on that branch
installs tempest (`tempest/.tox/tempest/bin`, and `data/venv/bin` on master
with GLOBAL_VENV; see sim/devstack_node/tempest_install.py), never on
openrc's PATH.

so the job's defaults map as DEVSTACK_DIR=root/devstack,
TEMPEST_DIR=root/tempest and logs at `$DEVSTACK_DIR/../logs`. The lab
directory holds the Windows nodes' state (`hyperv/<node>.json`, read by
`openstack`) and scripted faults (`faults/stack`, `faults/stack-hang`,
`faults/tempest-fail`: fragments of test ids, one a line, that always fail;
`faults/tempest-flaky`: fragments of test ids that fail the first time they
run in a build and pass when re-run). The stand-ins run with the Python that
created the node, so they work wherever the CI itself runs.
"""

from __future__ import annotations

import json
import shlex
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from sim.devstack_node.standins import install_standins
from sim.devstack_node.tempest_install import DEFAULT_BRANCH

SUITE = Path(__file__).parent / "tempest_suite"


@dataclass(frozen=True)
class DevstackNodePaths:
    root: Path
    devstack_dir: Path
    tempest_dir: Path
    bin_dir: Path
    logs_dir: Path
    lab_dir: Path

    @property
    def stacked(self) -> bool:
        """Whether stack.sh has completed (and unstack.sh not run since)."""
        return (self.root / "state" / "stacked.json").exists()


# The stand-ins need only the standard library and sim/: they start without
# site (-S), which in this virtualenv costs ~50 ms a start (its .pth files and
# the editable install's finder), from the source tree put first on sys.path.
_BOOT = ("import runpy, sys; sys.path.insert(0, sys.argv[1]); module = sys.argv[2]; "
         "del sys.argv[1:3]; runpy.run_module(module, run_name='__main__', alter_sys=True)")
SOURCE_ROOT = Path(__file__).resolve().parents[1]


def _wrapper(path: Path, python: str, module: str, *args: str) -> None:
    # A fixed argv, shell-quoted: the paths may hold spaces or non-ASCII.
    line = shlex.join([python, "-I", "-S", "-c", _BOOT, str(SOURCE_ROOT), module, *args])
    path.write_text(f"#!/bin/sh\nexec {line} \"$@\"\n", encoding="utf-8")
    path.chmod(0o755)


def _openrc(bin_dir: Path) -> str:
    return "\n".join([
        "# devstack openrc stand-in: source openrc [username] [project]",
        'export OS_USERNAME="${1:-admin}"',
        'export OS_PROJECT_NAME="${2:-$OS_USERNAME}"',
        "export OS_USER_DOMAIN_ID=default",
        "export OS_PROJECT_DOMAIN_ID=default",
        "export OS_AUTH_URL=http://127.0.0.1/identity",
        "export OS_IDENTITY_API_VERSION=3",
        "export OS_REGION_NAME=RegionOne",
        f'export PATH={shlex.quote(str(bin_dir))}:"$PATH"',
        "",
    ])


def make_devstack_node(root: Path, lab_dir: Path, *, hostname: str | None = None,
                       python: str | None = None,
                       devstack_branch: str = DEFAULT_BRANCH) -> DevstackNodePaths:
    """Create (or refresh) the devstack node tree under `root`; see the module docstring."""
    root, lab_dir = Path(root).resolve(), Path(lab_dir).resolve()
    python = python or sys.executable
    paths = DevstackNodePaths(root=root, devstack_dir=root / "devstack",
                              tempest_dir=root / "tempest", bin_dir=root / "bin",
                              logs_dir=root / "logs", lab_dir=lab_dir)
    for directory in (paths.devstack_dir, paths.bin_dir, paths.logs_dir, root / "state",
                      lab_dir / "hyperv", lab_dir / "faults"):
        directory.mkdir(parents=True, exist_ok=True)
    (root / "node.json").write_text(json.dumps({
        "root": str(root), "lab_dir": str(lab_dir), "python": python,
        "hostname": hostname or socket.gethostname(), "devstack_branch": devstack_branch,
    }, ensure_ascii=False, indent=2), encoding="utf-8")
    _wrapper(paths.devstack_dir / "stack.sh", python, "sim.devstack_node.stack", "stack", str(root))
    _wrapper(paths.devstack_dir / "unstack.sh", python, "sim.devstack_node.stack", "unstack",
             str(root))
    (paths.devstack_dir / "openrc").write_text(_openrc(paths.bin_dir), encoding="utf-8")
    _wrapper(paths.bin_dir / "openstack", python, "sim.devstack_node.openstack", str(root))
    install_standins(paths.bin_dir, paths.logs_dir)  # journalctl, rabbitmqctl, ovs-vsctl, sudo
    # Not on PATH: stack.sh installs tempest where devstack does (a refreshed tree starts so).
    (paths.bin_dir / "tempest").unlink(missing_ok=True)
    shutil.rmtree(paths.tempest_dir / "tempest", ignore_errors=True)
    shutil.copytree(SUITE / "tempest", paths.tempest_dir / "tempest",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(SUITE / ".stestr.conf", paths.tempest_dir / ".stestr.conf")
    return paths
