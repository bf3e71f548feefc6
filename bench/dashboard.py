"""Every dashboard page at 100,000 builds and 10,000,000 test results on PostgreSQL.

Seeds its own database (`hyperv_ci_bench_dashboard`, schema by the project's
migrations) through psycopg's COPY, row shapes checked against the models'
tables: `--builds` builds over a year (8 a change: 2 patchsets x 2 jobs x a
recheck), the newest of them queued (30) and running (5, their tempest step
with live progress), 3 steps each, `--results` test results in all
(the newest 20 finished builds carry a full 1,500-test tempest run, the
others share the rest), 25 nodes in 5 lab sets (one offline, one drained),
10,000 processed events; then their test flips through migration 0012's
backfill (ci/test_flips.py). The indexes of test_results are dropped for the
load and rebuilt after it. The seeded database is kept, with its scale in a
marker row, and reused by the next run of the same scale (`--reseed` to
start again, `--drop` to remove it afterwards).

Then it requests each page through the real app (Flask's test client, no
HTTP), `--repeat` times: every page of the navigation, the status page and
its refresh fragment, the build pages (a 1,500-test build, a page of its
tests, a running and a queued build), a change, the log listing with its
build banner, and every JSON endpoint the app has; prints p50/p95 per page
and merges `dashboard.page_p95_ms.<page>`, `dashboard.page_p95_ms_max` and
`dashboard.status_json_p95_ms` into bench/results.json.

    .venv/bin/python -m bench.dashboard                        # 100k builds, 10M results
    .venv/bin/python -m bench.dashboard --builds 2000 --results 200000 --no-record
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Table, text
from sqlalchemy.engine import Engine

from bench.pg import create_database, database_url, drop_database
from bench.results import RESULTS, record
from ci.config import parse_config
from ci.db import ensure_schema, make_engine, make_sessionmaker
from ci.models import (
    Build,
    BuildStep,
    Change,
    Event,
    Node,
    Patchset,
    TestResult,
)
from ci.test_flips import backfill
from dashboard import create_app

DATABASE = "hyperv_ci_bench_dashboard"
MARKER = "bench.dashboard.seed"  # listener_state key: the scale the database holds
SEED_VERSION = 1
PROJECTS = ("openstack/nova", "openstack/compute-hyperv", "openstack/networking-hyperv",
            "openstack/os-win")
JOBS = ("hyperv-devstack", "hyperv-local")
TEST_IDS = 1500  # a tempest run of the Hyper-V CI
FULL_RUNS = 20  # the newest finished builds with a full run each
QUEUED, RUNNING = 30, 5
LAB_SETS = 5  # each: one controller, four Hyper-V nodes
TRACEBACK = ("Traceback (most recent call last):\n"
             '  File "tempest/api/compute/servers/test_servers.py", line 88, in test\n'
             "    self.assertEqual('ACTIVE', server['status'])\n"
             "testtools.matchers._impl.MismatchError: 'ACTIVE' != 'ERROR': 实例 failed\n")
NOW = datetime.now(UTC).replace(microsecond=0)


def scale_key(builds: int, results: int) -> str:
    return f"v{SEED_VERSION} builds={builds} results={results}"


def seeded(engine: Engine) -> str | None:
    """The marker of a finished seeding, or None (no database, no schema, no marker)."""
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT value FROM listener_state WHERE key = :k"),
                                {"k": MARKER}).scalar()
    except Exception:  # the database or its schema does not exist yet: seed it
        return None


# -- COPY ------------------------------------------------------------------------------------
def _field(value: Any) -> str:
    """One value in COPY's text format (tab-separated, \\N for NULL, backslash escapes)."""
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, datetime):
        return value.isoformat()
    return (str(value).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
            .replace("\r", "\\r"))


def columns_for(table: Table, columns: Sequence[str]) -> list[str]:
    """`columns`, checked against the model's table: every NOT NULL column without a
    server default is given (the models' defaults are Python-side, COPY skips them)."""
    known = {c.name for c in table.columns}
    unknown = set(columns) - known
    needed = {c.name for c in table.columns if not c.nullable and c.server_default is None
              and not (c.primary_key and c.autoincrement is not False and c.name not in columns)}
    missing = needed - set(columns)
    if unknown or missing:
        raise ValueError(f"{table.name}: unknown columns {sorted(unknown)}, "
                         f"missing NOT NULL columns {sorted(missing)}")
    return list(columns)


def copy_rows(raw: Any, table: Table, columns: Sequence[str],
              rows: Iterable[Sequence[Any]], chunk: int = 20_000) -> int:
    """COPY `rows` into `table` (column order as `columns`); returns the count."""
    names = columns_for(table, columns)
    count = 0
    with raw.cursor() as cursor:
        sql = f"COPY {table.name} ({', '.join(names)}) FROM STDIN"
        with cursor.copy(sql) as copy:
            lines: list[str] = []
            for row in rows:
                lines.append("\t".join(map(_field, row)))
                count += 1
                if len(lines) >= chunk:
                    copy.write(("\n".join(lines) + "\n").encode())
                    lines.clear()
            if lines:
                copy.write(("\n".join(lines) + "\n").encode())
    return count


# -- the seeded world ------------------------------------------------------------------------
class World:
    """The scale and the ids the measured pages need."""

    def __init__(self, builds: int, results: int) -> None:
        self.builds = builds
        self.results = results
        self.changes = max(1, builds // 8)
        self.patchsets = self.changes * 2

    def build_state(self, build_id: int, rng: random.Random) -> str:
        if build_id > self.builds - QUEUED:
            return "queued"
        if build_id > self.builds - QUEUED - RUNNING:
            return "running"
        r = rng.random()
        return ("succeeded" if r < 0.80 else "failed" if r < 0.95 else
                "error" if r < 0.98 else "aborted")

    def created(self, build_id: int) -> datetime:
        return NOW - timedelta(days=365) + timedelta(days=365) * build_id / self.builds

    def patchset_of(self, build_id: int) -> int:
        return 1 + (build_id - 1) // 4


def seed(engine: Engine, world: World, logs_dir: Path) -> None:
    rng = random.Random(12)  # the same world on every machine
    started = time.perf_counter()
    raw = engine.raw_connection()
    try:
        _seed(raw, world, rng, logs_dir)
        raw.commit()
    finally:
        raw.close()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
    with engine.begin() as conn:
        # The flips of the loaded history, by the rule and code migration 0012 uses.
        print(f"{backfill(conn)} test flips", flush=True)
        conn.execute(text("ANALYZE test_flips"))
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO listener_state (key, value) VALUES (:k, :v)"),
                     {"k": MARKER, "v": scale_key(world.builds, world.results)})
    print(f"seeded in {time.perf_counter() - started:.0f} s", flush=True)


def _seed(raw: Any, world: World, rng: random.Random, logs_dir: Path) -> None:
    tables = {t.__tablename__: t.__table__ for t in (Change, Patchset, Build, BuildStep,
                                                     TestResult, Node, Event)}
    copy_rows(raw, tables["changes"],
              ("id", "number", "project", "branch", "subject", "owner_name", "owner_email",
               "url", "status", "updated_at"),
              ((i, 100_000 + i, PROJECTS[i % len(PROJECTS)],
                "stable/2024.1" if i % 5 == 0 else "master",
                f"Hyper-V: change {i} — 实例 <b>résumé</b>", f"Owner {i % 300} Zoë", "",
                f"https://review.example.org/{100_000 + i}", "NEW", NOW)
               for i in range(1, world.changes + 1)))
    copy_rows(raw, tables["patchsets"],
              ("id", "change_id", "number", "revision", "ref", "uploader_name", "created_at"),
              ((i, 1 + (i - 1) // 2, 1 + (i - 1) % 2, f"{i:040x}",
                f"refs/changes/{i % 100:02d}/{100_000 + 1 + (i - 1) // 2}/{1 + (i - 1) % 2}",
                "Zoë", NOW) for i in range(1, world.patchsets + 1)))
    states = {b: world.build_state(b, rng) for b in range(1, world.builds + 1)}
    copy_rows(raw, tables["builds"], (
        "id", "patchset_id", "job", "state", "reason", "created_at", "started_at",
        "finished_at", "attempt", "abort_requested", "summary", "log_path", "worker"),
        _builds(world, states, rng, logs_dir))
    copy_rows(raw, tables["build_steps"], (
        "build_id", "name", "node", "state", "started_at", "finished_at", "exit_code",
        "output_tail", "message", "tests_done", "tests_passed", "tests_failed",
        "current_test"), _steps(world, states))
    copy_rows(raw, tables["nodes"], (
        "name", "label", "address", "state", "offline_cause", "drained", "build_id",
        "health_failures", "message", "updated_at", "lab_set"), _nodes(world))
    copy_rows(raw, tables["events"], ("received_at", "type", "raw", "processed_at", "outcome"),
              ((NOW - timedelta(minutes=i), "patchset-created", "{}",
                NOW - timedelta(minutes=i), "queued") for i in range(10_000)))
    with raw.cursor() as cursor:
        cursor.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = "
                       "'test_results' AND indexname <> 'pk_test_results'")
        indexes = cursor.fetchall()
        for name, _ in indexes:
            cursor.execute(f'DROP INDEX "{name}"')
    copy_rows(raw, tables["test_results"],
              ("build_id", "test_id", "status", "duration", "details"),
              _results(world, states, rng))
    with raw.cursor() as cursor:
        for _, ddl in indexes:
            cursor.execute(ddl)
        for table in ("changes", "patchsets", "builds", "build_steps", "test_results",
                      "nodes", "events"):
            # The table names are the constants above.
            cursor.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "  # noqa: S608
                           f"(SELECT max(id) FROM {table}))")


def _builds(world: World, states: dict[int, str], rng: random.Random,
            logs_dir: Path) -> Iterator[tuple[Any, ...]]:
    for b, state in states.items():
        created = world.created(b)
        start = None if state == "queued" else created + timedelta(minutes=2)
        end = None if state in ("queued", "running") else start + timedelta(  # type: ignore[operator]
            minutes=40 + rng.random() * 40)
        patchset = world.patchset_of(b)
        change = 100_000 + 1 + (patchset - 1) // 2
        log = (str(logs_dir / str(change) / str(1 + (patchset - 1) % 2) / str(b))
               if end is not None else None)
        summary = "" if end is None else (
            "1500 tests: 1480 success, 20 skip" if state == "succeeded" else
            "1500 tests: 3 fail, 1477 success, 20 skip; failed: ServersTest.test_reboot")
        yield (b, patchset, JOBS[(b - 1) % 4 // 2], state,
               "patchset-created" if b % 2 else "comment: recheck", created, start, end, 1,
               False, summary, log, None if start is None else f"worker-{b % 3}")


def _steps(world: World, states: dict[int, str]) -> Iterator[tuple[Any, ...]]:
    for b, state in states.items():
        if state == "queued":
            continue
        start = world.created(b) + timedelta(minutes=2)
        running = state == "running"
        node = f"ctl-{b % LAB_SETS}"
        for name, minutes in (("prepare", 1), ("stack.sh", 20)):
            yield (b, name, node, "succeeded", start, start + timedelta(minutes=minutes), 0,
                   "", "", None, None, None, None)
            start += timedelta(minutes=minutes)
        if running:
            yield (b, "tempest", node, "running", start, None, None,
                   "parallel pass running\n", "", 600, 598, 2,
                   "tempest.api.compute.servers.test_servers.ServersTest.test_reboot[id-1]")
        else:
            failed = state == "failed"
            yield (b, "tempest", node, "failed" if failed else "succeeded", start,
                   start + timedelta(minutes=30), 1 if failed else 0, "1500 tests\n",
                   "1500 tests", 1500, 1497 if failed else 1480, 3 if failed else 0, None)


def _nodes(world: World) -> Iterator[tuple[Any, ...]]:
    running = [b for b in range(world.builds - QUEUED - RUNNING + 1, world.builds - QUEUED + 1)]
    for s in range(LAB_SETS):
        held = running[s] if s < len(running) else None
        yield (f"ctl-{s}", "devstack", f"10.0.{s}.5", "reserved" if held else "ready", None,
               False, held, 0, "", NOW, f"set-{s}")
        for h in range(4):
            name = f"hv-{s}-{h}"
            offline = s == LAB_SETS - 1 and h == 0
            yield (name, "hyperv", f"10.0.{s}.{11 + h}",
                   "offline" if offline else "reserved" if held else "ready",
                   "health-check" if offline else None, s == LAB_SETS - 1 and h == 1,
                   held, 3 if offline else 0, "WinRM: connection refused" if offline else "",
                   NOW, f"set-{s}")


def _results(world: World, states: dict[int, str],
             rng: random.Random) -> Iterator[tuple[Any, ...]]:
    finished = [b for b, s in states.items() if s in ("succeeded", "failed")]
    full = set(finished[-FULL_RUNS:])
    rest = max(0, world.results - TEST_IDS * len(full))
    per = rest / max(1, len(finished) - len(full))
    names = [f"tempest.api.compute.servers.test_servers.ServersTest.test_{i:04d}"
             f"[id-{i:08x}-1111-2222-3333-444444444444,smoke]" for i in range(TEST_IDS)]
    carry = 0.0
    for b in finished:
        if b in full:
            count = TEST_IDS
        else:
            carry += per
            count = int(carry)
            carry -= count
        failed = states[b] == "failed"
        offset = (b * 7) % TEST_IDS
        for k in range(count):
            test = names[(offset + k) % TEST_IDS]
            r = rng.random()
            if failed and k < 3:
                yield (b, test, "fail", 12.5, TRACEBACK)
            elif r < 0.013:
                yield (b, test, "skip", 0.0, "not on Hyper-V")
            else:
                yield (b, test, "success", round(r * 10, 3), "")


# -- measuring -------------------------------------------------------------------------------
def measure(client: FlaskClient, path: str, repeat: int) -> tuple[float, float, int]:
    """p50, p95 in ms and the response size of `repeat` GETs of `path`."""
    times = []
    size = 0
    for _ in range(repeat):
        start = time.perf_counter()
        response = client.get(path)
        times.append((time.perf_counter() - start) * 1000)
        if response.status_code != 200:
            raise AssertionError(f"{path}: HTTP {response.status_code}")
        size = len(response.data)
    times.sort()
    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    return statistics.median(times), p95, size


def nav_pages(client: FlaskClient) -> dict[str, str]:
    """The links of the page header's navigation, by their label."""
    html = client.get("/").get_data(as_text=True)
    nav = html.split("<nav>", 1)[1].split("</nav>", 1)[0]
    return {re.sub(r"\W+", "_", label.strip().lower()): href
            for href, label in re.findall(r'<a href="([^"]+)">([^<]+)</a>', nav)}


def json_endpoints(app: Flask) -> dict[str, str]:
    """Every parameterless GET under /api/ and the operational endpoints the app serves."""
    found = {}
    for rule in app.url_map.iter_rules():
        path = rule.rule
        if "GET" in (rule.methods or ()) and not rule.arguments and (
                path.startswith("/api/") or path in ("/metrics", "/healthz")):
            found["api_" + re.sub(r"\W+", "_", path.removeprefix("/api/")).strip("_")] = path
    return found


def pages(app: Flask, client: FlaskClient, engine: Engine, logs_dir: Path) -> dict[str, str]:
    with engine.connect() as conn:
        big = conn.execute(text(
            "SELECT build_id FROM test_results GROUP BY build_id HAVING count(*) >= :n "
            "ORDER BY build_id DESC LIMIT 1"), {"n": TEST_IDS}).scalar_one()
        running = conn.execute(text("SELECT id FROM builds WHERE state = 'running' "
                                    "ORDER BY id LIMIT 1")).scalar_one()
        queued = conn.execute(text("SELECT id FROM builds WHERE state = 'queued' "
                                   "ORDER BY id DESC LIMIT 1")).scalar_one()
        change, log_path = conn.execute(text(
            "SELECT c.number, b.log_path FROM builds b JOIN patchsets p ON p.id = "
            "b.patchset_id JOIN changes c ON c.id = p.change_id WHERE b.id = :b"),
            {"b": big}).one()
    tree = Path(log_path)
    tree.mkdir(parents=True, exist_ok=True)  # the listing needs the directory
    (tree / "test-results.txt").write_text("1500 tests\n", encoding="utf-8")
    found = {"status": "/", "status_fragment": "/?fragment=1",
             "build_1500_tests": f"/builds/{big}", "build_tests_page": f"/builds/{big}"
             "?tests_page=8", "build_running": f"/builds/{running}",
             "build_queued": f"/builds/{queued}", "change": f"/changes/{change}",
             "nodes": "/nodes", "logs_banner": "/logs/" + tree.relative_to(logs_dir).as_posix()
             + "/", "api_build": f"/api/builds/{big}", "api_build_running":
             f"/api/builds/{running}"}
    for name, path in {**nav_pages(client), **json_endpoints(app)}.items():
        if path not in found.values():
            found[name] = path
    return found


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--builds", type=int, default=100_000)
    parser.add_argument("--results", type=int, default=10_000_000, help="test results in all")
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--reseed", action="store_true")
    parser.add_argument("--drop", action="store_true", help="drop the database afterwards")
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--database", default=DATABASE, help="the database's name")
    parser.add_argument("--results-file", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not re.fullmatch(r"[a-z0-9_]+", args.database):
        parser.error("--database: lower-case letters, digits and _ only")
    world = World(args.builds, args.results)
    url = database_url(args.database)
    # The seeded builds' log_path values point under it: one fixed place per database.
    logs_dir = Path(tempfile.gettempdir()) / (
        "hyperv-ci-bench-dashboard-logs" if args.database == DATABASE
        else f"hyperv-ci-bench-logs-{args.database}")

    engine = make_engine(url)
    if args.reseed or seeded(engine) != scale_key(args.builds, args.results):
        engine.dispose()
        create_database(args.database, replace=True)
        engine = make_engine(url)
        ensure_schema(engine)
        seed(engine, world, logs_dir)
    else:
        print(f"database {args.database} already holds "
              f"{scale_key(args.builds, args.results)}")
        # Seeded by an older schema: the migrations since (0012 writes its flips).
        ensure_schema(engine)

    with tempfile.TemporaryDirectory() as tmp:
        config = parse_config({
            "database": {"url": url},
            "gerrit": {"host": "127.0.0.1", "username": "ci",
                       "key_file": str(Path(tmp) / "key"),
                       "known_hosts": str(Path(tmp) / "known_hosts")},
            "projects": [{"name": p, "jobs": list(JOBS)} for p in PROJECTS],
            "jobs": {JOBS[0]: {"type": "local", "command": ["true"]},
                     JOBS[1]: {"type": "local", "command": ["true"]}},
            "logs": {"dir": str(logs_dir)},
            "dashboard": {"secret_key_file": str(Path(tmp) / "secret")},
        })
        app = create_app(config, sessions=make_sessionmaker(engine))
        client = app.test_client()
        figures: dict[str, float] = {}
        print(f"\n{'page':24} {'p50 ms':>8} {'p95 ms':>8} {'KB':>7}  path")
        for name, path in pages(app, client, engine, logs_dir).items():
            client.get(path)  # warm: templates compiled, connections open
            p50, p95, size = measure(client, path, args.repeat)
            print(f"{name:24} {p50:8.1f} {p95:8.1f} {size / 1024:7.1f}  {path}", flush=True)
            figures[f"dashboard.page_p95_ms.{name}"] = round(p95, 1)
    figures["dashboard.page_p95_ms_max"] = max(figures.values())
    figures["dashboard.status_json_p95_ms"] = figures["dashboard.page_p95_ms.api_status"]
    figures["dashboard.seeded_builds"] = args.builds
    figures["dashboard.seeded_test_results"] = args.results
    engine.dispose()
    if args.drop:
        drop_database(args.database)
        shutil.rmtree(logs_dir, ignore_errors=True)
    print(f"\nslowest page p95 {figures['dashboard.page_p95_ms_max']} ms; "
          f"status JSON p95 {figures['dashboard.status_json_p95_ms']} ms")
    if not args.no_record:
        record(figures, path=args.results_file)
        print(f"recorded in {args.results_file}")
    return figures


if __name__ == "__main__":
    main()
