"""The history, tests, flaky and chart pages at a year of history on PostgreSQL.

Measures bench/seed.py's database (`hyperv_ci_bench_dashboard`, the one
bench/dashboard.py measures; seeded here if that bench has not run): a year
of `--builds` builds (default 100,000) and `--results` test results in all
(default 10,000,000), where rechecks rerun their build's tests, so failures
flip at a realistic rate and the flaky page has real work.

Then it requests every page of dashboard/history.py, tests_view.py and
charts_view.py (and their JSON) through the app, `--repeat` times each,
prints p50/p95 per page and the plans of the main queries, and merges
`history.*_p95_ms` into bench/results.json.

    .venv/bin/python -m bench.history            # 100k builds, 10M results
    .venv/bin/python -m bench.history --builds 2000 --results 200000 --no-record
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import select, text
from sqlalchemy.engine import Engine

from bench.pg import database_url, drop_database
from bench.results import record
from bench.seed import DATABASE, JOBS, NOW, PROJECTS, World, prepare
from ci.config import Config, parse_config
from ci.db import make_sessionmaker
from ci.models import Build
from ci.verdict_record import assess
from dashboard import create_app


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
    parser.add_argument("--results", type=int, default=10_000_000, help="test results in all")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--reseed", action="store_true")
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--drop", action="store_true", help="drop the database afterwards")
    parser.add_argument("--database", default=DATABASE, help="the database's name")
    args = parser.parse_args(argv)

    name = args.database
    url = database_url(name)
    # bench/dashboard.py's database: seeded here only if that bench has not run.
    engine = prepare(name, args.builds, args.results, reseed=args.reseed)
    node = World.hyperv_node(3)
    week = (NOW - timedelta(days=180)).date()

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
            "s.build_id = b.id AND s.node = :node) ORDER BY b.created_at DESC, b.id DESC "
            "LIMIT 51", {"node": node})

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
            "builds_by_node": f"/builds?node={node}",
            "builds_by_project_failed": "/builds?project=openstack/os-win&result=failed",
            "builds_by_change": f"/builds?change={change}",
            "builds_by_date": f"/builds?since={week}&until={week + timedelta(days=6)}"
                              f"&job={JOBS[1]}",
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
            "api_builds": f"/api/builds?job={JOBS[1]}",
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
        figures["history.seeded_test_results"] = args.results
    engine.dispose()
    if args.drop:
        drop_database(name)
    if not args.no_record:
        record(figures)
        print("\nrecorded in bench/results.json")
    return figures


if __name__ == "__main__":
    main()
