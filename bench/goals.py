"""The goal of every benchmark figure (issue 14 and the dashboard issue), in one table.

`make bench` prints each figure of bench/results.json beside its goal and
whether it is met; a figure without a goal here is shown for information.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Goal:
    """`figure <op> target`, e.g. at least 0.75, at most 50 ms, exactly 0."""

    op: str  # ">=", "<=" or "=="
    target: float
    meaning: str

    def met(self, value: float) -> bool:
        return _OPS[self.op](value, self.target)

    def __str__(self) -> str:
        symbol = {">=": "≥", "<=": "≤", "==": "="}[self.op]
        return f"{symbol} {self.target:g}"


_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, "==": operator.eq}

GOALS: dict[str, Goal] = {
    "listener.ratio_sqlite": Goal(">=", 0.75, "Listener on SQLite ÷ the bare paramiko reader"),
    "listener.ratio_pg": Goal(">=", 0.5, "Listener on PostgreSQL ÷ the bare paramiko reader"),
    "listener.ratio_gerritlib": Goal(">=", 12, "Listener on SQLite ÷ gerritlib's watcher"),
    "latency.event_to_queued_p99_ms": Goal("<=", 50, "Gerrit's event sent → build queued"),
    "catchup.missed_1000_s": Goal("<=", 2, "1,000 missed uploads queued after a restart"),
    "catchup.missed_1000_pg_s": Goal("<=", 2, "the same on PostgreSQL"),
    "demo.push_to_vote_p50_s": Goal("<=", 2, "push → vote in the simulated lab"),
    "claims.pg_8_workers_per_s": Goal(">=", 200, "claims/s, 8 workers, PostgreSQL"),
    "claims.double": Goal("==", 0, "builds claimed twice"),
    "subunit.store_1500_s": Goal("<=", 0.5, "storing 1,500 test results"),
    "overhead.build_s": Goal("<=", 2, "build wall time beyond its steps"),
    "dashboard.status_json_p95_ms": Goal("<=", 50, "/api/status at 100k builds"),
    "dashboard.page_p95_ms_max": Goal("<=", 200, "slowest dashboard page at 100k builds"),
}
