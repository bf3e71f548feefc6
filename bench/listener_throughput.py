"""Listener intake against its anchors, in one run: events/s from a simulated Gerrit.

    python -m bench.listener_throughput [--events 50000] [--runs 3] [--quick]
                                        [--pg URL] [--results FILE] [--profile]

Every reader receives the same corpus (Gerrit-3.x-shaped events of 1.5–3 KB)
from the same simulated Gerrit over SSH, each in a process of its own, runs
interleaved (bare, gerritlib, SQLite, PostgreSQL, bare, ...), 3 rounds by default,
medians taken:

- the bare paramiko reader: `exec_command`, `for line in stdout`, `json.loads`,
  stores nothing (the ceiling a Python reader reaches);
- gerritlib's GerritWatcher as shipped (the `bench` extra), counted off its queue;
- hyperv-ci's Listener + EventStore, until every line is committed, on
  SQLite and on PostgreSQL.

Records listener.{bare,gerritlib,sqlite,pg}_eps and listener.ratio_{sqlite,pg}
(÷ bare) and listener.ratio_gerritlib (sqlite ÷ gerritlib). `--profile` runs the
SQLite listener once more under cProfile and prints where its writer thread (inserts
and commits) and its reader thread (reads and de-duplicates chunks) spend time.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import logging
import pstats
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.listener_sim import SimProcess, Target, bench_config, corpus, run_reader
from bench.pg import ADMIN_URL, create_database, drop_database, scratch_name
from bench.results import RESULTS, record

PG_ADMIN = ADMIN_URL


# -- the readers (each runs in a child process: module-level functions) ------------------------


def bare_reader(target: Target, count: int, ready: Callable[[], None]) -> float:
    """paramiko's file-like stdout, one `json.loads` a line; the time of the last one."""
    import paramiko

    client = paramiko.SSHClient()
    client.load_host_keys(target.known_hosts)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect("127.0.0.1", port=target.port, username=target.username,
                   key_filename=target.key_file, allow_agent=False, look_for_keys=False)
    try:
        _stdin, stdout, _stderr = client.exec_command("gerrit stream-events")
        ready()
        for seen, line in enumerate(stdout, 1):
            json.loads(line)
            if seen == count:
                break
        return time.monotonic()
    finally:
        client.close()


def gerritlib_reader(target: Target, count: int, ready: Callable[[], None]) -> float:
    """gerritlib's watcher as shipped (it logs each event through pprint.pformat,
    even with DEBUG off), its events taken off `event_queue`."""
    import warnings

    from gerritlib.gerrit import Gerrit

    # It trusts any host key (paramiko's WarningPolicy): quiet its warning here.
    logging.getLogger("gerrit").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", message="Unknown ssh-")
    gerrit = Gerrit("127.0.0.1", target.username, port=target.port, keyfile=target.key_file)
    gerrit.startWatching(retry_delay=1)
    ready()
    events = gerrit.event_queue
    for _ in range(count):
        events.get()
    return time.monotonic()


def listener_reader(target: Target, count: int, ready: Callable[[], None], *, url: str,
                    profile: str = "") -> float:
    """hyperv-ci's Listener + EventStore; the time the last line was committed."""
    from sqlalchemy import text

    from ci.db import ensure_schema, make_engine, make_sessionmaker
    from ci.gerrit import GerritClient
    from listener.stream import Listener

    config = bench_config(target, url)
    engine = make_engine(url)
    ensure_schema(engine)
    with engine.begin() as conn:  # every run starts from an empty table
        conn.execute(text("DELETE FROM events"))
    sessions = make_sessionmaker(engine)
    done = threading.Event()
    finished = [0.0]

    def flushed(_rows: int) -> None:
        if listener.store.stored >= count and not done.is_set():
            finished[0] = time.monotonic()
            done.set()

    listener = Listener(config, sessions, lambda: GerritClient(config.gerrit),
                        on_flush=flushed)
    stop = threading.Event()
    profiler = cProfile.Profile() if profile else None
    reader_profiler = cProfile.Profile() if profile else None
    if reader_profiler is not None:
        # The reader thread reads and de-duplicates the chunks: profiled on its own.
        read = listener._read

        def profiled_read(halt: threading.Event) -> None:
            reader_profiler.enable()
            try:
                read(halt)
            finally:
                reader_profiler.disable()

        listener._read = profiled_read  # type: ignore[method-assign]

    def run() -> None:
        if profiler is not None:
            profiler.enable()
        listener.run(stop)
        if profiler is not None:
            profiler.disable()

    thread = threading.Thread(target=run, name="listener-writer")
    thread.start()
    deadline = time.monotonic() + 30
    while listener.connections < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    ready()
    if not done.wait(600):
        raise RuntimeError(f"only {listener.store.stored} of {count} events stored")
    stop.set()
    thread.join()
    engine.dispose()
    if profiler is not None and reader_profiler is not None:
        profiler.dump_stats(profile)
        reader_profiler.dump_stats(profile + ".reader")
    return finished[0]


# -- the run -----------------------------------------------------------------------------------


@contextmanager
def pg_database(admin: str) -> Iterator[str | None]:
    """A scratch PostgreSQL database's URL (None if PostgreSQL is unreachable or
    `admin` is empty: --pg '')."""
    if not admin:
        yield None
        return
    name = scratch_name()
    try:
        url = create_database(name, admin)
    except Exception as exc:
        print(f"PostgreSQL not reachable ({type(exc).__name__}); its figures are left out")
        yield None
        return
    try:
        yield url
    finally:
        drop_database(name, admin)


@contextmanager
def simulated_gerrit(root: Path, lines: list[bytes]) -> Iterator[tuple[SimProcess, Target]]:
    """A simulated Gerrit process holding `lines`, and how a reader reaches it."""
    from sim.gerrit import make_client_identity

    key_file, key_line = make_client_identity(root, "hyperv-ci")
    path = root / "corpus.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    # Room for the whole corpus in the stream's queue: this measures the reader,
    # not Gerrit's 128-event limit (which a slow reader meets as dropped-output).
    sim = SimProcess(root / "sim", {"hyperv-ci": key_line}, queue_size=len(lines) + 10)
    try:
        sim.load(path)
        yield sim, Target(sim.port, str(sim.known_hosts), str(key_file))
    finally:
        sim.stop()


def gerritlib_missing() -> str | None:
    try:
        import gerritlib.gerrit  # noqa: F401
    except ImportError as exc:
        return f"gerritlib is not installed (pip install -e '.[bench]'): {exc}"
    return None


def measure(events: int, runs: int, pg_admin: str, profile: bool) -> dict[str, float]:
    lines = corpus(events)
    mean = sum(map(len, lines)) / len(lines)
    print(f"{len(lines):,} events of {min(map(len, lines)):,}–{max(map(len, lines)):,} bytes "
          f"(mean {mean:,.0f}), {runs} interleaved run(s), medians")
    rates: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp, pg_database(pg_admin) as pg_url, \
            simulated_gerrit(Path(tmp), lines) as (sim, target):
        readers: list[tuple[str, Callable[..., float], dict[str, Any]]] = [
            ("bare", bare_reader, {})]
        missing = gerritlib_missing()
        if missing:
            print(missing)
        else:
            readers.append(("gerritlib", gerritlib_reader, {"tail": True}))
        readers.append(("sqlite", listener_reader, {"url": f"sqlite:///{tmp}/bench.db"}))
        if pg_url:
            readers.append(("pg", listener_reader, {"url": pg_url}))
        for _ in range(runs):
            for name, reader, extra in readers:
                sim.wait_subscribers(0)
                rates.setdefault(name, []).append(
                    run_reader(reader, sim, target, len(lines), **extra))
        if profile:
            sim.wait_subscribers(0)
            stats = Path(tmp) / "listener.prof"
            run_reader(listener_reader, sim, target, len(lines),
                       url=f"sqlite:///{tmp}/profile.db", profile=str(stats))
            for thread, path in (("writer", stats), ("reader", Path(f"{stats}.reader"))):
                print(f"\nwhere the SQLite listener's {thread} thread spends its time (cProfile):")
                pstats.Stats(str(path)).sort_stats("tottime").print_stats(18)
    eps = {name: statistics.median(values) for name, values in rates.items()}
    labels = {"bare": "bare paramiko reader, json.loads per line",
              "gerritlib": "gerritlib GerritWatcher as shipped",
              "sqlite": "hyperv-ci Listener + EventStore, SQLite",
              "pg": "hyperv-ci Listener + EventStore, PostgreSQL"}
    for name, value in eps.items():
        spread = ", ".join(f"{v:,.0f}" for v in rates[name])
        print(f"  {labels[name]:<46} {value:>9,.0f} events/s  ({spread})")
    figures: dict[str, float] = {f"listener.{name}_eps": round(value)
                                 for name, value in eps.items()}
    if "sqlite" in eps:
        figures["listener.ratio_sqlite"] = round(eps["sqlite"] / eps["bare"], 3)
        if "gerritlib" in eps:
            figures["listener.ratio_gerritlib"] = round(eps["sqlite"] / eps["gerritlib"], 2)
    if "pg" in eps:
        figures["listener.ratio_pg"] = round(eps["pg"] / eps["bare"], 3)
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=50000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2,000 events, once")
    parser.add_argument("--pg", default=PG_ADMIN, help="PostgreSQL admin URL ('' for none)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    events, runs = (min(args.events, 2000), 1) if args.quick else (args.events, args.runs)
    figures = measure(events, runs, args.pg, args.profile)
    for key, value in figures.items():
        print(f"{key} = {value}")
    record(figures, path=args.results)


if __name__ == "__main__":
    main()
