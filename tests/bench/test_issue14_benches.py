"""Each issue-14 benchmark runs end to end with --quick and records its keys
(smoke runs: the figures themselves are for `make bench`, never asserted)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from bench import claims, demo_latency, overhead, subunit_store
from bench.demo_latency import union_seconds


def recorded(path: Path) -> dict[str, float]:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.postgres
def test_claims_quick_runs_every_build_once(tmp_path: Path, pg_server: str) -> None:
    results = tmp_path / "results.json"
    claims.main(["--quick", "--pg", pg_server, "--results", str(results)])
    assert recorded(results) == {"claims.double": 0}  # the 8-worker rate only from a full run


@pytest.mark.postgres
def test_subunit_store_quick_records_its_keys(tmp_path: Path, pg_server: str) -> None:
    results = tmp_path / "results.json"
    subunit_store.main(["--quick", "--pg", pg_server, "--results", str(results)])
    figures = recorded(results)
    assert set(figures) == {"subunit.store_1500_s", "subunit.store_1500_pg_s",
                            "subunit.db_details_bytes"}
    assert figures["subunit.db_details_bytes"] < 2000  # tracebacks and reasons only


@pytest.mark.slow
def test_demo_benches_quick_record_their_keys(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    demo_latency.main(["--quick", "--results", str(results)])
    overhead.main(["--quick", "--results", str(results)])
    assert set(recorded(results)) == {"demo.push_to_vote_p50_s", "overhead.build_s"}


def test_union_counts_overlapping_steps_once() -> None:
    t = datetime(2026, 12, 2)
    s = timedelta(seconds=1)
    assert union_seconds([(t, t + 2 * s), (t + s, t + 3 * s), (t + 5 * s, t + 6 * s)]) == 4.0
    assert union_seconds([(t, t + 4 * s), (t + s, t + 2 * s)]) == 4.0
    assert union_seconds([]) == 0.0
