"""Orchestration overhead: a build's wall time minus the union of its steps.

    python -m bench.overhead [--pushes 3] [--quick] [--results FILE]

Runs the demo's pushes (bench/demo_latency.py: the real CI against the
simulated Gerrit and lab, one devstack-hyperv build per push) and, for each
build, subtracts from its wall time (claimed → recorded) the time covered by
at least one of its steps (overlapping steps, e.g. per-node ones, counted
once). What is left is the worker's own cost: claiming, staging and
publishing the log tree, recording the result, and the gaps between steps.

Records overhead.build_s (the median over the builds).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from bench.demo_latency import run
from bench.results import RESULTS, record


def main(argv: list[str] | None = None) -> dict[str, float | int]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pushes", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one push (a smoke run)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.pushes = 1
    overheads = run(args.pushes)["overheads"]
    if not overheads:
        raise SystemExit("no build recorded timed steps")
    overhead = statistics.median(overheads)
    print(f"orchestration overhead: median {overhead:.3f} s a build "
          f"({', '.join(f'{o:.3f}' for o in overheads)})")
    figures = {"overhead.build_s": round(overhead, 3)}
    record(figures, path=args.results)
    return figures


if __name__ == "__main__":
    main()
