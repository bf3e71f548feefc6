"""Catch-up after downtime: uploads missed while the listener was down, until all are queued.

    python -m bench.catchup [--missed 1000] [--quick] [--pg URL] [--results FILE]

A simulated Gerrit (its own process) holds `--missed` open nova changes that
touch the Hyper-V driver, uploaded after the last event the database stored.
The clock starts when hyperv-ci's listener process part starts (the listener and
the scheduler, wired as `hyperv-ci listen` wires them: ci/app/processes.listen) and stops
when every missed upload has a queued build. Records `catchup.missed_1000_s`
(SQLite) and `catchup.missed_1000_pg_s` (PostgreSQL): the seconds for
`--missed` uploads as measured (a `--quick` smoke run's figure is for 20, and
only fit for a scratch results file).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import create_engine, func, select, text

from bench.listener_sim import SimProcess, Target, bench_config
from bench.listener_throughput import PG_ADMIN, pg_database
from bench.results import RESULTS, record
from ci.app.processes import listen
from ci.db import ensure_schema, make_engine, make_sessionmaker, transaction
from ci.models import Build, Event, utcnow
from sim.gerrit import make_client_identity


def missed_uploads(sim: SimProcess, count: int) -> None:
    for i in range(count):
        sim.push(project="openstack/nova", files={f"nova/virt/hyperv/vmops_{i}.py": "x\n"},
                 subject=f"Hyper-V: missed upload {i} — 修复 café", owner="Zoë Ñúñez")


def seconds_to_queue_all(target: Target, url: str, count: int) -> float:
    """From `listen` starting to `count` queued builds, on an events table whose newest
    event (received two minutes ago) is older than every missed upload."""
    config = bench_config(target, url)
    engine = make_engine(url)
    ensure_schema(engine)
    sessions = make_sessionmaker(engine)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM builds"))
        conn.execute(text("DELETE FROM patchsets"))
        conn.execute(text("DELETE FROM changes"))
        conn.execute(text("DELETE FROM events"))
    with transaction(sessions) as session:
        session.add(Event(type="ref-updated", raw='{"type":"ref-updated"}',
                          received_at=utcnow() - timedelta(seconds=120),
                          processed_at=utcnow(), outcome="ignored: ref-updated"))
    # Counted through a plain engine: on SQLite the product's sessions begin with
    # BEGIN IMMEDIATE, and a poller taking the write lock every 10 ms would
    # delay the commits it measures (see bench/latency.py's _wait_queued).
    observer = create_engine(url)
    counting = select(func.count()).select_from(Build)
    stop = threading.Event()
    started = time.monotonic()
    thread = threading.Thread(target=listen, args=(config, sessions, stop), name="listen")
    thread.start()
    try:
        queued = 0
        deadline = started + 300
        while queued < count and time.monotonic() < deadline:
            time.sleep(0.01)
            with observer.connect() as conn:
                queued = int(conn.scalar(counting) or 0)
        elapsed = time.monotonic() - started
        if queued < count:
            raise RuntimeError(f"only {queued} of {count} missed uploads queued in 300 s")
        return elapsed
    finally:
        stop.set()
        thread.join()
        engine.dispose()
        observer.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--missed", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 20 uploads")
    parser.add_argument("--pg", default=PG_ADMIN, help="PostgreSQL admin URL ('' for none)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    count = min(args.missed, 20) if args.quick else args.missed
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp, pg_database(args.pg) as pg_url:
        root = Path(tmp)
        key_file, key_line = make_client_identity(root, "hyperv-ci")
        sim = SimProcess(root / "sim", {"hyperv-ci": key_line})
        try:
            target = Target(sim.port, str(sim.known_hosts), str(key_file))
            pushing = time.monotonic()
            missed_uploads(sim, count)
            print(f"{count} uploads made in the simulated Gerrit "
                  f"({time.monotonic() - pushing:.1f} s, not timed)")
            for key, url in (("catchup.missed_1000_s", f"sqlite:///{tmp}/catchup.db"),
                             ("catchup.missed_1000_pg_s", pg_url)):
                if url is None:
                    continue
                seconds = seconds_to_queue_all(target, url, count)
                print(f"  {key.split('.')[1]:<22} all {count} queued in {seconds:.2f} s")
                figures[key] = round(seconds, 2)
        finally:
            sim.stop()
    for key, value in figures.items():
        print(f"{key} = {value}")
    record(figures, path=args.results)


if __name__ == "__main__":
    main()
