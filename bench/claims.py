"""Claims per second: worker processes on PostgreSQL draining a queue of no-op builds.

    python -m bench.claims [--builds 2000] [--workers 8] [--quick] [--pg URL] [--results FILE]

A fresh database gets `--builds` queued builds (one change each, through the
real `ci.queue.enqueue`); then `--workers` worker PROCESSES, each a real
`runners.worker.Worker` whose job does nothing (`NoopRunner`: no step, no
node), claim, run, record and queue the report of every build until none is
left. Each process notes the builds its runner ran; a build run twice is a
failure of the claim (`claims.double`, must be 0).

Records claims.pg_8_workers_per_s (builds ÷ seconds from the start signal to
the last recorded result; the key names the 8 workers even when `--workers`
differs, so only a default run writes it) and claims.double. On a 2-core
machine the drain is CPU-bound, so it also records what a build cost in CPU,
which moves far less with the machine's other load than the rate does:
claims.worker_cpu_ms_per_build (the worker processes, every thread) and
claims.backend_cpu_ms_per_build (their PostgreSQL server processes, read from
/proc: only when the server runs on this machine and /proc shows them).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.pg import ADMIN_URL, create_database, drop_database, scratch_name
from bench.results import RESULTS, record


def _noop_runner_factory(_config: Any, _job: str) -> Any:
    from runners.base import BuildContext, JobResult, Outcome, Runner

    class NoopRunner(Runner[None]):
        """A job that runs nothing: what is left is the worker's own cost."""

        def prepare(self, ctx: BuildContext) -> None:
            return None

        def run(self, ctx: BuildContext, prepared: None) -> JobResult:
            _RAN.append(ctx.build_id)
            return JobResult(Outcome.SUCCEEDED, "nothing to do")

    return NoopRunner()


_RAN: list[int] = []  # the builds this process's runner ran


def bench_config(url: str, logs: Path) -> Any:
    from ci.config import parse_config

    return parse_config({
        "database": {"url": url},
        "gerrit": {"host": "127.0.0.1", "username": "hyperv-ci", "key_file": "k",
                   "known_hosts": "kh"},
        "projects": [{"name": "openstack/nova", "jobs": ["noop"]}],
        "jobs": {"noop": {"type": "local", "command": ["true"]}},
        "logs": {"dir": str(logs), "url": "http://logs.example.org/"},
        "worker": {"lease_seconds": 120},
    })


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU of process `pid` so far (None when /proc does not show it)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _backends_cpu(pids: set[int]) -> float | None:
    seconds = [_cpu_seconds(pid) for pid in pids]
    return None if not seconds or None in seconds else sum(s for s in seconds if s is not None)


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def worker_process(url: str, logs: str, name: str, ready: Any, start: Any, out: Any) -> None:
    """One worker process: wait for the start signal, drain the queue, report what
    ran and the CPU it and its database connections' server processes spent."""
    from sqlalchemy import event, func, select

    from ci.db import make_engine, make_sessionmaker
    from ci.models import Build, BuildState
    from ci.wakeup import REPORTS, Wakeup, install
    from runners.worker import Worker

    config = bench_config(url, Path(logs))
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    # As `work` wires a worker: its own reporter thread consumes the reports
    # (none runs here: the reports stay queued), so a build's record sends no NOTIFY.
    hub = Wakeup()
    install(sessions, hub)
    hub.waiter(REPORTS)
    worker = Worker(config, sessions, name=name, runner_factory=_noop_runner_factory)
    backends: set[int] = set()  # the server process of each connection the pool opens
    event.listen(engine, "connect",
                 lambda dbapi_conn, _record: backends.add(dbapi_conn.info.backend_pid))
    with sessions() as session:  # opens the pool's connection before the clock starts
        session.execute(select(1))
    ready.put(name)
    start.wait()
    cpu, backend_cpu = _own_cpu(), _backends_cpu(backends)
    while True:
        if worker.run_once():
            continue
        # None claimable: every queued row may be locked by other workers' claims.
        with sessions() as session:
            if not session.scalar(select(func.count()).select_from(Build)
                                  .where(Build.state == BuildState.QUEUED)):
                break
        time.sleep(0.005)
    cpu = _own_cpu() - cpu
    backend_now = _backends_cpu(backends)  # a connection opened meanwhile counts from 0
    backend = (None if backend_cpu is None or backend_now is None
               else backend_now - backend_cpu)
    engine.dispose()
    out.put(WorkerFigures(name, list(_RAN), cpu, backend))


@dataclass(frozen=True)
class WorkerFigures:
    """What one worker process ran, and the CPU seconds it and its server processes spent."""

    name: str
    ran: list[int]
    cpu_s: float
    backend_cpu_s: float | None


def fill_queue(url: str, builds: int) -> None:
    from ci import queue
    from ci.changes import ChangeInfo
    from ci.db import make_engine, make_sessionmaker, transaction

    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    with transaction(sessions) as session:
        for number in range(10001, 10001 + builds):
            patchset = queue.upsert_patchset(session, ChangeInfo(
                number=number, project="openstack/nova", branch="master", patchset=1,
                subject=f"Réglage {number}"))
            queue.enqueue(session, patchset, "noop", "patchset-created")
    engine.dispose()


def run(pg_admin: str, builds: int, workers: int) -> dict[str, float | int]:
    from sqlalchemy import func, select

    from ci.db import ensure_schema, make_engine
    from ci.models import Build, BuildState, Report

    name = scratch_name()
    url = create_database(name, pg_admin)
    try:
        engine = make_engine(url)
        ensure_schema(engine)
        fill_queue(url, builds)
        ctx = multiprocessing.get_context("spawn")
        ready, start, out = ctx.Queue(), ctx.Event(), ctx.Queue()
        with tempfile.TemporaryDirectory() as logs:
            procs = [ctx.Process(target=worker_process,
                                 args=(url, logs, f"w{i}", ready, start, out))
                     for i in range(workers)]
            for proc in procs:
                proc.start()
            for _ in procs:  # every process imported and connected: they wait on `start`
                ready.get(timeout=120)
            began = time.time()
            start.set()
            results = [out.get(timeout=600) for _ in procs]
            for proc in procs:
                proc.join(timeout=60)
        with engine.connect() as conn:
            last = conn.scalar(select(func.max(Build.finished_at)))
            done = conn.scalar(select(func.count()).select_from(Build)
                               .where(Build.state == BuildState.SUCCEEDED))
            reports = conn.scalar(select(func.count()).select_from(Report))
        engine.dispose()
        ran = Counter(build_id for figures in results for build_id in figures.ran)
        double = sum(1 for n in ran.values() if n > 1)
        if done != builds or len(ran) != builds or reports != builds:
            raise SystemExit(f"only {done} of {builds} builds succeeded ({len(ran)} ran, "
                             f"{reports} reports)")
        elapsed = (last.timestamp() if last else time.time()) - began
        per_worker = {f.name: len(f.ran) for f in results}
        cpu_ms = 1000 * sum(f.cpu_s for f in results) / builds
        backend = [f.backend_cpu_s for f in results]
        backend_ms = (None if None in backend
                      else 1000 * sum(b for b in backend if b is not None) / builds)
        print(f"{builds} builds, {workers} worker processes: {elapsed:.2f} s, "
              f"{builds / elapsed:.0f} claims/s, run twice: {double}; CPU a build: "
              f"workers {cpu_ms:.2f} ms, PostgreSQL "
              f"{'unknown' if backend_ms is None else f'{backend_ms:.2f} ms'}; "
              f"per worker {per_worker}")
        figures: dict[str, float | int] = {"per_s": builds / elapsed, "double": double,
                                           "cpu_ms": cpu_ms}
        if backend_ms is not None:
            figures["backend_cpu_ms"] = backend_ms
        return figures
    finally:
        drop_database(name, pg_admin)


def main(argv: list[str] | None = None) -> dict[str, float | int]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--builds", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="20 builds, 2 workers (a smoke run)")
    parser.add_argument("--pg", default=ADMIN_URL, help="PostgreSQL admin URL")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.builds, args.workers = 20, 2
    figures = run(args.pg, args.builds, args.workers)
    out: dict[str, float | int] = {"claims.double": figures["double"]}
    if args.workers == 8 and not args.quick:
        out["claims.pg_8_workers_per_s"] = round(figures["per_s"], 1)
        out["claims.worker_cpu_ms_per_build"] = round(figures["cpu_ms"], 2)
        if "backend_cpu_ms" in figures:
            out["claims.backend_cpu_ms_per_build"] = round(figures["backend_cpu_ms"], 2)
    record(out, path=args.results)
    return out


if __name__ == "__main__":
    main()
