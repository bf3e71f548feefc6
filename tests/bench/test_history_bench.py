"""bench/history.py still runs: a tiny seed, every page measured once (no timing asserted)."""

from __future__ import annotations

import uuid

import pytest

from bench import history


@pytest.mark.postgres
def test_history_bench_seeds_and_measures_every_page(pg_server: str) -> None:
    name = f"hypervci_bench_hist_{uuid.uuid4().hex[:8]}"
    figures = history.main(["--builds", "160", "--results", "40000", "--repeat", "1",
                            "--database", name, "--no-record", "--drop"])
    assert figures["history.seeded_builds"] == 160
    pages = [k for k in figures if k.endswith("_p95_ms")]
    assert len(pages) >= 20 and all(figures[k] >= 0 for k in pages)
