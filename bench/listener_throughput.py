"""Listener throughput: events/s read from a real SimGerrit stream and stored in batches.

    python -m bench.listener_throughput [--events 20000] [--pg URL]

Prints figures only (compare ratios within one run: absolute numbers drift
from run to run on a shared machine).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import orjson
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from ci.config import Config, parse_config
from ci.db import ensure_schema, make_engine, make_sessionmaker
from ci.gerrit import GerritClient
from listener.event_store import EventStore
from listener.events import parse_event
from listener.stream import Listener
from sim.gerrit import SimGerrit, make_client_identity

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def sample_lines(count: int) -> list[bytes]:
    """Gerrit-3.x-shaped patchset-created lines of about 2 KB with non-ASCII text."""
    lines = []
    for i in range(count):
        number = 100000 + i
        event = {
            "uploader": {"name": "Zoë Ñúñez 李", "email": "zoe@example.org", "username": "zoe"},
            "patchSet": {"number": 1, "revision": f"{i:040x}", "parents": [f"{i + 1:040x}"],
                         "ref": f"refs/changes/{number % 100:02d}/{number}/1",
                         "uploader": {"name": "Zoë Ñúñez 李", "username": "zoe"},
                         "createdOn": 1700000000 + i, "kind": "REWORK",
                         "sizeInsertions": 12, "sizeDeletions": -3},
            "change": {"project": "openstack/nova", "branch": "master", "id": f"I{i:040x}",
                       "number": number, "subject": f"Hyper-V: 修复实例名 {i} — café",
                       "owner": {"name": "Zoë Ñúñez 李", "username": "zoe"},
                       "url": f"https://review.example.org/c/openstack/nova/+/{number}",
                       "commitMessage": "Hyper-V: 修复 unicode\n\n" + "détails " * 150,
                       "createdOn": 1700000000 + i, "status": "NEW"},
            "project": "openstack/nova", "refName": "refs/heads/master",
            "type": "patchset-created", "eventCreatedOn": 1700000000 + i,
        }
        lines.append(orjson.dumps(event))
    return lines


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:>10,.0f} events/s  ({count} in {seconds:.2f} s)"


def bench_read(sim: SimGerrit, client: GerritClient, lines: list[bytes],
               parse: bool) -> float:
    """Seconds to receive every line through `gerrit stream-events` (optionally parsed)."""
    stop = threading.Event()
    got = 0
    connected = threading.Event()
    done = threading.Event()

    def read() -> None:
        nonlocal got
        for line in client.stream_events(stop, poll_timeout=0.05):
            connected.set()
            if line is None:
                continue
            if parse:
                parse_event(line)
            got += 1
            if got == len(lines):
                done.set()
                stop.set()

    thread = threading.Thread(target=read)
    thread.start()
    connected.wait(30)
    texts = [line.decode() for line in lines]
    start = time.perf_counter()
    for line in texts:
        sim.emit_raw(line)
    done.wait(300)
    elapsed = time.perf_counter() - start
    stop.set()
    thread.join()
    return elapsed


def bench_store(sessions: sessionmaker[Session], lines: list[bytes], batch: int) -> float:
    store = EventStore(sessions, batch_size=batch, max_delay=3600)
    start = time.perf_counter()
    for line in lines:
        store.add(line)
    store.flush()
    return time.perf_counter() - start


def bench_listener(config_for: Callable[[str], Config], url: str, sim: SimGerrit,
                   lines: list[bytes]) -> float:
    """Seconds from the first emitted line until the Listener has stored them all."""
    config = config_for(url)
    engine = make_engine(url)
    ensure_schema(engine)
    sessions = make_sessionmaker(engine)
    listener = Listener(config, sessions, lambda: GerritClient(config.gerrit))
    stop = threading.Event()
    thread = threading.Thread(target=listener.run, args=(stop,))
    thread.start()
    while listener.connections < 1:
        time.sleep(0.01)
    start = time.perf_counter()
    for line in lines:
        sim.emit_raw(line.decode())
    deadline = time.monotonic() + 300
    while listener.store.stored < len(lines) and time.monotonic() < deadline:
        time.sleep(0.005)
    elapsed = time.perf_counter() - start
    if listener.store.stored < len(lines):
        print(f"  (only {listener.store.stored} of {len(lines)} stored)")
    stop.set()
    thread.join()
    engine.dispose()
    return elapsed


def pg_database(admin: str) -> tuple[str, Callable[[], None]] | None:
    """A scratch PostgreSQL database URL and its cleanup, or None if unreachable."""
    name = f"hypervci_bench_{uuid.uuid4().hex[:8]}"
    try:
        engine = create_engine(admin, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}" ENCODING \'UTF8\' TEMPLATE template0'))
    except Exception as exc:
        print(f"PostgreSQL not reachable ({type(exc).__name__}); skipping its rows")
        return None

    def drop() -> None:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()

    return admin.rsplit("/", 1)[0] + "/" + name, drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--pg", default=PG_ADMIN, help="PostgreSQL admin URL")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    lines = sample_lines(args.events)
    mean = sum(map(len, lines)) / len(lines)
    print(f"{len(lines)} patchset-created lines, mean {mean:,.0f} bytes")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        key_file, key_line = make_client_identity(root, "hyperv-ci")
        sim = SimGerrit(root / "sim", users={"hyperv-ci": key_line},
                        stream_queue_size=len(lines) + 10).start()
        try:
            def config_for(url: str) -> Config:
                return parse_config({
                    "database": {"url": url},
                    "gerrit": {"host": "127.0.0.1", "port": sim.port, "username": "hyperv-ci",
                               "key_file": str(key_file), "known_hosts": str(sim.known_hosts_file)},
                    "projects": [{"name": "openstack/nova", "jobs": ["j"]}],
                    "jobs": {"j": {"type": "local", "command": ["true"]}},
                })

            client = GerritClient(config_for("sqlite://").gerrit)
            print("\nreading the stream (SimGerrit over SSH on loopback)")
            print("  raw lines          ", rate(len(lines), bench_read(sim, client, lines, False)))
            print("  lines + parse_event", rate(len(lines), bench_read(sim, client, lines, True)))

            # Each engine gets two databases: the listener's must not hold the
            # store rows, or it would rightly drop the same lines as duplicates.
            urls = [("SQLite", f"sqlite:///{root / 'bench.db'}",
                     f"sqlite:///{root / 'bench-listener.db'}")]
            scratch = [db for db in (pg_database(args.pg), pg_database(args.pg)) if db]
            if len(scratch) == 2:
                urls.append(("PostgreSQL", scratch[0][0], scratch[1][0]))
            try:
                for label, url, url2 in urls:
                    engine = make_engine(url)
                    ensure_schema(engine)
                    sessions = make_sessionmaker(engine)
                    print(f"\nstoring on {label} (EventStore, parse + dedup + insert)")
                    few = lines[: min(len(lines), 2000)]
                    print("  1 per transaction  ", rate(len(few), bench_store(sessions, few, 1)))
                    for batch in (200, 1000):
                        print(f"  batches of {batch:<8}", rate(len(lines),
                                                            bench_store(sessions, lines, batch)))
                    engine.dispose()
                    print(f"  Listener end to end ({label})",
                          rate(len(lines), bench_listener(config_for, url2, sim, lines)))
            finally:
                for _url, drop in scratch:
                    drop()
        finally:
            sim.stop()


if __name__ == "__main__":
    main()
