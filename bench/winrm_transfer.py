"""WinRM executor costs against the simulated node: a step's round trip, upload, download.

    python -m bench.winrm_transfer [--runs 20] [--megabytes 8]

Runs the real WinRMExecutor (pywinrm) against SimWinRMServer on loopback,
once with NTLM (hyperv-ci's default: a handshake per connection, every
message sealed) and once with Basic, and prints figures only. Basic over http
needs a node configured for it (Service/Auth/Basic and AllowUnencrypted true,
both off on a default node): the simulated node is set up that way here, for
the comparison only. The simulator
is in the same process, so both sides share the 2 cores: compare the
transports within one run, not the absolute numbers across machines.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

from ci.config import NodeConfig
from runners.winrm import WinRMExecutor
from sim.winrm import SimWinRMServer
from sim.wsman_config import WinRMConfig

USER, PASSWORD, PASSWORD_ENV = "Administrator", "bench-Zoë-pw", "HYPERV_CI_BENCH_WINRM_PW"


def executor(server: SimWinRMServer, transport: str) -> WinRMExecutor:
    node = NodeConfig.model_validate({
        "name": server.node_name, "label": "hyperv", "address": "127.0.0.1",
        "winrm": {"scheme": "http", "port": server.port, "transport": transport,
                  "username": USER, "password": {"password_env": PASSWORD_ENV},
                  "operation_timeout": 5, "read_timeout": 10},
    })
    return WinRMExecutor(node)


def bench_transport(server: SimWinRMServer, transport: str, runs: int, data: bytes,
                    workdir: Path) -> None:
    ex = executor(server, transport)
    try:
        took = []
        for _ in range(runs):
            started = time.perf_counter()
            result = ex.run_powershell("# hyperv-ci-step: round-trip\n", timeout=60)
            took.append(time.perf_counter() - started)
            assert result.ok, result.stderr
        mib = len(data) / 2**20
        started = time.perf_counter()
        ex.put(data, "C:\\OpenStack\\hyperv-ci\\bench.bin")
        put = time.perf_counter() - started
        started = time.perf_counter()
        ex.get("C:\\OpenStack\\hyperv-ci\\bench.bin", workdir / f"{transport}.bin")
        got = time.perf_counter() - started
        assert (workdir / f"{transport}.bin").read_bytes() == data
    finally:
        ex.close()
    print(f"{transport:<6} step round trip  median {statistics.median(took) * 1000:7.1f} ms"
          f"  (p90 {sorted(took)[int(len(took) * 0.9) - 1] * 1000:.1f} ms, {runs} runs)")
    print(f"{transport:<6} upload   {mib / put:7.2f} MiB/s  ({mib:.0f} MiB in {put:.2f} s)")
    print(f"{transport:<6} download {mib / got:7.2f} MiB/s  ({mib:.0f} MiB in {got:.2f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--megabytes", type=int, default=8)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ[PASSWORD_ENV] = PASSWORD
    data = os.urandom(args.megabytes * 2**20)
    with tempfile.TemporaryDirectory(prefix="hyperv-ci-bench-") as tmp:
        workdir = Path(tmp)
        config = WinRMConfig(allow_basic=True, allow_unencrypted=True)
        with SimWinRMServer("hv-bench", workdir / "lab", USER, PASSWORD,
                            config=config) as server:
            print(f"WinRM executor against the simulated node at {server.url}")
            for transport in ("ntlm", "basic"):
                bench_transport(server, transport, args.runs, data, workdir)


if __name__ == "__main__":
    main()
