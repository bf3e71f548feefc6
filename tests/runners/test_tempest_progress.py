"""The live tempest progress: subunit v2 bytes cut anywhere count the same as whole."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import subunit

from runners.tempest_progress import (
    Progress,
    ProgressWatcher,
    StreamFeed,
    TestCounter,
    packet_length,
    take_complete,
)

NOW = datetime(2026, 12, 1, tzinfo=UTC)
TESTS = [("tempest.api.compute.test_ok", "success"),
         ("tempest.api.compute.test_实例[id-1,smoke]", "fail"),
         ("tempest.api.network.test_skipped", "skip"),
         ("tempest.scenario.test_big", "success")]


def stream(tests: list[tuple[str, str]] = TESTS, *, running: str | None = None,
           big: int = 0) -> bytes:
    """A subunit v2 stream as stestr writes it: exists, inprogress, the end, per test."""
    out = io.BytesIO()
    writer = subunit.StreamResultToBytes(out)
    for test_id, _ in tests:
        writer.status(test_id=test_id, test_status="exists", timestamp=NOW)
    for test_id, status in tests:
        writer.status(test_id=test_id, test_status="inprogress", timestamp=NOW)
        # A long traceback makes packets with 2- and 3-byte lengths.
        writer.status(test_id=test_id, test_status=status, timestamp=NOW,
                      file_name="traceback", file_bytes=("x" * big).encode(),
                      mime_type="text/plain;charset=utf8")
    if running:
        writer.status(test_id=running, test_status="inprogress", timestamp=NOW)
    return out.getvalue()


def counted(data: bytes, piece: int) -> Progress:
    counter = TestCounter()
    feed = StreamFeed(counter)
    for start in range(0, len(data), piece):
        feed.feed(data[start:start + piece])
    return counter.progress()


def test_whole_packets_only_and_lengths_of_every_size() -> None:
    data = stream(big=70_000)
    buffer = bytearray(data[:-1])
    complete = take_complete(buffer)
    assert data.startswith(complete) and len(complete) + len(buffer) == len(data) - 1
    assert buffer and packet_length(buffer) == len(buffer) + 1  # the torn last packet waits
    assert packet_length(b"\xb3\x00") is None  # its length has not arrived yet


def test_a_stream_cut_anywhere_counts_as_the_whole_one() -> None:
    data = stream(big=300, running="tempest.api.compute.test_now_运行")
    whole = Progress(done=4, passed=2, failed=1, current="tempest.api.compute.test_now_运行")
    assert counted(data, len(data)) == whole
    for piece in (1, 2, 3, 7, 64, 1000):
        assert counted(data, piece) == whole, piece


def test_non_subunit_bytes_between_packets_are_skipped() -> None:
    data = stream()
    noisy = b"warning: \xff not subunit\n" + data[:40] + data[40:]
    assert counted(noisy, 5).done == 4


def test_a_re_run_moves_a_passing_test_from_failed_to_passed() -> None:
    counter = TestCounter()
    StreamFeed(counter).feed(stream())
    counter.rerun = True
    StreamFeed(counter).feed(stream([("tempest.api.compute.test_实例[id-1,smoke]", "success")]))
    assert counter.progress() == Progress(done=4, passed=3, failed=1 - 1)


class GrowingFiles:
    """Remote files that grow between polls (SSHExecutor.read_from's contract)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}

    def read_from(self, remote_path: str, offset: int, limit: int) -> bytes | None:
        data = self.files.get(remote_path)
        return None if data is None else data[offset:offset + limit]


def test_the_watcher_follows_files_in_order_and_publishes_changes_only() -> None:
    files = GrowingFiles()
    published: list[Progress] = []
    counter = TestCounter()
    watcher = ProgressWatcher(files, ["parallel", "serial"], counter, published.append,
                              interval=3600)  # polled by hand below
    first, second = stream(TESTS[:2]), stream(TESTS[2:], running="tempest.x")
    files.files["parallel"] = first[: len(first) // 2]
    watcher.poll()
    files.files["parallel"] = first
    watcher.poll()
    watcher._publish()
    watcher._publish()  # nothing new: not written again
    files.files["serial"] = second
    with watcher:
        pass  # the block's end reads what is left and publishes once more
    # (its thread may publish too, at once: the serial test still running)
    assert published[0] == Progress(2, 1, 1, None)
    assert published[-1] == Progress(4, 2, 1, None)
    assert published[1:-1] in ([], [Progress(4, 2, 1, "tempest.x")])
