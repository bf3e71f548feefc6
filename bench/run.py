"""`make bench`: run every benchmark, then print every figure beside its goal.

    python -m bench.run [--only NAME ...] [--table] [--markdown]

Runs each benchmark module of bench/ (any module that runs as a script),
one after another in its own process, then prints one table of every key in
bench/results.json with its goal (bench/goals.py) and whether it is met.
`--table` prints the table of the figures already recorded, running nothing;
`--markdown` prints it as a Markdown table (the README's). Figures come from
one machine (2 cores here): compare them run to run on the same machine.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.goals import GOALS
from bench.results import RESULTS

BENCH = Path(__file__).parent
# Listener and catch-up first: their figures are the least disturbed by what ran before.
FIRST = ("listener_throughput", "latency", "catchup")
# `make bench` ends within 15 minutes: after this many seconds (the rest is for pip
# and the table) the benchmark running is stopped and the ones after it are not run.
TOTAL_BUDGET = 840
# Each benchmark's time on this 2-core machine from a fresh one, with headroom
# (measured 2026-12-02, load average 4 to 13: docs/benchmarks.md); the dashboard
# seeds the database history measures too. The listener's is set by gerritlib's
# anchor (3 x 50,000 events at ~900/s on a slower 2-core machine: 262 s in all).
# A benchmark over its budget is reported, one over twice its budget stopped, so
# one slow benchmark cannot starve the others.
BUDGETS = {
    "listener_throughput": 150, "latency": 40, "catchup": 55, "claims": 40,
    "dashboard": 200, "demo_latency": 90, "history": 60, "lab_check": 12, "login": 45,
    "overhead": 40, "provision": 10, "signatures": 10, "subunit_store": 10,
    "winrm_transfer": 15,
}
DEFAULT_BUDGET = 60  # a benchmark added without a budget of its own


@dataclass(frozen=True)
class Ran:
    """One benchmark's run: how long it took against its budget, and how it ended."""

    name: str
    seconds: float
    budget: float
    status: int | None  # None: not run (no time left); -1: stopped for its time

    def line(self) -> str:
        if self.status is None:
            return (f"bench.{self.name:<22}       -    (budget {self.budget:.0f} s)"
                    "  not run: out of time")
        note = "" if self.seconds <= self.budget else "  OVER BUDGET"
        if self.status == -1:
            note += "  stopped for its time"
        elif self.status != 0:
            note += f"  (exit status {self.status})"
        return f"bench.{self.name:<22} {self.seconds:7.1f} s  (budget {self.budget:.0f} s){note}"


def budget_of(name: str) -> float:
    return BUDGETS.get(name, DEFAULT_BUDGET)


def time_allowed(name: str, elapsed: float, total: float = TOTAL_BUDGET) -> float:
    """Seconds `name` may run once `elapsed` of the whole run is spent (0: do not start it)."""
    return max(0.0, min(2 * budget_of(name), total - elapsed))


def benchmarks() -> list[str]:
    """The modules of bench/ that run as scripts (helpers such as results.py do not)."""
    found = sorted(path.stem for path in BENCH.glob("*.py")
                   if path.stem != "run" and 'if __name__ == "__main__":' in path.read_text())
    return [name for name in FIRST if name in found] + [n for n in found if n not in FIRST]


def command(name: str) -> list[str]:
    return [sys.executable, "-m", f"bench.{name}"]


def run(names: list[str], *, total: float = TOTAL_BUDGET,
        command: Callable[[str], list[str]] = command) -> list[Ran]:
    """Run each benchmark (`python -m bench.NAME`) within its time and the whole run's."""
    done = []
    started = time.monotonic()
    for name in names:
        allowed = time_allowed(name, time.monotonic() - started, total)
        if allowed <= 0:
            done.append(Ran(name, 0.0, budget_of(name), None))
            continue
        print(f"\n=== bench.{name} (budget {budget_of(name):.0f} s) ===", flush=True)
        began = time.monotonic()
        # A session of its own: a benchmark stopped for its time takes the
        # processes it started (simulated servers, readers) with it.
        proc = subprocess.Popen(command(name), cwd=BENCH.parent, start_new_session=True)
        try:
            status = proc.wait(timeout=allowed)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            print(f"bench.{name} stopped after {allowed:.0f} s", flush=True)
            status = -1
        done.append(Ran(name, time.monotonic() - began, budget_of(name), status))
    return done


def table(results: dict[str, float], *, markdown: bool = False) -> str:
    """Every figure with its goal and whether it is met (goals without a figure too)."""
    rows = []
    for key in sorted(set(results) | set(GOALS)):
        goal = GOALS.get(key)
        value = results.get(key)
        shown = "not measured" if value is None else f"{value:g}"
        verdict = ("" if goal is None else "not measured" if value is None
                   else "met" if goal.met(value) else "NOT met")
        rows.append((key, shown, str(goal) if goal else "", verdict))
    if markdown:
        lines = ["| figure | value | goal | |", "|---|---|---|---|"]
        lines += [f"| `{k}` | {v} | {g} | {m} |" for k, v, g, m in rows]
        return "\n".join(lines)
    width = max(len(r[0]) for r in rows)
    lines = [f"{'figure':<{width}}  {'value':>12}  {'goal':<8}  "]
    lines += [f"{k:<{width}}  {v:>12}  {g:<8}  {m}" for k, v, g, m in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="these benchmarks only")
    parser.add_argument("--table", action="store_true", help="print the table, run nothing")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    failed = []
    if not args.table:
        started = time.monotonic()
        ran = run(args.only or benchmarks())
        print("\n" + "\n".join(r.line() for r in ran))
        print(f"all benchmarks: {time.monotonic() - started:.0f} s "
              f"(budget {TOTAL_BUDGET} s; their budgets add up to "
              f"{sum(r.budget for r in ran):.0f} s)")
        failed = [r.name for r in ran if r.status != 0]
    try:
        results = json.loads(args.results.read_text(encoding="utf-8"))
    except FileNotFoundError:
        results = {}
    print("\n" + table(results, markdown=args.markdown))
    if failed:
        print(f"\nfailed or not run: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
