"""The year of history the dashboard and history benchmarks measure, seeded once.

One PostgreSQL database (`hyperv_ci_bench_dashboard`, schema by the project's
migrations) that bench/dashboard.py and bench/history.py both measure, kept
with its scale in a marker row and reused by the next run of that scale:

- `builds` builds over a year (default 100,000), 8 a change (2 patchsets x 2
  jobs x a build and its recheck); the newest queued (30) and running (5,
  their tempest step with live progress); 3 steps each, devstack on the lab
  set's controller, tempest on one of its Hyper-V nodes;
- `results` test results in all (default 10,000,000): the newest 20 finished
  builds carry a full 1,500-test tempest run, the others share the rest. A
  build and its recheck run the same tests, a failed build fails 3 of them and
  0.5% of results are flaky (passed on re-run), so the history flips at a
  realistic rate (tens of thousands of flips a year); their test flips are
  written by migration 0012's backfill (ci/test_flips.py);
- 25 nodes in 5 lab sets (one offline, one drained), 10,000 processed events.

The small tables are COPYed from Python; the test results are made on the
server (INSERT ... SELECT over generate_series, the per-build counts sent
as arrays; rows in build order, a build's results together as a CI writes
them), into the table UNLOGGED and without its secondary indexes or foreign
key, then SET LOGGED and indexed. Every column list, COPY's
and the INSERT's, is checked against the model's table.
"""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Table, text
from sqlalchemy.engine import Engine

from bench.pg import columns_for, copy_rows, create_database, database_url
from ci.db import ensure_schema, make_engine
from ci.models import Build, BuildStep, Change, Event, Node, Patchset, TestResult
from ci.test_flips import backfill

DATABASE = "hyperv_ci_bench_dashboard"
MARKER = "bench.dashboard.seed"  # listener_state key: the scale the database holds
# 2: one shape for both benches (rechecks rerun their build's tests); 3: a build's
# results stored together (2 scattered them in test name order).
SEED_VERSION = 3
PROJECTS = ("openstack/nova", "openstack/compute-hyperv", "openstack/networking-hyperv",
            "openstack/os-win")
JOBS = ("hyperv-devstack", "hyperv-local")
TEST_IDS = 1500  # a tempest run of the Hyper-V CI
FULL_RUNS = 20  # the newest finished builds with a full run each
FAILS = 3  # the tests a failed build fails
FLAKY_PER_10000 = 50  # results that passed on re-run
SKIP_PER_10000 = 130
QUEUED, RUNNING = 30, 5
# Load the results without WAL, then SET LOGGED (which writes the table once).
UNLOGGED_LOAD = True
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


def logs_dir_for(database: str) -> Path:
    """Where the seeded builds' log_path values point: one fixed place per database."""
    return Path(tempfile.gettempdir()) / (
        "hyperv-ci-bench-dashboard-logs" if database == DATABASE
        else f"hyperv-ci-bench-logs-{database}")


def prepare(database: str, builds: int, results: int, *, reseed: bool = False) -> Engine:
    """An engine on `database` holding that scale: reused if a seeding of it finished,
    else (re)created and seeded; either way upgraded to the current schema."""
    url = database_url(database)
    engine = make_engine(url)
    if reseed or seeded(engine) != scale_key(builds, results):
        engine.dispose()
        create_database(database, replace=True)
        engine = make_engine(url)
        ensure_schema(engine)
        seed(engine, World(builds, results), logs_dir_for(database))
    else:
        print(f"database {database} already holds {scale_key(builds, results)}")
        ensure_schema(engine)  # seeded by an older schema: the migrations since
    return engine


# -- the shape (pure) ------------------------------------------------------------------------
@dataclass(frozen=True)
class World:
    """The scale; which build is in which state, group and patchset."""

    builds: int
    results: int

    @property
    def changes(self) -> int:
        return max(1, self.builds // 8)

    @property
    def patchsets(self) -> int:
        return self.changes * 2

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

    @staticmethod
    def patchset_of(build_id: int) -> int:
        return 1 + (build_id - 1) // 4

    @staticmethod
    def first_test(build_id: int) -> int:
        """The first of a build's tests: a build and its recheck (ids 2n+1, 2n+2: one
        patchset and job) run the same ones."""
        return ((build_id - 1) // 2 * 7) % TEST_IDS

    @staticmethod
    def hyperv_node(build_id: int) -> str:
        return f"hv-{build_id % LAB_SETS}-{build_id // LAB_SETS % 4}"


TEST_NAME = ("tempest.api.compute.servers.test_servers.ServersTest.test_{number}"
             "[id-{hex}-1111-2222-3333-444444444444,smoke]")
# The same names in SQL, for test t: made per row, as a join with a table of names
# would let the planner emit the rows in name order, scattering a build's results.
TEST_NAME_SQL = ("'" + TEST_NAME.format(number="' || lpad(t::text, 4, '0') || '",
                                        hex="' || lpad(to_hex(t), 8, '0') || '") + "'")


def test_names() -> list[str]:
    return [TEST_NAME.format(number=f"{i:04d}", hex=f"{i:08x}") for i in range(TEST_IDS)]


def result_counts(world: World, states: dict[int, str]) -> dict[int, int]:
    """How many results each finished build gets: `world.results` in all, the newest
    FULL_RUNS a full run, the rest spread evenly."""
    finished = [b for b, s in states.items() if s in ("succeeded", "failed")]
    full = set(finished[-FULL_RUNS:])
    rest = max(0, world.results - TEST_IDS * len(full))
    per = rest / max(1, len(finished) - len(full))
    counts: dict[int, int] = {}
    carry = 0.0
    for b in finished:
        if b in full:
            counts[b] = TEST_IDS
        else:
            carry += per
            counts[b] = int(carry)
            carry -= counts[b]
    return counts


# -- seeding ---------------------------------------------------------------------------------
class _Phases:
    """Prints how long each part of the seeding took (where a fresh machine's time goes)."""

    def __init__(self) -> None:
        self.last = self.started = time.perf_counter()

    def done(self, what: str) -> None:
        now = time.perf_counter()
        print(f"  {what}: {now - self.last:.1f} s", flush=True)
        self.last = now


def seed(engine: Engine, world: World, logs_dir: Path) -> None:
    rng = random.Random(12)  # the same world on every machine
    phases = _Phases()
    raw: Any = engine.raw_connection()  # psycopg's connection: COPY and DDL
    try:
        states = {b: world.build_state(b, rng) for b in range(1, world.builds + 1)}
        _seed_small(raw, world, states, rng, logs_dir)
        raw.commit()
        phases.done("changes, patchsets, builds, steps, nodes, events (COPY)")
        indexes = _load_results(raw, world, states)
        raw.commit()
        phases.done(f"{world.results:,} test results (INSERT ... SELECT)")
        with raw.cursor() as cursor:
            if UNLOGGED_LOAD:
                cursor.execute("ALTER TABLE test_results SET LOGGED")
                raw.commit()
                phases.done("test_results SET LOGGED")
            cursor.execute("SET maintenance_work_mem = '512MB'")
            for ddl in indexes:
                cursor.execute(ddl)
            raw.commit()
            phases.done("test_results' indexes and foreign key")
            for table in ("changes", "patchsets", "builds", "build_steps", "test_results",
                          "nodes", "events"):
                # The table names are the constants above.
                cursor.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "  # noqa: S608
                               f"(SELECT max(id) FROM {table}))")
        raw.commit()
    finally:
        raw.close()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        # Statistics, and the visibility map the index-only scans of the pages need.
        conn.execute(text("VACUUM ANALYZE"))
    phases.done("VACUUM ANALYZE")
    with engine.begin() as conn:
        # The flips of the loaded history, by the rule and code migration 0012 uses.
        flips = backfill(conn)
        conn.execute(text("ANALYZE test_flips"))
    phases.done(f"{flips:,} test flips (migration 0012's backfill)")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO listener_state (key, value) VALUES (:k, :v)"),
                     {"k": MARKER, "v": scale_key(world.builds, world.results)})
    print(f"seeded in {time.perf_counter() - phases.started:.0f} s", flush=True)


def _tables() -> dict[str, Table]:
    return {t.__tablename__: cast(Table, t.__table__)
            for t in (Change, Patchset, Build, BuildStep, TestResult, Node, Event)}


def _seed_small(raw: Any, world: World, states: dict[int, str], rng: random.Random,
                logs_dir: Path) -> None:
    tables = _tables()
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


# The results of a build: FAILS failing tests first if it failed, then by a hash of
# (build, position): FLAKY_PER_10000 flaky, SKIP_PER_10000 skipped, the rest passing.
# Rows come in build order, a build's results together, as a CI writes them.
RESULTS_SQL = """
INSERT INTO test_results ({columns})
SELECT r.build_id, {name},
       CASE WHEN r.failed AND g.k < {fails} THEN 'fail'
            WHEN h.v < {flaky} THEN 'flaky'
            WHEN h.v < {flaky} + {skip} THEN 'skip' ELSE 'success' END,
       CASE WHEN r.failed AND g.k < {fails} THEN 12.5
            WHEN h.v < {flaky} THEN 4.0 + h.v / 100.0
            WHEN h.v < {flaky} + {skip} THEN 0.0 ELSE round(h.v / 1000.0, 3) END,
       CASE WHEN (r.failed AND g.k < {fails}) OR h.v < {flaky} THEN %(traceback)s
            WHEN h.v < {flaky} + {skip} THEN 'not on Hyper-V' ELSE '' END
FROM unnest(%(builds)s::int[], %(counts)s::int[], %(firsts)s::int[], %(failed)s::bool[])
     AS r(build_id, count, first, failed)
CROSS JOIN LATERAL generate_series(0, r.count - 1) AS g(k)
CROSS JOIN LATERAL (SELECT (r.first + g.k) %% {ids} AS t,
                           abs(hashint8(r.build_id::bigint * 4096 + g.k)) %% 10000 AS v) AS h
"""


def _load_results(raw: Any, world: World, states: dict[int, str]) -> list[str]:
    """Insert the test results; the DDL of the indexes and keys to restore afterwards."""
    columns = columns_for(_tables()["test_results"],
                          ("build_id", "test_id", "status", "duration", "details"))
    counts = result_counts(world, states)
    ids = sorted(counts)
    with raw.cursor() as cursor:
        cursor.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = "
                       "'test_results' AND indexname <> 'pk_test_results'")
        indexes = cursor.fetchall()
        for name, _ in indexes:
            cursor.execute(f'DROP INDEX "{name}"')
        # Its foreign key checked once after the load, not by a trigger per row.
        cursor.execute("SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
                       "WHERE conrelid = 'test_results'::regclass AND contype = 'f'")
        keys = cursor.fetchall()
        for name, _ in keys:
            cursor.execute(f'ALTER TABLE test_results DROP CONSTRAINT "{name}"')
        if UNLOGGED_LOAD:
            cursor.execute("ALTER TABLE test_results SET UNLOGGED")
        cursor.execute(RESULTS_SQL.format(columns=", ".join(columns), name=TEST_NAME_SQL,
                                          fails=FAILS,
                                          flaky=FLAKY_PER_10000, skip=SKIP_PER_10000,
                                          ids=TEST_IDS),
                       {"builds": ids, "counts": [counts[b] for b in ids],
                        "firsts": [World.first_test(b) for b in ids],
                        "failed": [states[b] == "failed" for b in ids],
                        "traceback": TRACEBACK})
    return [ddl for _, ddl in indexes] + [
        f'ALTER TABLE test_results ADD CONSTRAINT "{name}" {ddl}' for name, ddl in keys]


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
        controller = f"ctl-{b % LAB_SETS}"
        for name, minutes in (("prepare", 1), ("stack.sh", 20)):
            yield (b, name, controller, "succeeded", start, start + timedelta(minutes=minutes),
                   0, "", "", None, None, None, None)
            start += timedelta(minutes=minutes)
        hyperv = world.hyperv_node(b)
        if running:
            yield (b, "tempest", hyperv, "running", start, None, None,
                   "parallel pass running\n", "", 600, 598, 2,
                   "tempest.api.compute.servers.test_servers.ServersTest.test_reboot[id-1]")
        else:
            failed = state == "failed"
            yield (b, "tempest", hyperv, "failed" if failed else "succeeded", start,
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
