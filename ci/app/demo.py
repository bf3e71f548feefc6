"""`hyperv-ci demo`: the whole CI on one machine against the simulators.

The one product module that imports `sim/` (tests/test_architecture.py).

Starts the simulated Gerrit (real SSH) and the simulated lab (a devstack
node over SSH, Hyper-V nodes over WS-Management), fills their run-time
facts (ports, keys, nodes, paths) into the demo's YAML, then runs the real
listener, worker, reporter and dashboard in one process until SIGINT (their
parts, as ci/app/processes.py wires them, sharing one database and one reaper).
The effective configuration is written to STATE_DIR/demo-config.yaml, so
`hyperv-ci -c .demo/demo-config.yaml builds` works from a second shell.
"""

from __future__ import annotations

import copy
import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy.orm import Session, sessionmaker

from ci import accounts
from ci.app.processes import listen, open_database, start_dashboard, start_timers, work
from ci.config import Config, parse_config
from sim.gerrit import SimGerrit, make_client_identity
from sim.lab import SimLab
from sim.lab_sets import can_run_sets

logger = logging.getLogger(__name__)

DEMO_OPERATOR = "demo-operator"
DEMO_PASSWORD_ENV = ("HYPERV_CI_DEMO_ADMIN_PASSWORD", "HYPERV_CI_DEMO_SERVICE_PASSWORD")


def free_port(preferred: int, host: str = "127.0.0.1") -> int:
    """`preferred` if it can be bound now, else any free port."""
    for port in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise OSError("no free port")


def make_demo_operator(sessions: sessionmaker[Session]) -> tuple[str, str]:
    """The demo's dashboard operator, with a new random password at each start
    (the state directory outlives a run; an old password must not)."""
    password = secrets.token_urlsafe(12)
    with sessions() as session, session.begin():
        accounts.remove(session, DEMO_OPERATOR)
        accounts.create(session, DEMO_OPERATOR, password)
    return DEMO_OPERATOR, password


def demo_config(raw: dict[str, Any], *, state_dir: Path, gerrit_port: int, key_file: Path,
                known_hosts: Path, git_root: str, nodes: list[dict[str, Any]],
                job_overrides: dict[str, Any], dashboard_port: int,
                parent_hosts: list[dict[str, Any]] | None = None,
                lab_sets: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The demo's YAML with the run-time facts filled in (pure)."""
    data = copy.deepcopy(raw)
    data["database"] = {"url": f"sqlite:///{(state_dir / 'hyperv-ci.db').resolve()}"}
    data["gerrit"].update(host="127.0.0.1", port=gerrit_port, key_file=str(key_file),
                          known_hosts=str(known_hosts), git_url=git_root + "/{project}.git")
    data["nodes"] = nodes
    if parent_hosts:
        data["parent_hosts"] = parent_hosts
    if lab_sets:
        data["lab_sets"] = lab_sets
    for job in data["jobs"].values():
        if job.get("type") == "devstack-hyperv":
            job.update(job_overrides)
    data.setdefault("logs", {})
    data["logs"].update(dir=str((state_dir / "logs").resolve()),
                        url=f"http://127.0.0.1:{dashboard_port}/logs/")
    data.setdefault("worker", {})
    data["worker"]["git_cache_dir"] = str((state_dir / "git-cache").resolve())
    data.setdefault("dashboard", {})
    data["dashboard"].update(host="127.0.0.1", port=dashboard_port,
                             secret_key_file=str((state_dir / "dashboard-secret-key").resolve()))
    return data


class Demo:
    """The running demo; `start` then `stop` (tests drive it this way too)."""

    def __init__(self, config_path: Path, state_dir: Path, *, dashboard_port: int | None = None,
                 hyperv_nodes: int | None = None, lab_sets: int | None = None) -> None:
        self.config_path = config_path
        self.state_dir = state_dir.resolve()
        self.dashboard_port = dashboard_port
        self.hyperv_nodes = hyperv_nodes
        self.lab_sets = lab_sets  # None: two where the machine can simulate them
        self.stop_event = threading.Event()
        self._threads: list[threading.Thread] = []
        self._cleanups: list[Callable[[], None]] = []
        self.config: Config | None = None
        self.url = ""
        self.operator: tuple[str, str] | None = None  # the dashboard account: name, password
        self.gerrit: SimGerrit | None = None
        self.lab: SimLab | None = None

    def start(self) -> Config:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        raw = yaml.safe_load(self.config_path.read_text(encoding="utf-8"))
        signatures = (raw.get("verdict") or {}).get("signatures")
        if signatures:
            # Relative to the demo's YAML, as load_config resolves it for a real config.
            raw["verdict"]["signatures"] = str((self.config_path.parent / signatures).resolve())
        for name in DEMO_PASSWORD_ENV:
            # The demo invents its lab's passwords; redaction hides them in logs.
            os.environ.setdefault(name, "demo-" + secrets.token_urlsafe(12))
        key_file, public_key = make_client_identity(self.state_dir, "ci")
        username = raw["gerrit"]["username"]
        self.gerrit = SimGerrit(self.state_dir, port=0, users={username: public_key})
        self.gerrit.start()
        self._cleanups.append(self.gerrit.stop)
        known_hosts = self.state_dir / "known_hosts"
        known_hosts.write_text(self.gerrit.host_key_line() + "\n", encoding="utf-8")

        job_raw = next((j for j in raw["jobs"].values() if j.get("type") == "devstack-hyperv"),
                       None)
        hv_count = self.hyperv_nodes or (job_raw or {}).get("hyperv_nodes", 2)
        if job_raw is not None and self.hyperv_nodes:
            for job in raw["jobs"].values():
                if job.get("type") == "devstack-hyperv":
                    job["hyperv_nodes"] = self.hyperv_nodes
        # Provisioned nodes (reverted to a checkpoint before every build) in two lab
        # sets, where this machine can simulate two controllers (sim/lab_sets.py).
        sets = self.lab_sets or (1 if can_run_sets(None) else 2)
        self.lab = SimLab(self.state_dir / "lab", hyperv_nodes=hv_count, provisioned=True,
                          lab_sets=sets)
        self.lab.start()
        self._cleanups.append(self.lab.stop)

        # The port is fixed before the config is written: log URLs carry it.
        wanted = self.dashboard_port
        if wanted is None:
            wanted = int(raw.get("dashboard", {}).get("port", 8080))
        port = free_port(wanted)
        git_root = (self.gerrit.state.root / "git").resolve().as_uri()
        data = demo_config(raw, state_dir=self.state_dir, gerrit_port=self.gerrit.port,
                           key_file=key_file, known_hosts=known_hosts, git_root=git_root,
                           nodes=self.lab.node_configs(), job_overrides=self.lab.job_overrides(),
                           dashboard_port=port, parent_hosts=self.lab.parent_host_configs(),
                           lab_sets=self.lab.lab_set_configs())
        (self.state_dir / "demo-config.yaml").write_text(
            yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
        config = parse_config(data)
        self.config = config
        self._start_services(config, port)
        return config

    def _start_services(self, config: Config, port: int) -> None:
        database = open_database(config)
        self.operator = make_demo_operator(database.sessions)
        self._cleanups.append(database.engine.dispose)
        sessions, stop = database.sessions, self.stop_event
        start_timers(config, sessions, stop)
        self._spawn("listener", listen, config, sessions, stop)
        # The worker sends the outbox from its own thread, within seconds of a build's end.
        # One worker per lab set: builds run on every set at once.
        for index in range(1, max(1, len(config.lab_sets)) + 1):
            name = "demo-worker" if index == 1 else f"demo-worker-{index}"
            self._spawn(name, work, config, sessions, stop, name)
        server = start_dashboard(config, sessions, "127.0.0.1", port)
        self._cleanups.append(server.close)
        self.url = f"http://127.0.0.1:{server.port}/"
        # Ready means the listener follows the stream: a push from now on is seen.
        assert self.gerrit is not None
        if not self.gerrit.wait_for_streams(1, timeout=30):
            raise RuntimeError("the listener did not connect to the simulated Gerrit")

    def _spawn(self, name: str, target: Callable[..., object], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        self.stop_event.set()
        for thread in self._threads:
            thread.join(timeout=15)
        for cleanup in reversed(self._cleanups):
            try:
                cleanup()
            except Exception:
                logger.exception("demo: error while stopping")
        self._cleanups.clear()


def run_demo(config_path: Path, state_dir: Path, stop: threading.Event) -> None:
    """Run the demo until `stop` is set (SIGINT/SIGTERM)."""
    demo = Demo(config_path, state_dir)
    try:
        demo.start()
        hv = "nova/virt/hyperv/vmops.py"
        name, password = demo.operator or ("(none)", "")
        print(
            f"\nhyperv-ci demo is running.\n"
            f"  dashboard:  {demo.url}\n"
            f"  log in as:  {name}  password: {password}\n"
            f"  state:      {demo.state_dir}\n\n"
            f"From a second shell, push a change to the simulated Gerrit:\n"
            f"  .venv/bin/hyperv-ci-sim push --project openstack/nova "
            f"--branch unmaintained/2023.1 --file {hv} --subject 'Fix VHD format'\n"
            f"  .venv/bin/hyperv-ci-sim reviews\n"
            f"  .venv/bin/hyperv-ci-sim comment CHANGE,1 recheck\n"
            f"  .venv/bin/hyperv-ci -c {demo.state_dir / 'demo-config.yaml'} builds\n\n"
            f"Ctrl-C stops everything.\n",
            flush=True,
        )
        stop.wait()
    finally:
        demo.stop()
