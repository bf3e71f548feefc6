"""What matching known-failure signatures costs a failed build (ci/signatures.py).

    python -m bench.signatures [--quick] [--results FILE]

In a temporary log tree: a big plain log, the same log gzipped, and a
failed build of many tests. Figures (median of `--repeat` runs):

- signatures.log_tail_ms: 20 log signatures over the 1 MiB tail of a 64 MiB
  log (the scan bound: the cost does not follow the log's size);
- signatures.log_gz_ms: the same over the gzipped log (a .gz must be read
  through to its end: this one does follow the size);
- signatures.catastrophic_ms: `(a+)+$`, exponential for a backtracking
  engine, over 1 MiB of lines of `a`s ending in `b` (RE2: linear);
- signatures.tests_ms: 20 test/traceback signatures over 1,500 failed tests.
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.results import RESULTS, record
from ci.signatures import SCAN_BYTES, FailedTest, match_failures, parse_signatures

BUG = "https://bugs.launchpad.net/nova/+bug/1"
LINE = "2026-12-01 12:00:00.000 1234 INFO nova.compute.manager [req-x] 实例 instance-00000001 ok\n"


def _median_ms(repeat: int, action: Callable[[], object]) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        samples.append(time.perf_counter() - start)
    return round(statistics.median(samples) * 1000, 1)


def _write_log(path: Path, size: int) -> None:
    block = LINE * 1000
    with path.open("w", encoding="utf-8") as handle:
        written = 0
        while written < size:
            handle.write(block)
            written += len(block.encode("utf-8"))


def run(*, log_mib: int, tests: int, repeat: int, results: Path) -> dict[str, float]:
    log_rules = parse_signatures([
        {"id": f"log-{n}", "bug": BUG, "file": name, "pattern": f"Timed out waiting for vm-{n} .*"}
        for n in range(20) for name in ["n-cpu.log"]], "bench")
    gz_rules = parse_signatures([
        {"id": f"gz-{n}", "bug": BUG, "file": "n-cpu-gz.log", "pattern": f"vm-{n} .* failed"}
        for n in range(20)], "bench")
    test_rules = parse_signatures([
        {"id": f"t-{n}", "bug": BUG, "test": f"test_case_{n}$", "traceback": "could not .* 实例"}
        for n in range(20)], "bench")
    evil = parse_signatures([{"id": "evil", "bug": BUG, "file": "aaa.log",
                              "pattern": "(a+)+$"}], "bench")
    failed = [FailedTest(f"tempest.api.x.T.test_case_{n}",
                         "Traceback (most recent call last):\n" + "  frame\n" * 40 +
                         "BuildErrorException: could not be scheduled 实例")
              for n in range(tests)]
    with tempfile.TemporaryDirectory(prefix="bench-signatures-") as tmp:
        logs = Path(tmp)
        _write_log(logs / "n-cpu.log", log_mib * 1024 * 1024)
        with (logs / "n-cpu.log").open("rb") as src, gzip.open(logs / "n-cpu-gz.log.gz",
                                                               "wb", compresslevel=1) as dst:
            while chunk := src.read(1024 * 1024):
                dst.write(chunk)
        (logs / "aaa.log").write_text(("a" * 4000 + "b\n") * 256, encoding="utf-8")
        one = failed[:1]
        figures = {
            "signatures.log_tail_ms": _median_ms(
                repeat, lambda: match_failures(log_rules, one, logs, SCAN_BYTES)),
            "signatures.log_gz_ms": _median_ms(
                repeat, lambda: match_failures(gz_rules, one, logs, SCAN_BYTES)),
            "signatures.catastrophic_ms": _median_ms(
                repeat, lambda: match_failures(evil, one, logs, SCAN_BYTES)),
            "signatures.tests_ms": _median_ms(
                repeat, lambda: match_failures(test_rules, failed, None)),
        }
    record(figures, path=results)
    for key, value in figures.items():
        print(f"{key:32} {value:>10.1f}")
    return figures


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small inputs (a smoke test)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        return run(log_mib=2, tests=50, repeat=1, results=args.results)
    return run(log_mib=64, tests=1500, repeat=args.repeat, results=args.results)


if __name__ == "__main__":
    main()
