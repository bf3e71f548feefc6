"""The simulated lab: one devstack controller over SSH and N Hyper-V nodes over WinRM.

Everything listens on 127.0.0.1 and lives under one state directory:

    state_dir/lab/                 the lab dir shared by the simulated nodes
    state_dir/lab/faults/          files that make the controller misbehave
                                   (`stack`, `stack-hang`, `tempest-fail`; see sim/devstack.py)
    state_dir/lab/hyperv/<n>.json  each Windows node's services, read by the controller
    state_dir/devstack/            the controller's tree (devstack, tempest, workspace)
    state_dir/sshd/                keys, known_hosts and the SSH server's files

The controller is served by OpenSSH's real sshd when it is installed, else by
the paramiko exec server. Windows nodes' faults: `lab.winrm[name].faults`.

`node_configs()` and `job_overrides()` give the YAML-shaped pieces a config
needs to point the devstack-hyperv job at this lab.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from ci.config import NodeConfig
from runners.provision import LINUX_MARKER_PATH, WINDOWS_MARKER_PATH
from sim import lab_sets as lab_sets_sim
from sim import sshd
from sim.artefacts import ArtefactServer
from sim.devstack import make_devstack_node
from sim.hyperv_parent import ControllerGuest, SimParentHost
from sim.lab_probe import install_controller_tools, prepare_node
from sim.winrm import SimWinRMServer

logger = logging.getLogger(__name__)

WINRM_USER = "Administrator"
# The lab's secrets travel as environment variables, as the config expects them.
WINRM_PASSWORD_ENV = "HYPERV_CI_SIM_WINRM_PASSWORD"
ADMIN_PASSWORD_ENV = "HYPERV_CI_SIM_ADMIN_PASSWORD"
SERVICE_PASSWORD_ENV = "HYPERV_CI_SIM_SERVICE_PASSWORD"
ACCOUNT_PASSWORD_ENV = "HYPERV_CI_SIM_ACCOUNT_PASSWORD"
# The domain account the nodes' services run as (migration needs one, not LocalSystem).
SERVICE_ACCOUNT = "HVCI\\hyperv-ci-svc"
DEVSTACK_NODE = "devstack-1"
PARENT_HOST = "hv-parent-1"
IMAGE_NAME = "cirros-0.6.2-x86_64-disk.vhdx"
CHECKPOINT = "clean"


def marker_of(node: str) -> str:
    """What a simulated node's clean checkpoint carries in its marker file."""
    return f"hyperv-ci clean checkpoint of {node}"
WINDOWS_ROOT = "C:\\OpenStack"


# The job's scripts map the computes into the cell with nova-manage; sim/devstack.py
# has no stand-in for it, so the lab adds one (unless the node already has one).
NOVA_MANAGE = """#!/bin/sh
# nova-manage stand-in (sim/lab.py): only `cell_v2 discover_hosts` is modelled.
if [ "$1" = cell_v2 ] && [ "$2" = discover_hosts ]; then
    echo "Found 2 cell mappings."
    echo "Checking host mapping for compute hosts in cell 'cell1'"
    exit 0
fi
echo "nova-manage stand-in: not modelled: $*" >&2
exit 2
"""


class _SSHServer(Protocol):
    port: int
    username: str
    client_key_file: Path
    known_hosts_file: Path

    def stop(self) -> None: ...


def _start_ssh_server(workdir: Path, use_sshd: bool | None, path_prefix: Path,
                      machine: tuple[str, Path] | None = None) -> _SSHServer:
    if use_sshd is None:
        use_sshd = sshd.available()
    if use_sshd:
        # `machine`: (host name, home) of a controller a parent host carries as a VM.
        openssh = sshd.OpenSSHServer(workdir, hostname=machine[0] if machine else None,
                                     home=machine[1] if machine else None)
        openssh.path_prefix = path_prefix
        return openssh.start()
    from sim.exec_server import ParamikoExecServer

    server = ParamikoExecServer(workdir)
    server.path_prefix = path_prefix
    server.start()
    return server


def _prepare_tree(tree: Path, devstack: Any) -> None:
    """What the lab adds to a controller's tree: the guest image and nova-manage."""
    image = tree / "images" / IMAGE_NAME
    image.parent.mkdir(parents=True, exist_ok=True)
    image.write_bytes(b"conectix" + bytes(504))  # a VHD footer's cookie
    nova_manage = Path(devstack.bin_dir) / "nova-manage"
    if not nova_manage.exists():
        nova_manage.write_text(NOVA_MANAGE, encoding="utf-8")
        nova_manage.chmod(0o755)


class SimLab:
    """Start with `.start()` (or `with SimLab(...) as lab:`), stop with `.stop()`."""

    def __init__(self, state_dir: Path, hyperv_nodes: int = 2, *, use_sshd: bool | None = None,
                 winrm_timeouts: tuple[int, int] = (2, 5), provisioned: bool = False,
                 lab_sets: int = 1) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.lab_dir = self.state_dir / "lab"
        self.hyperv_nodes = hyperv_nodes  # per lab set
        # Lab sets beyond the first each add a controller (sim/lab_sets.py) and
        # `hyperv_nodes` more Windows nodes; `lab_set_configs()` groups them.
        self.lab_sets = lab_sets
        self.controllers: list[lab_sets_sim.ExtraController] = []
        # The Hyper-V nodes as VMs of a simulated parent host (sim/hyperv_parent.py),
        # reverted to their clean checkpoint before every build.
        self.provisioned = provisioned
        # The controllers too, where each can be a machine of its own (root, sshd:
        # sim/sshd.py); elsewhere they stay static.
        self.provisioned_controllers = provisioned and lab_sets_sim.can_run_sets(use_sshd) is None
        self.parent: SimParentHost | None = None
        self.use_sshd = use_sshd
        self.winrm_timeouts = winrm_timeouts  # (operation, read) seconds for the node configs
        self.winrm: dict[str, SimWinRMServer] = {}
        self.ssh: _SSHServer | None = None
        # Installers and tools the nodes download, as a real lab's web server serves them.
        self.artefacts: ArtefactServer | None = None
        self.devstack: Any = None  # sim.devstack's paths of the controller tree
        self._passwords: dict[str, str] = {}

    @property
    def image_path(self) -> Path:
        """The guest image on the simulated controller (a stand-in file)."""
        return self.state_dir / "devstack" / "images" / IMAGE_NAME

    @property
    def faults_dir(self) -> Path:
        """Where the controller's fault files go (`stack`, `stack-hang`, `tempest-fail`)."""
        return self.lab_dir / "faults"

    @property
    def secrets_dir(self) -> Path:
        """The lab's passwords, one file each (named like their environment variables)."""
        return self.state_dir / "secrets"

    def _secret(self, env: str) -> dict[str, str]:
        return {"password_file": str(self.secrets_dir / env)}

    def start(self) -> SimLab:
        """Create the lab and start every node; sets the lab's password variables."""
        (self.lab_dir / "faults").mkdir(parents=True, exist_ok=True)
        (self.lab_dir / "hyperv").mkdir(parents=True, exist_ok=True)
        for env in (WINRM_PASSWORD_ENV, ADMIN_PASSWORD_ENV, SERVICE_PASSWORD_ENV,
                    ACCOUNT_PASSWORD_ENV):
            # Reuse a password the environment already holds (a restarted demo keeps its config).
            value = os.environ.get(env) or secrets.token_urlsafe(18)
            os.environ[env] = value
            self._passwords[env] = value
            # Also in a file the configs name: a command started from another shell
            # (`hyperv-ci -c .demo/demo-config.yaml lab check`) has no such variable.
            self.secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            path = self.secrets_dir / env
            path.touch(mode=0o600)
            path.write_text(value, encoding="utf-8")
        if self.lab_sets > 1:
            why = lab_sets_sim.can_run_sets(self.use_sshd)
            if why is not None:
                raise lab_sets_sim.LabSetsUnavailable(why)
        try:
            self.devstack = make_devstack_node(self.state_dir / "devstack", self.lab_dir)
            _prepare_tree(self.state_dir / "devstack", self.devstack)
            # The controller's CI account (`id`, `sudo`) as `lab check` sees it.
            tools = install_controller_tools(self.state_dir / "devstack")
            machine = ((DEVSTACK_NODE, lab_sets_sim.home_of(self.state_dir / "devstack"))
                       if self.provisioned_controllers else None)
            self.ssh = _start_ssh_server(self.state_dir / "sshd", self.use_sshd, tools, machine)
            self.artefacts = ArtefactServer().start()
            for index in range(1, self.hyperv_nodes * self.lab_sets + 1):
                name = f"hv-{index}"
                server = SimWinRMServer(name, self.lab_dir, WINRM_USER,
                                        self._passwords[WINRM_PASSWORD_ENV])
                prepare_node(server.model, SERVICE_ACCOUNT)  # as docs/lab.md has it done
                self.winrm[name] = server.start()
            for index in range(2, self.lab_sets + 1):
                self.controllers.append(lab_sets_sim.start_controller(
                    self.state_dir, self.lab_dir, f"devstack-{index}", index, _prepare_tree,
                    machine=self.provisioned_controllers))
            if self.provisioned:
                self._start_parent()
        except BaseException:
            self.stop()
            raise
        logger.info("simulated lab up: %s + %d Hyper-V nodes", DEVSTACK_NODE, self.hyperv_nodes)
        return self

    def _start_parent(self) -> None:
        """The parent host carrying every Hyper-V node as a VM, each with a clean
        checkpoint taken now that carries the node's marker."""
        self.parent = SimParentHost(PARENT_HOST, self.lab_dir, WINRM_USER,
                                    self._passwords[WINRM_PASSWORD_ENV]).start()
        for name, server in self.winrm.items():
            self.parent.add_vm(server, CHECKPOINT, marker=(WINDOWS_MARKER_PATH, marker_of(name)))
        if not self.provisioned_controllers or self.ssh is None:
            return
        checkpoints = self.state_dir / "checkpoints"
        controllers = [(DEVSTACK_NODE, self.ssh, self.state_dir / "devstack")]
        controllers += [(c.name, c.server, c.tree) for c in self.controllers]
        for name, ssh_server, tree in controllers:
            assert isinstance(ssh_server, sshd.OpenSSHServer)
            guest = ControllerGuest(name, ssh_server, tree, checkpoints)
            marker = lab_sets_sim.home_of(tree) / LINUX_MARKER_PATH
            self.parent.add_controller_vm(guest, CHECKPOINT, marker=(marker, marker_of(name)))

    def stop(self) -> None:
        """Stop every node (idempotent)."""
        if self.parent is not None:
            self.parent.stop()
            self.parent = None
        for controller in self.controllers:
            controller.server.stop()
        self.controllers.clear()
        for server in self.winrm.values():
            server.stop()
        self.winrm.clear()
        if self.artefacts is not None:
            self.artefacts.stop()
            self.artefacts = None
        if self.ssh is not None:
            self.ssh.stop()
            self.ssh = None

    def __enter__(self) -> SimLab:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- what a config needs -------------------------------------------------------------------
    def node_configs(self) -> list[dict[str, Any]]:
        """The `nodes:` entries of a config reaching this lab (YAML-shaped, absolute paths)."""
        if self.ssh is None:
            raise RuntimeError("the lab is not started")
        several = self.lab_sets > 1  # then each controller has its own VLANs
        nodes: list[dict[str, Any]] = [lab_sets_sim.controller_entry(
            DEVSTACK_NODE, self.ssh, lab_sets_sim.vlan_range(1) if several else None)]
        nodes += [lab_sets_sim.controller_entry(c.name, c.server, lab_sets_sim.vlan_range(i))
                  for i, c in enumerate(self.controllers, start=2)]
        if self.provisioned_controllers:
            for entry in nodes:
                entry.update(provision="checkpoint", parent=PARENT_HOST, checkpoint=CHECKPOINT,
                             marker=marker_of(entry["name"]))
        for name, server in self.winrm.items():
            # NTLM, hyperv-ci's default: the handshake and sealed messages operators run.
            nodes.append({
                "name": name, "label": "hyperv", "address": server.host,
                "winrm": self._winrm_access(server),
            })
            if self.provisioned:
                nodes[-1].update(provision="checkpoint", parent=PARENT_HOST,
                                 checkpoint=CHECKPOINT, marker=marker_of(name))
        return nodes

    def _winrm_access(self, server: SimWinRMServer) -> dict[str, Any]:
        operation, read = self.winrm_timeouts
        return {"scheme": "http", "port": server.port, "transport": "ntlm",
                "username": WINRM_USER, "password": self._secret(WINRM_PASSWORD_ENV),
                "operation_timeout": operation, "read_timeout": read}

    def lab_set_configs(self) -> list[dict[str, Any]]:
        """The `lab_sets:` entries (empty for a lab of one set): set N is controller
        devstack-N and every lab_sets-th Windows node from hv-N (hv-1 and hv-3 in
        set-1 of two), so a pool that ignored the sets would mix them."""
        if self.lab_sets == 1:
            return []
        names = list(self.winrm)
        return [{"name": f"set-{index}", "controller": f"devstack-{index}",
                 "hyperv": names[index - 1::self.lab_sets]}
                for index in range(1, self.lab_sets + 1)]

    def parent_host_configs(self) -> list[dict[str, Any]]:
        """The `parent_hosts:` entries (empty unless the lab is provisioned)."""
        if self.parent is None:
            return []
        return [{"name": PARENT_HOST, "address": self.parent.server.host,
                 "winrm": self._winrm_access(self.parent.server)}]

    def nodes(self) -> list[NodeConfig]:
        """`node_configs()` validated, for code that takes NodeConfig objects."""
        return [NodeConfig.model_validate(entry) for entry in self.node_configs()]

    def job_overrides(self) -> dict[str, Any]:
        """Fields of a devstack-hyperv job that point it at this lab's sandbox paths."""
        if self.devstack is None or self.artefacts is None:
            raise RuntimeError("the lab is not started")
        return {
            "hyperv_nodes": self.hyperv_nodes,
            "devstack_dir": str(self.devstack.devstack_dir),
            "tempest_dir": str(self.devstack.tempest_dir),
            "workspace": str(self.state_dir / "devstack" / "workspace"),
            "windows_root": WINDOWS_ROOT,
            # A VHDX on the controller (devstack uploads it from file://).
            "image": str(self.image_path),
            "admin_password": self._secret(ADMIN_PASSWORD_ENV),
            "service_password": self._secret(SERVICE_PASSWORD_ENV),
            "windows": {
                **self.artefacts.windows_section(),
                "service_account": {"username": SERVICE_ACCOUNT,
                                    "password": self._secret(ACCOUNT_PASSWORD_ENV)},
            },
        }
