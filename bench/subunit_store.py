"""Storing a tempest run's results: 1,500 tests of a heavy subunit stream, parse to commit.

    python -m bench.subunit_store [--tests 1500] [--runs 5] [--quick] [--pg URL] [--results FILE]

The stream is tempest-shaped: every test carries its captured logging
(`pythonlogging`, ~4.5 KB of non-ASCII text), a few fail with a traceback,
a few are skipped with a reason. Timed, as the worker does it: parse with
an `AttachmentStore` (attachments written to the log tree), build the rows
(`runners.worker.test_result_rows`) and insert them in one transaction, on
SQLite (the embedded default) and PostgreSQL; medians of `--runs`.

Records subunit.store_1500_s (SQLite), subunit.store_1500_pg_s and
subunit.db_details_bytes (what the database holds of the run's details:
tracebacks and reasons only; the attachments are files) — the 1500 keys
only for a 1,500-test run.
"""

from __future__ import annotations

import argparse
import datetime
import io
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from bench.pg import ADMIN_URL, create_database, drop_database, scratch_name
from bench.results import RESULTS, record

LOGGING = ("2026-12-02 10:00:00.000 12345 DEBUG tempest.lib.common.rest_client "
           "[req-1] Request (ServersTest:test_list): 200 GET /compute/v2.1/servers 0.031s "
           "«réponse» 请求\n") * 30


def heavy_stream(tests: int) -> bytes:
    import subunit

    out = io.BytesIO()
    stream = subunit.StreamResultToBytes(out)
    now = datetime.datetime.now(datetime.UTC)
    text = "text/plain;charset=utf8"
    logging = LOGGING.encode()
    for i in range(tests):
        test_id = (f"tempest.api.compute.servers.test_servers.ServersTest{i % 40}."
                   f"test_{i}[id-{uuid.UUID(int=i)},smoke]")
        status = "fail" if i % 250 == 7 else "skip" if i % 100 == 3 else "success"
        stream.status(test_id=test_id, test_status="inprogress", timestamp=now)
        stream.status(test_id=test_id, file_name="pythonlogging", file_bytes=logging,
                      mime_type=text, eof=True, timestamp=now)
        if status == "fail":
            stream.status(test_id=test_id, file_name="traceback", mime_type=text, eof=True,
                          file_bytes=b"Traceback (most recent call last):\n  boom\n")
        if status == "skip":
            stream.status(test_id=test_id, file_name="reason", mime_type=text, eof=True,
                          file_bytes=b"Hyper-V does not support this")
        stream.status(test_id=test_id, test_status=status, timestamp=now)
    return out.getvalue()


def store_once(url: str, stream: bytes) -> tuple[float, int]:
    """Seconds from the stream's bytes to the committed rows, and the details' size."""
    from sqlalchemy import func, insert, select

    from ci import queue
    from ci.changes import ChangeInfo
    from ci.db import ensure_schema, make_engine, make_sessionmaker, transaction
    from ci.models import TestResult
    from runners.redaction import Redactor
    from runners.subunit import AttachmentStore, parse_subunit
    from runners.worker import test_result_rows

    engine = make_engine(url)
    ensure_schema(engine)
    sessions = make_sessionmaker(engine)
    with transaction(sessions) as session:
        patchset = queue.upsert_patchset(session, ChangeInfo(
            number=10001, project="openstack/nova", branch="master", patchset=1))
        build = queue.enqueue(session, patchset, "tempest", "bench")
        assert build is not None
        build_id = build.id
    redact = Redactor(["a-configured-secret"])
    with tempfile.TemporaryDirectory() as logs:
        began = time.perf_counter()
        outcomes = parse_subunit(stream, AttachmentStore(Path(logs)))
        with transaction(sessions) as session:
            session.execute(insert(TestResult),
                            test_result_rows(build_id, outcomes, redact, Path(logs)))
        took = time.perf_counter() - began
    with sessions() as session:
        size = session.scalar(select(func.sum(func.length(TestResult.details)))) or 0
    engine.dispose()
    return took, int(size)


def main(argv: list[str] | None = None) -> dict[str, float | int]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tests", type=int, default=1500)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="one run")
    parser.add_argument("--pg", default=ADMIN_URL, help="PostgreSQL admin URL")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.runs = 1
    stream = heavy_stream(args.tests)
    sqlite_s, pg_s, sizes = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):  # interleaved, a fresh database each time
            took, size = store_once(f"sqlite:///{tmp}/run-{run}.db", stream)
            sqlite_s.append(took)
            sizes.append(size)
            name = scratch_name()
            url = create_database(name, args.pg)
            try:
                pg_s.append(store_once(url, stream)[0])
            finally:
                drop_database(name, args.pg)
    print(f"{args.tests} tests ({len(stream) / 1e6:.1f} MB of subunit): SQLite "
          f"{statistics.median(sqlite_s):.3f} s, PostgreSQL {statistics.median(pg_s):.3f} s "
          f"(median of {args.runs}); details in the database: {sizes[0]:,} bytes")
    figures: dict[str, float | int] = {}
    if args.tests == 1500:
        figures = {"subunit.store_1500_s": round(statistics.median(sqlite_s), 3),
                   "subunit.store_1500_pg_s": round(statistics.median(pg_s), 3),
                   "subunit.db_details_bytes": sizes[0]}
        record(figures, path=args.results)
    return figures


if __name__ == "__main__":
    main()
