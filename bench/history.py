"""The history, tests, flaky and chart pages at a year of history on PostgreSQL.

Seeds a database (schema by the project's migrations) with `--builds`
builds (default 100,000: a year of a busy CI) over 365 days, 4 builds per
patchset (two jobs, each rechecked once), 3 steps each on 20 Hyper-V and 5
devstack nodes, and `--results` test results per build (default 100: 10M
rows) drawn from 1,500 test ids, ~1% failing and ~0.5% flaky. Rows are made
set-wise on the server (INSERT ... SELECT generate_series), the indexes of
test_results rebuilt after the load, their test flips written by migration
0012's backfill (ci/test_flips.py). The seeded database is kept and reused
by the next run with the same scale (`--reseed` to start again).

Then it requests every page of dashboard/history.py, tests_view.py and
charts_view.py (and their JSON) through the app, `--repeat` times each,
prints p50/p95 per page and the plans of the main queries, and merges
`history.*_p95_ms` into bench/results.json.

    .venv/bin/python -m bench.history            # 100k builds, 10M results
    .venv/bin/python -m bench.history --builds 2000 --results 20 --no-record
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import select, text
from sqlalchemy.engine import Engine

from bench.pg import create_database, database_url, drop_database
from bench.results import record
from ci.config import Config, parse_config
from ci.db import ensure_schema, make_engine, make_sessionmaker
from ci.models import Build
from ci.test_flips import backfill
from ci.verdict_record import assess
from dashboard import create_app

TEST_IDS = 1500
PROJECTS = ("openstack/nova", "openstack/compute-hyperv", "openstack/networking-hyperv",
            "openstack/os-win")
JOBS = ("hyperv-local", "hyperv-extra")
RESULT_INDEXES = {
    "ix_test_results_build_id": "CREATE INDEX ix_test_results_build_id ON test_results (build_id)",
    "ix_test_results_test_id_build_id": "CREATE INDEX ix_test_results_test_id_build_id "
                                        "ON test_results (test_id, build_id, status)",
    "ix_test_results_failing": "CREATE INDEX ix_test_results_failing ON test_results "
                               "(build_id, test_id) WHERE status IN ('fail', 'uxsuccess', "
                               "'flaky')",
}


def seeded_scale(engine: Engine) -> tuple[int, int] | None:
    try:
        with engine.connect() as conn:
            builds = conn.execute(text("SELECT count(*) FROM builds")).scalar_one()
            results = conn.execute(text(
                "SELECT reltuples::bigint FROM pg_class WHERE relname = 'test_results'"
            )).scalar_one()
            return int(builds), int(results)
    except Exception:  # no database or no schema yet: seed it
        return None


def seed(engine: Engine, builds: int, results: int) -> None:
    changes = max(1, builds // 8)  # 2 patchsets a change, 4 builds a patchset
    patchsets = changes * 2
    started = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(text("""
            INSERT INTO changes (id, number, project, branch, subject, owner_name, owner_email,
                                 url, status, updated_at)
            SELECT i, 100000 + i, (ARRAY[:p0, :p1, :p2, :p3])[1 + i % 4],
                   CASE WHEN i % 5 = 0 THEN 'stable/2024.1' ELSE 'master' END,
                   'Change ' || i || ' — Hyper-V 实例', 'Owner ' || (i % 300), '', '', 'NEW',
                   now()
            FROM generate_series(1, :n) AS i"""),
            {"n": changes, **{f"p{k}": p for k, p in enumerate(PROJECTS)}})
        conn.execute(text("""
            INSERT INTO patchsets (id, change_id, number, revision, ref, uploader_name, files,
                                   created_at)
            SELECT i, 1 + (i - 1) / 2, 1 + (i - 1) % 2, md5(i::text), '', '', NULL, now()
            FROM generate_series(1, :n) AS i"""), {"n": patchsets})
        # Build i: patchset (i-1)/4; jobs alternate in pairs (a build and its recheck);
        # spread evenly over the last 365 days; 80% pass, 15% fail, 3% error, 2% abort;
        # the newest 20 still queued or running.
        conn.execute(text("""
            INSERT INTO builds (id, patchset_id, job, state, reason, created_at, started_at,
                                finished_at, attempt, abort_requested, summary)
            SELECT i, 1 + ((i - 1) / 4) % :patchsets,
                   CASE WHEN (i - 1) % 4 < 2 THEN :j0 ELSE :j1 END,
                   CASE WHEN i > :n - 10 THEN 'queued' WHEN i > :n - 20 THEN 'running'
                        WHEN r < 0.80 THEN 'succeeded' WHEN r < 0.95 THEN 'failed'
                        WHEN r < 0.98 THEN 'error' ELSE 'aborted' END,
                   CASE WHEN (i - 1) % 2 = 0 THEN 'patchset-created' ELSE 'comment: recheck' END,
                   t, CASE WHEN i > :n - 10 THEN NULL ELSE t + interval '2 minutes' END,
                   CASE WHEN i > :n - 20 THEN NULL
                        ELSE t + interval '2 minutes' + (40 + r * 40) * interval '1 minute' END,
                   1, false, ''
            FROM (SELECT i, random() AS r,
                         now() - interval '365 days' + (i * interval '365 days') / :n AS t
                  FROM generate_series(1, :n) AS i) AS g"""),
            {"n": builds, "patchsets": patchsets, "j0": JOBS[0], "j1": JOBS[1]})
        conn.execute(text("""
            INSERT INTO build_steps (build_id, name, node, state, started_at, finished_at,
                                     exit_code, output_tail, message)
            SELECT b.id, s.name, s.node, 'succeeded', b.created_at, b.finished_at, 0, '', ''
            FROM builds b CROSS JOIN LATERAL (VALUES
                 ('prepare', 'devstack-' || (b.id % 5)),
                 ('stack.sh', 'devstack-' || (b.id % 5)),
                 ('tempest', 'hv-' || (b.id % 20))) AS s(name, node)"""))
        for name in RESULT_INDEXES:
            conn.execute(text(f"DROP INDEX IF EXISTS {name}"))
        conn.execute(text("""
            INSERT INTO test_results (build_id, test_id, status, duration, details)
            SELECT b.id, 'tempest.api.compute.servers.test_' || ((b.id * 7 + k) % :ids),
                   CASE WHEN r < 0.010 THEN 'fail' WHEN r < 0.015 THEN 'flaky'
                        WHEN r < 0.050 THEN 'skip' ELSE 'success' END,
                   round((random() * 10)::numeric, 3),
                   CASE WHEN r < 0.015 THEN 'Traceback (most recent call last): ...' ELSE ''
                   END
            FROM builds b CROSS JOIN LATERAL (
                 -- b.id in the subquery: correlated, so random() is drawn per build.
                 SELECT k, random() + 0 * b.id AS r FROM generate_series(1, :per) AS k) AS t
            WHERE b.state IN ('succeeded', 'failed')"""), {"ids": TEST_IDS, "per": results})
        for ddl in RESULT_INDEXES.values():
            conn.execute(text(ddl))
        for table in ("changes", "patchsets", "builds", "build_steps", "test_results"):
            # The table names are the constants above.
            sql = (f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "  # noqa: S608
                   f"(SELECT max(id) FROM {table}))")
            conn.execute(text(sql))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
    with engine.begin() as conn:
        # The flips of that history, by the rule and code migration 0012 uses.
        print(f"{backfill(conn)} test flips", flush=True)
        conn.execute(text("ANALYZE test_flips"))
    print(f"seeded in {time.perf_counter() - started:.0f} s", flush=True)


def explain(engine: Engine, label: str, sql: str, params: dict[str, object]) -> None:
    with engine.connect() as conn:
        plan = conn.execute(text("EXPLAIN (ANALYZE, BUFFERS, TIMING OFF) " + sql), params)
        lines = [row[0] for row in plan]
    print(f"\n-- {label}\n" + "\n".join(lines))


def measure(client: object, path: str, repeat: int) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        response = client.get(path)  # type: ignore[attr-defined]
        times.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200, (path, response.status)
    times.sort()
    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    return statistics.median(times), p95


def time_assess(engine: Engine, config: Config, builds: int) -> dict[str, float]:
    """The verdict's part of the record transaction (ci/verdict_record.assess: its one
    read of the build's and its patchset's results, the flips it adds) on the newest
    finished builds, each rolled back."""
    sessions = make_sessionmaker(engine)
    with sessions() as s:
        ids = list(s.scalars(select(Build.id).where(Build.state.in_(("succeeded", "failed")))
                            .order_by(Build.id.desc()).limit(builds)))
    times = []
    for build_id in ids:
        with sessions() as s:
            build = s.get(Build, build_id)
            assert build is not None
            start = time.perf_counter()
            assess(s, build, config)
            times.append((time.perf_counter() - start) * 1000)
            s.rollback()
    times.sort()
    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    print(f"\nassess (record path) over {len(times)} builds: p50 "
          f"{statistics.median(times):.1f} ms, p95 {p95:.1f} ms")
    return {"history.assess_p50_ms": round(statistics.median(times), 2),
            "history.assess_p95_ms": round(p95, 2)}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--builds", type=int, default=100_000)
    parser.add_argument("--results", type=int, default=100, help="test results per build")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--reseed", action="store_true")
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--drop", action="store_true", help="drop the database afterwards")
    args = parser.parse_args(argv)

    name = f"hypervci_bench_history_{args.builds}_{args.results}"
    url = database_url(name)
    engine = make_engine(url) if not args.reseed else None
    scale = seeded_scale(engine) if engine is not None else None
    if scale is None or scale[0] != args.builds:
        if engine is not None:
            engine.dispose()
        create_database(name, replace=True)
        engine = make_engine(url)
        ensure_schema(engine)
        seed(engine, args.builds, args.results)
    assert engine is not None
    ensure_schema(engine)  # seeded by an older schema: the migrations since (0012: flips)
    print(f"database {name}: {seeded_scale(engine)} (builds, ~results)")

    with engine.connect() as conn:
        change = conn.execute(text("SELECT number FROM changes ORDER BY id DESC LIMIT 1")
                              ).scalar_one()
        failing = conn.execute(text(
            "SELECT test_id FROM test_results WHERE status = 'fail' ORDER BY id DESC LIMIT 1")
        ).scalar_one()
    explain(engine, "one test's history (ix_test_results_test_id_build_id)",
            "SELECT build_id, status FROM test_results WHERE test_id = :t "
            "ORDER BY build_id DESC LIMIT 101", {"t": failing})
    explain(engine, "the newest 200 builds' results, per test (ix_builds_finished_at)",
            "SELECT test_id, count(*) FROM test_results WHERE build_id IN (SELECT id FROM "
            "builds WHERE finished_at IS NOT NULL AND state IN ('succeeded', 'failed') "
            "ORDER BY finished_at DESC, id DESC LIMIT 200) GROUP BY test_id", {})
    explain(engine, "flips of 30 days (ix_test_flips_finished_at)",
            "SELECT test_id, count(*) FROM test_flips "
            "WHERE finished_at >= now() - interval '30 days' GROUP BY test_id", {})
    explain(engine, "a node's builds, keyset page (ix_builds_created_at_id + "
                    "ix_build_steps_node_build_id)",
            "SELECT b.id FROM builds b WHERE EXISTS (SELECT 1 FROM build_steps s WHERE "
            "s.build_id = b.id AND s.node = 'hv-3') ORDER BY b.created_at DESC, b.id DESC "
            "LIMIT 51", {})

    with tempfile.TemporaryDirectory() as tmp:
        config = parse_config({
            "database": {"url": url},
            "gerrit": {"host": "127.0.0.1", "username": "ci",
                       "key_file": str(Path(tmp) / "key"),
                       "known_hosts": str(Path(tmp) / "known_hosts")},
            "projects": [{"name": p, "jobs": list(JOBS)} for p in PROJECTS],
            "jobs": {j: {"type": "local", "command": ["true"]} for j in JOBS},
            "logs": {"dir": tmp},
            "dashboard": {"secret_key_file": str(Path(tmp) / "secret")},
        })
        app = create_app(config, sessions=make_sessionmaker(engine))
        client = app.test_client()
        page5 = "/api/builds"
        for _ in range(4):  # the fifth page of the unfiltered list (or the last)
            page5 = client.get(page5).get_json()["next_url"] or page5
        page5 = page5.removeprefix("/api")  # the same page as HTML
        pages = {
            "builds": "/builds",
            "builds_page5": page5,
            "builds_by_node": "/builds?node=hv-3",
            "builds_by_project_failed": "/builds?project=openstack/os-win&result=failed",
            "builds_by_change": f"/builds?change={change}",
            "builds_by_date": "/builds?since=2026-06-01&until=2026-06-07&job=hyperv-extra",
            "change": f"/changes/{change}",
            "tests": "/tests",
            "tests_slowest": "/tests?sort=slowest&window=1000",
            "test": f"/tests/{quote(failing)}",
            "flaky": "/flaky",
            "charts_page": "/charts",
            "chart_pass_rate": "/charts/pass-rate.svg",
            "chart_queue": "/charts/queue.svg",
            "chart_nodes": "/charts/nodes.svg",
            "chart_year": "/charts/duration.svg?days=366",
            "api_builds": "/api/builds?job=hyperv-local",
            "api_tests": "/api/tests",
            "api_flaky": "/api/flaky",
            "api_charts": "/api/charts",
        }
        figures: dict[str, float] = {}
        print(f"\n{'page':28} {'p50 ms':>8} {'p95 ms':>8}")
        for key, path in pages.items():
            p50, p95 = measure(client, path, args.repeat)
            print(f"{key:28} {p50:8.1f} {p95:8.1f}   {path}")
            figures[f"history.{key}_p95_ms"] = round(p95, 1)
        figures["history.page_p95_ms_max"] = max(figures.values())
        figures.update(time_assess(engine, config, args.repeat))
        figures["history.seeded_builds"] = args.builds
        figures["history.seeded_results_per_build"] = args.results
    engine.dispose()
    if args.drop:
        drop_database(name)
    if not args.no_record:
        record(figures)
        print("\nrecorded in bench/results.json")
    return figures


if __name__ == "__main__":
    main()
