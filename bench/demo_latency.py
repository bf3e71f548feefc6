"""Push to vote in the demo: the whole CI against the simulated Gerrit and lab.

    python -m bench.demo_latency [--pushes 10] [--quick] [--results FILE]

Starts `hyperv-ci demo` in this process (ci/app/demo.py: the real listener,
scheduler, worker, reporter and dashboard, the simulated Gerrit over SSH and
the simulated devstack and Hyper-V nodes), pushes a change touching the
Hyper-V driver, waits for its Verified vote in the simulated Gerrit, then
the next one (one at a time: what is measured is latency, not a queue).
Each push is timed from the upload to the review's arrival; the phases
come from the build's row: event → queued, queued → started, the build,
finished → vote.

Records demo.push_to_vote_p50_s. bench/overhead.py runs the same pushes
for the orchestration overhead of the builds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.results import RESULTS, record

ROOT = Path(__file__).resolve().parents[1]
BRANCH = "unmaintained/2023.1"  # where etc/demo.yaml watches nova's Hyper-V driver
HV_FILE = "nova/virt/hyperv/vmops.py"


def union_seconds(intervals: Sequence[tuple[datetime, datetime]]) -> float:
    """Seconds covered by the union of [start, end] intervals (overlaps counted once)."""
    total, end = 0.0, None
    start: datetime | None = None
    for lo, hi in sorted(intervals):
        if end is None or lo > end:
            if start is not None and end is not None:
                total += (end - start).total_seconds()
            start, end = lo, hi
        elif hi > end:
            end = hi
    if start is not None and end is not None:
        total += (end - start).total_seconds()
    return total


def build_overhead(build: Any) -> float | None:
    """A build's wall time minus the union of its steps (None if it has no timing)."""
    steps = [(s.started_at, s.finished_at) for s in build.steps
             if s.started_at is not None and s.finished_at is not None]
    if build.started_at is None or build.finished_at is None or not steps:
        return None
    wall = (build.finished_at - build.started_at).total_seconds()
    return max(wall - union_seconds(steps), 0.0)


def wait_for_vote(gerrit: Any, change: int, timeout: float) -> float:
    """The time a review of `change` arrived (polls the simulator's record)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(r.get("change") == change for r in gerrit.state.reviews()):
            return time.monotonic()
        time.sleep(0.01)
    raise SystemExit(f"no vote on change {change} within {timeout:.0f} s")


def run(pushes: int) -> dict[str, Any]:
    from sqlalchemy import select
    from sqlalchemy.orm import selectinload

    from ci.app.demo import Demo
    from ci.db import make_engine, make_sessionmaker
    from ci.models import Build, Change, Patchset

    latencies: list[float] = []
    voted_at: dict[int, float] = {}  # change -> wall-clock time its vote arrived
    with tempfile.TemporaryDirectory() as state:
        demo = Demo(ROOT / "etc" / "demo.yaml", Path(state), dashboard_port=0)
        config = demo.start()
        try:
            assert demo.gerrit is not None
            changes = []
            for i in range(pushes):
                pushed = time.monotonic()
                out = demo.gerrit.state.push("openstack/nova", BRANCH, files=[HV_FILE],
                                             subject=f"Hyper-V : réglage {i}", owner="张伟")
                voted = wait_for_vote(demo.gerrit, out["change"], timeout=300)
                latencies.append(voted - pushed)
                voted_at[out["change"]] = time.time() - (time.monotonic() - voted)
                changes.append(out["change"])
                print(f"push {i + 1}/{pushes}: change {out['change']} voted after "
                      f"{voted - pushed:.2f} s", flush=True)
            engine = make_engine(config.database.sqlalchemy_url())
            with make_sessionmaker(engine)() as session:
                builds = list(session.scalars(
                    select(Build).join(Patchset).join(Change)
                    .where(Change.number.in_(changes))
                    .options(selectinload(Build.steps),
                             selectinload(Build.patchset).selectinload(Patchset.change))))
                phases = [phase_times(b, voted_at[b.patchset.change.number]) for b in builds]
                steps = [step_spans(b) for b in builds]
                overheads = [o for o in (build_overhead(b) for b in builds) if o is not None]
            engine.dispose()
        finally:
            demo.stop()
    return {"latencies": latencies, "phases": phases, "overheads": overheads, "steps": steps}


def step_spans(build: Any) -> dict[str, tuple[float, float]]:
    """Each step name's (start, end) in seconds from the build's start: from the first
    node's start to the last node's end (per-node steps run side by side)."""
    spans: dict[str, tuple[float, float]] = {}
    if build.started_at is None:
        return spans
    for step in build.steps:
        if step.started_at is None or step.finished_at is None:
            continue
        lo = (step.started_at - build.started_at).total_seconds()
        hi = (step.finished_at - build.started_at).total_seconds()
        old = spans.get(step.name)
        spans[step.name] = (min(lo, old[0]), max(hi, old[1])) if old else (lo, hi)
    return spans


def print_steps(steps: Sequence[dict[str, tuple[float, float]]]) -> None:
    """The median start, end and length of each step, in the order they start."""
    names = {name for build in steps for name in build}
    rows = []
    for name in names:
        spans = [build[name] for build in steps if name in build]
        rows.append((statistics.median(s[0] for s in spans),
                     statistics.median(s[1] for s in spans),
                     statistics.median(s[1] - s[0] for s in spans), name))
    for start, end, length, name in sorted(rows):
        print(f"    {name:18} +{start:6.3f} → +{end:6.3f}  {length:6.3f} s")


def phase_times(build: Any, voted: float) -> dict[str, float]:
    def gap(a: datetime | None, b: datetime | None) -> float:
        return (b - a).total_seconds() if a and b else float("nan")

    finished = build.finished_at.timestamp() if build.finished_at else float("nan")
    return {"queued_to_started": gap(build.created_at, build.started_at),
            "build": gap(build.started_at, build.finished_at),
            "finished_to_vote": voted - finished}


def main(argv: list[str] | None = None) -> dict[str, float | int]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pushes", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="one push (a smoke run)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.pushes = 1
    result = run(args.pushes)
    p50 = statistics.median(result["latencies"])
    for name in ("queued_to_started", "build", "finished_to_vote"):
        values = [p[name] for p in result["phases"]]
        print(f"  {name}: median {statistics.median(values):.3f} s")
    print("  the build's steps (medians, seconds from the build's start):")
    print_steps(result["steps"])
    print(f"push → vote: median {p50:.2f} s of {args.pushes}")
    figures = {"demo.push_to_vote_p50_s": round(p50, 3)}
    record(figures, path=args.results)
    return figures


if __name__ == "__main__":
    main()
