"""What checkpoint provisioning and lab-set reservations cost on this machine.

- provision.revert_ms: one node's `provision` step against the simulated parent
  host over real WinRM (NTLM, HTTP): the revert script, the answer poll and
  the identity probe (median of N). A real Hyper-V revert adds the checkpoint
  apply and the guest's boot (tens of seconds to minutes), not measured here.
- provision.reserve_set_ms: reserving one whole set (controller + 2 Hyper-V
  nodes) out of 50 on SQLite, the claim transaction's share (median of N).

Run: .venv/bin/python -m bench.provision
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.results import record
from ci import nodes, queue
from ci.config import parse_config
from ci.db import ensure_schema, make_engine, make_sessionmaker
from runners import provision
from sim.hyperv_parent import SimParentHost
from sim.winrm import SimWinRMServer

ROUNDS = 10
SETS = 50
USER, PASSWORD_ENV = "Administrator", "HYPERV_CI_BENCH_PROVISION_PW"


class _Log:
    def log(self, line: str) -> None:
        pass

    def write(self, text: str) -> None:
        pass


def _winrm(server: SimWinRMServer) -> dict:
    return {"scheme": "http", "port": server.port, "username": USER,
            "password": {"password_env": PASSWORD_ENV}, "operation_timeout": 2,
            "read_timeout": 5}


def revert_ms(workdir: Path) -> float:
    os.environ[PASSWORD_ENV] = "bench-Pw-1"
    guest = SimWinRMServer("hv-1", workdir, USER, os.environ[PASSWORD_ENV]).start()
    parent = SimParentHost("hv-parent-1", workdir, USER, os.environ[PASSWORD_ENV]).start()
    try:
        parent.add_vm(guest, marker=(provision.WINDOWS_MARKER_PATH, "clean"))
        config = parse_config({
            "gerrit": {"host": "h", "username": "u", "key_file": "k", "known_hosts": "kh"},
            "projects": [{"name": "p", "jobs": ["j"]}],
            "jobs": {"j": {"type": "local", "command": ["true"]}},
            "parent_hosts": [{"name": "hv-parent-1", "address": "127.0.0.1",
                              "winrm": _winrm(parent.server)}],
            "nodes": [{"name": "hv-1", "label": "hyperv", "address": "127.0.0.1",
                       "winrm": _winrm(guest), "provision": "checkpoint",
                       "parent": "hv-parent-1", "marker": "clean"}]})
        times = []
        for _ in range(ROUNDS):
            start = time.perf_counter()
            provision.provision_node(config, config.nodes[0], _Log(), answer_timeout=10)  # type: ignore[arg-type]
            times.append((time.perf_counter() - start) * 1000)
        return statistics.median(times)
    finally:
        parent.stop()
        guest.stop()


def reserve_set_ms(workdir: Path) -> float:
    ssh = {"username": "u", "key_file": "k", "known_hosts": "kh"}
    winrm = {"username": "u", "password": {"password_env": "X"}}
    node_list, sets = [], []
    for index in range(SETS):
        first = 100 + index * 10
        node_list.append({"name": f"ctl-{index:02d}", "label": "devstack", "address": "x",
                          "ssh": ssh, "vlan_range": f"{first}:{first + 9}"})
        node_list += [{"name": f"hv-{index:02d}-{i}", "label": "hyperv", "address": "x",
                       "winrm": winrm} for i in (1, 2)]
        sets.append({"name": f"set-{index:02d}", "controller": f"ctl-{index:02d}",
                     "hyperv": [f"hv-{index:02d}-1", f"hv-{index:02d}-2"]})
    config = parse_config({
        "gerrit": {"host": "h", "username": "u", "key_file": "k", "known_hosts": "kh"},
        "projects": [{"name": "p", "jobs": ["j"]}],
        "jobs": {"j": {"type": "local", "command": ["true"]}},
        "nodes": node_list, "lab_sets": sets})
    engine = make_engine(f"sqlite:///{workdir / 'bench.db'}")
    ensure_schema(engine)
    sessions = make_sessionmaker(engine)
    with sessions() as session, session.begin():
        nodes.sync_nodes(session, config.nodes, config.lab_sets)
        ids = []
        for index in range(SETS):
            patchset = queue.upsert_patchset(session, queue.ChangeInfo(
                number=1000 + index, project="p", branch="master", patchset=1))
            build = queue.enqueue(session, patchset, "j", "test")
            assert build is not None
            ids.append(build.id)
    times = []
    # Each reservation takes the next free set: the last ones scan past held sets.
    for build_id in ids:
        start = time.perf_counter()
        with sessions() as session, session.begin():
            got = nodes.reserve(session, build_id, ["devstack", "hyperv", "hyperv"],
                                by_lab_set=True)
        times.append((time.perf_counter() - start) * 1000)
        assert got is not None
    engine.dispose()
    return statistics.median(times)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        figures = {"provision.revert_ms": round(revert_ms(Path(tmp)), 1),
                   "provision.reserve_set_ms": round(reserve_set_ms(Path(tmp)), 2)}
    for key, value in figures.items():
        print(f"{key}: {value}")
    record(figures)


if __name__ == "__main__":
    main()
