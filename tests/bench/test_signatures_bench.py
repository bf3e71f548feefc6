"""bench/signatures.py runs and records its figures (small inputs: a smoke test, not a measure)."""

from __future__ import annotations

import json
from pathlib import Path

from bench.signatures import main


def test_signatures_bench_records_its_figures(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    figures = main(["--quick", "--results", str(results)])
    stored = json.loads(results.read_text(encoding="utf-8"))
    assert set(figures) == {"signatures.log_tail_ms", "signatures.log_gz_ms",
                            "signatures.catastrophic_ms", "signatures.tests_ms"}
    assert all(stored[key] == value for key, value in figures.items())
