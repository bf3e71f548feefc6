"""`hyperv-ci lab check` against the simulated lab: how long a whole lab takes, and one node.

    python -m bench.lab_check [--runs 5] [--hyperv-nodes 4]

Runs the real check (WinRM probes with NTLM, the SSH probe, the parent host's
VMs) against a provisioned SimLab on loopback and prints the median wall time
of a whole-lab check and of a one-node check. Nodes are probed in parallel,
so the whole lab costs about its slowest node, not their sum. The simulator
shares this machine's cores: compare runs on one machine only.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

from bench.results import record
from ci.config import parse_config
from runners.lab_check import run_lab_check
from sim.lab import SimLab


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--hyperv-nodes", type=int, default=4)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp, \
            SimLab(Path(tmp) / "lab", hyperv_nodes=args.hyperv_nodes, provisioned=True) as lab:
        config = parse_config({
            "gerrit": {"host": "127.0.0.1", "username": "ci", "key_file": "/nonexistent/key",
                       "known_hosts": "/nonexistent/known_hosts"},
            "projects": [{"name": "openstack/nova", "jobs": ["hyperv"]}],
            "jobs": {"hyperv": {"type": "devstack-hyperv", **lab.job_overrides()}},
            "nodes": lab.node_configs(), "parent_hosts": lab.parent_host_configs(),
        })
        whole, one, checks = [], [], 0
        for _ in range(args.runs):
            started = time.perf_counter()
            report = run_lab_check(config)
            whole.append(time.perf_counter() - started)
            if not report.ok:
                raise SystemExit("\n".join(report.lines()))
            checks = len(report.results)
            started = time.perf_counter()
            run_lab_check(config, ["hv-1"])
            one.append(time.perf_counter() - started)
    figures = {"lab_check.whole_lab_s": round(statistics.median(whole), 3),
               "lab_check.one_node_s": round(statistics.median(one), 3),
               "lab_check.checks": checks}
    for key, value in figures.items():
        print(f"{key:28} {value}")
    record(figures)


if __name__ == "__main__":
    main()
