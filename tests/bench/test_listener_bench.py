"""Smoke runs of the listener benchmarks: they run, and their keys land in the
results file they are given (never bench/results.json). No figure is judged here."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from bench import catchup, listener_throughput


@pytest.mark.postgres
def test_listener_throughput_quick_records_every_key(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    listener_throughput.main(["--quick", "--events", "300", "--results", str(results)])
    figures = json.loads(results.read_text(encoding="utf-8"))
    expected = {"listener.bare_eps", "listener.sqlite_eps", "listener.pg_eps",
                "listener.ratio_sqlite", "listener.ratio_pg"}
    if importlib.util.find_spec("gerritlib") is not None:
        expected |= {"listener.gerritlib_eps", "listener.ratio_gerritlib"}
    assert set(figures) == expected
    assert all(value > 0 for value in figures.values())
    assert figures["listener.ratio_sqlite"] == pytest.approx(
        figures["listener.sqlite_eps"] / figures["listener.bare_eps"], rel=0.01)


def test_catchup_quick_queues_every_missed_upload(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    catchup.main(["--missed", "5", "--pg", "", "--results", str(results)])
    assert set(json.loads(results.read_text(encoding="utf-8"))) == {"catchup.missed_1000_s"}
