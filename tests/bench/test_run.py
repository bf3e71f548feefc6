"""bench/run.py: every benchmark has a budget, the budgets fit in `make bench`'s
15 minutes, and a benchmark over its time is stopped and the rest reported."""

from __future__ import annotations

import sys

import pytest

from bench import run


def test_every_benchmark_has_a_budget_and_they_fit_in_the_whole_run() -> None:
    names = run.benchmarks()
    assert names[:3] == list(run.FIRST)
    assert set(names) == set(run.BUDGETS)  # a new benchmark gets a budget of its own
    assert sum(run.BUDGETS.values()) <= run.TOTAL_BUDGET <= 15 * 60


def test_time_allowed_is_twice_the_budget_within_what_the_run_has_left() -> None:
    assert run.time_allowed("latency", 0) == 2 * run.BUDGETS["latency"]
    assert run.time_allowed("latency", run.TOTAL_BUDGET - 10) == 10
    assert run.time_allowed("latency", run.TOTAL_BUDGET + 5) == 0
    assert run.time_allowed("not-a-bench", 0) == 2 * run.DEFAULT_BUDGET


def test_a_benchmark_out_of_time_is_stopped_and_the_next_not_run(
        capsys: pytest.CaptureFixture[str]) -> None:
    def command(name: str) -> list[str]:
        # "slow" never ends on its own; "quick" ends at once.
        code = "import time; time.sleep(600)" if name == "slow" else "pass"
        return [sys.executable, "-c", code]

    ran = run.run(["quick", "slow", "after"], total=3, command=command)
    assert [(r.name, r.status) for r in ran] == [("quick", 0), ("slow", -1), ("after", None)]
    lines = [r.line() for r in ran]
    assert "stopped for its time" in lines[1] and "OVER BUDGET" not in lines[0]
    assert "not run: out of time" in lines[2]
    assert "bench.slow stopped after" in capsys.readouterr().out


def test_the_table_marks_goals_met_and_not_measured() -> None:
    shown = run.table({"latency.event_to_queued_p99_ms": 1.0})
    assert "latency.event_to_queued_p99_ms" in shown
    assert "not measured" in shown  # every other goal
