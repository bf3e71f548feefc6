"""Subunit parsing, from streams of a real stestr run of the bundled tempest suite."""

from __future__ import annotations

import io
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import subunit

from runners.subunit import TestOutcome, parse_subunit, summarize
from sim.devstack import make_devstack_node

SERVERS = "tempest.api.compute.servers.test_servers.ServersTestJSON"


@pytest.fixture(scope="module")
def run_stream(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A real `stestr run --subunit` of the suite, with two tests failing on purpose."""
    base = tmp_path_factory.mktemp("subunit")
    node = make_devstack_node(base / "node", base / "lab")
    (node.lab_dir / "faults" / "tempest-fail").write_text(
        "test_list_servers\ntest_snapshot_pattern\n", encoding="utf-8")
    env = {"HYPERV_CI_LAB_DIR": str(node.lab_dir), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "stestr", "run", "--subunit"],
                          cwd=node.tempest_dir, env=env, capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr  # exits 0 despite failures: why we parse
    return proc.stdout


def test_real_run_is_parsed(run_stream: bytes) -> None:
    results = parse_subunit(run_stream)
    by_id = {r.test_id.split("[")[0]: r for r in results}
    assert len(results) == len(by_id) == 15  # one outcome per test: `exists` events dropped
    listed = by_id[f"{SERVERS}.test_list_servers"]
    assert listed.status == "fail"
    assert listed.test_id.endswith("[id-9a438d88-10c6-4bcd-8b5b-5b6e25e1346f,smoke]")
    assert "Traceback" in listed.details and "BuildErrorException" in listed.details
    assert "服务器" in listed.details  # non-ASCII survives the stream
    skip = by_id["tempest.api.compute.servers.test_server_actions.ServerActionsTestJSON"
                 ".test_get_vnc_console"]
    assert skip.status == "skip" and "RDP" in skip.details
    ok = by_id[f"{SERVERS}.test_update_server_name"]
    assert ok.status == "success" and ok.duration is not None and ok.duration > 0
    assert ok == TestOutcome(ok.test_id, "success", ok.duration, "", attempt=0)


def test_summary_of_a_run_with_failures(run_stream: bytes) -> None:
    summary = summarize(parse_subunit(io.BytesIO(run_stream)))
    assert summary.counts == {"success": 11, "fail": 2, "skip": 2}
    assert summary.total == 15 and summary.executed == 13
    assert not summary.passed
    assert sorted(f.split("[")[0].rsplit(".", 1)[1] for f in summary.failed) == [
        "test_list_servers", "test_snapshot_pattern"]
    assert summary.line() == "15 tests: 11 success, 2 fail, 2 skip"


def test_non_subunit_bytes_are_tolerated(run_stream: bytes) -> None:
    noisy = b"Running tests... \xe4\xb8\xad\xff\n" + run_stream + b"\ntrailing console noise\n"
    assert [r.status for r in parse_subunit(noisy)] == [r.status for r in parse_subunit(run_stream)]


def test_truncated_stream_cannot_pass(run_stream: bytes) -> None:
    summary = summarize(parse_subunit(run_stream[: len(run_stream) // 2 + 7]))
    assert not summary.passed
    assert summary.total < 15 or summary.counts.get("fail", 0) > 0


def test_garbage_only_is_not_a_pass() -> None:
    assert parse_subunit(b"") == []
    summary = summarize(parse_subunit(b"\xb3garbage that looks like a packet start"))
    assert not summary.passed


def _stream(*events: dict[str, object]) -> bytes:
    out = io.BytesIO()
    writer = subunit.StreamResultToBytes(out)
    for event in events:
        writer.status(**event)
    return out.getvalue()


def test_statuses_durations_and_incomplete_tests() -> None:
    t0 = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    data = _stream(
        {"test_id": "a", "test_status": "inprogress", "timestamp": t0},
        {"test_id": "a", "test_status": "xfail", "timestamp": t0 + timedelta(seconds=2.5)},
        {"test_id": "b", "test_status": "uxsuccess"},
        {"test_id": "c", "test_status": "inprogress", "timestamp": t0},  # worker died
    )
    results = {r.test_id: r for r in parse_subunit(data)}
    assert results["a"] == TestOutcome("a", "xfail", 2.5, "")
    assert results["b"].status == "uxsuccess" and results["b"].duration is None
    assert results["c"].status == "fail" and "did not complete" in results["c"].details
    summary = summarize(results.values())
    assert summary.failed == ("b", "c") and not summary.passed


def test_all_skipped_is_not_a_pass() -> None:
    data = _stream({"test_id": "s", "test_status": "skip", "file_name": "reason",
                    "file_bytes": "no Hyper-V é".encode(), "mime_type": "text/plain; charset=utf8"})
    results = parse_subunit(data)
    assert results == [TestOutcome("s", "skip", None, "no Hyper-V é")]
    assert not summarize(results).passed
    assert summarize([TestOutcome("ok", "success")]).passed



def test_real_run_reads_as_python_subunit_reads_it(run_stream: bytes, tmp_path: Path) -> None:
    """The stream stestr really writes (worker tags, route codes, exists events),
    whole, noisy and cut short: events, outcomes and files as the reference's."""
    from tests.runners.test_subunit_v2 import assert_same

    assert_same(run_stream, tmp_path / "whole")
    assert_same(b"Running \xc3\xb3 tests\n" + run_stream + b"noise", tmp_path / "noisy")
    for cut in (100, len(run_stream) // 3, len(run_stream) - 5):
        assert_same(run_stream[:cut], tmp_path / f"cut-{cut}")
