"""Event → queued latency: from Gerrit sending patchset-created to the build being queued.

    python -m bench.latency [--pushes 200] [--quick] [--results FILE]

hyperv-ci's listener process part (the listener and the scheduler, wired
as `hyperv-ci listen` wires them: ci/app/processes.listen) follows a simulated Gerrit (its own
process) on SQLite. Uploads touching nova's Hyper-V driver arrive one at a
time, `--gap` seconds apart; each one's latency runs from the moment the
simulated Gerrit had sent its event (wall clock, same host) to its build's
`created_at`. The project has a files filter, so every upload costs one
`gerrit query --files` (a stream event carries no files), as on the real CI.

hyperv-ci has no consistency delay setting (it never waits before acting on
an event), so the figure is the whole latency. Records
`latency.event_to_queued_p50_ms` and `latency.event_to_queued_p99_ms`.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import threading
import time
from pathlib import Path

from sqlalchemy import Engine, create_engine, select

from bench.listener_sim import SimProcess, Target, bench_config
from bench.results import RESULTS, record
from ci.app.processes import listen
from ci.db import ensure_schema, make_engine, make_sessionmaker
from ci.models import Build, Change, Patchset
from sim.gerrit import make_client_identity


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile (`share` in 0..1) of `values`."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered) + 0.5) - 1))]


def measure(pushes: int, gap: float) -> list[float]:
    """Milliseconds from event sent to build queued, one per upload."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        key_file, key_line = make_client_identity(root, "hyperv-ci")
        sim = SimProcess(root / "sim", {"hyperv-ci": key_line})
        url = f"sqlite:///{tmp}/latency.db"
        config = bench_config(Target(sim.port, str(sim.known_hosts), str(key_file)), url)
        engine = make_engine(url)
        ensure_schema(engine)
        sessions = make_sessionmaker(engine)
        observer = create_engine(url)  # see _wait_queued
        stop = threading.Event()
        thread = threading.Thread(target=listen, args=(config, sessions, stop), name="listen")
        thread.start()
        latencies: list[float] = []
        try:
            sim.wait_subscribers(1)
            # The project's first upload also creates it in the simulated Gerrit:
            # not a typical event, left out.
            sim.push(project="openstack/nova", files={"nova/virt/hyperv/warmup.py": "w\n"})
            for i in range(pushes):
                time.sleep(gap)
                sent, pushed = sim.push(
                    project="openstack/nova", files={f"nova/virt/hyperv/vm_{i}.py": "x\n"},
                    subject=f"Hyper-V: 修复 {i} — café", owner="Zoë Ñúñez")
                queued = _wait_queued(observer, pushed["change"])
                latencies.append((queued - sent) * 1000)
        finally:
            stop.set()
            thread.join()
            engine.dispose()
            observer.dispose()
            sim.stop()
    return latencies


def _wait_queued(observer: Engine, change: int, timeout: float = 30.0) -> float:
    """When the change's build was created, polled every 2 ms.

    Through a plain engine, not the product's sessions: on SQLite those begin
    every transaction with BEGIN IMMEDIATE (the write lock), and a poller
    taking it 500 times a second made the listener's and the scheduler's
    commits wait in SQLite's busy handler (sleeps of 1, 2, 5, 10 ... ms),
    latency the product does not have. pysqlite runs a lone SELECT outside
    any transaction: a WAL reader, which never blocks a writer.
    """
    deadline = time.monotonic() + timeout
    query = (select(Build.created_at).join(Patchset, Build.patchset_id == Patchset.id)
             .join(Change).where(Change.number == change))
    while time.monotonic() < deadline:
        with observer.connect() as conn:
            created = conn.scalar(query)
        if created is not None:
            return created.timestamp()
        time.sleep(0.002)
    raise RuntimeError(f"change {change} was not queued within {timeout} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--pushes", type=int, default=200)
    parser.add_argument("--gap", type=float, default=0.05, help="seconds between uploads")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 10 uploads")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    latencies = measure(min(args.pushes, 10) if args.quick else args.pushes, args.gap)
    figures = {"latency.event_to_queued_p50_ms": round(statistics.median(latencies), 1),
               "latency.event_to_queued_p99_ms": round(percentile(latencies, 0.99), 1)}
    print(f"{len(latencies)} uploads: event → queued min {min(latencies):.1f} ms, "
          f"median {figures['latency.event_to_queued_p50_ms']} ms, "
          f"p99 {figures['latency.event_to_queued_p99_ms']} ms, max {max(latencies):.1f} ms")
    for key, value in figures.items():
        print(f"{key} = {value}")
    record(figures, path=args.results)


if __name__ == "__main__":
    main()
