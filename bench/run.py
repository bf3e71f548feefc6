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
from pathlib import Path

from bench.goals import GOALS
from bench.results import RESULTS

BENCH = Path(__file__).parent
# Listener and catch-up first: their figures are the least disturbed by what ran before.
FIRST = ("listener_throughput", "latency", "catchup")
# A benchmark running longer than this is stopped, so `make bench` ends.
TIMEOUT = 900


def benchmarks() -> list[str]:
    """The modules of bench/ that run as scripts (helpers such as results.py do not)."""
    found = sorted(path.stem for path in BENCH.glob("*.py")
                   if path.stem != "run" and 'if __name__ == "__main__":' in path.read_text())
    return [name for name in FIRST if name in found] + [n for n in found if n not in FIRST]


def run(names: list[str]) -> list[tuple[str, float, int]]:
    """Run each benchmark (`python -m bench.NAME`); returns (name, seconds, exit status)."""
    done = []
    for name in names:
        print(f"\n=== bench.{name} ===", flush=True)
        started = time.monotonic()
        # A session of its own: a benchmark stopped for its time takes the
        # processes it started (simulated servers, readers) with it.
        proc = subprocess.Popen([sys.executable, "-m", f"bench.{name}"], cwd=BENCH.parent,
                                start_new_session=True)
        try:
            status = proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            print(f"bench.{name} stopped after {TIMEOUT} s", flush=True)
            status = -1
        done.append((name, time.monotonic() - started, status))
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
        print("\n" + "\n".join(f"bench.{name:<22} {seconds:7.1f} s"
                               + ("" if status == 0 else f"  (exit status {status})")
                               for name, seconds, status in ran))
        print(f"all benchmarks: {time.monotonic() - started:.0f} s")
        failed = [name for name, _s, status in ran if status != 0]
    try:
        results = json.loads(args.results.read_text(encoding="utf-8"))
    except FileNotFoundError:
        results = {}
    print("\n" + table(results, markdown=args.markdown))
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
