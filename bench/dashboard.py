"""Every dashboard page at 100,000 builds and 10,000,000 test results on PostgreSQL.

The database is bench/seed.py's (`hyperv_ci_bench_dashboard`, shared with
bench/history.py): seeded if it does not hold `--builds` builds and
`--results` test results yet (a fresh machine), else reused (`--reseed` to
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
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text
from sqlalchemy.engine import Engine

from bench.pg import database_url, drop_database
from bench.results import RESULTS, record
from bench.seed import DATABASE, JOBS, PROJECTS, TEST_IDS, logs_dir_for, prepare
from ci.config import parse_config
from ci.db import make_sessionmaker
from dashboard import create_app


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
    url = database_url(args.database)
    logs_dir = logs_dir_for(args.database)
    engine = prepare(args.database, args.builds, args.results, reseed=args.reseed)

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
