"""bench/dashboard.py end to end on a small world (a smoke run: figures not asserted)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from bench import dashboard


@pytest.mark.postgres
def test_a_small_dashboard_bench_seeds_measures_records_and_drops(
        tmp_path: Path, pg_server: str) -> None:
    name = f"hypervci_bench_dash_{uuid.uuid4().hex[:8]}"
    results = tmp_path / "results.json"
    figures = dashboard.main(["--builds", "120", "--results", "40000", "--repeat", "1",
                              "--database", name, "--results-file", str(results), "--drop"])
    recorded = json.loads(results.read_text(encoding="utf-8"))
    assert recorded == figures
    for key in ("status_json_p95_ms", "page_p95_ms_max", "page_p95_ms.status",
                "page_p95_ms.build_1500_tests", "page_p95_ms.logs_banner",
                "page_p95_ms.nodes", "page_p95_ms.change"):
        assert f"dashboard.{key}" in recorded, key
    assert recorded["dashboard.seeded_builds"] == 120
    admin = create_engine(pg_server)
    with admin.connect() as conn:
        left = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"),
                            {"n": name}).all()
    admin.dispose()
    assert left == []  # --drop removed it
