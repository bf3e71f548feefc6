"""bench/login.py runs and records its figures (one round: a smoke test, not a measure)."""

from __future__ import annotations

import json
from pathlib import Path

from bench.login import run


def test_login_bench_records_its_figures(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    figures = run(1, results)
    stored = json.loads(results.read_text(encoding="utf-8"))
    for label in ("ok", "wrong", "unknown"):
        assert stored[f"dashboard.login_verify_{label}_ms_p50"] > 0
    assert stored["dashboard.login_request_ms_p50"] > 0
    assert figures == {k: v for k, v in stored.items() if k.startswith("dashboard.login_")}
