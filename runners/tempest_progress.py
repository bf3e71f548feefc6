"""Live tempest progress: the subunit streams read while tempest still writes them.

tempest.sh sends `tempest run --subunit` into files on the controller
(`parallel.subunit`, then `serial.subunit`; `rerun-N.subunit` for a re-run),
and the worker only downloads them when the run is over. Meanwhile a
`ProgressWatcher` thread reads what each file gained (SFTP, from the last
offset) about once a second, cuts the bytes into whole subunit v2 packets and
counts the test events in them; the counts go into the step's row, which the
dashboard shows. It is a view only: the verdict still comes from the full
streams once tempest is done (runners/tempest_step.py), and a failed read
never fails the step.

A subunit v2 packet (python-subunit's `subunit/v2.py`, the "Version 2"
section of its README): the signature byte 0xB3, two bytes of flags, then
the packet's whole length (signature and CRC included) as a variable-length
number of 1-3 bytes whose top two bits say how many more bytes follow.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import subunit
import testtools

logger = logging.getLogger(__name__)

SIGNATURE = 0xB3
POLL_SECONDS = 1.0  # the step row is written at most this often
READ_LIMIT = 4 * 1024 * 1024  # bytes read from one file per poll
CURRENT_TEST_CHARS = 1000
_PASSING = frozenset({"success", "xfail"})
_FAILING = frozenset({"fail", "uxsuccess"})
_ENDED = frozenset({"success", "fail", "skip", "xfail", "uxsuccess"})


@dataclass(frozen=True)
class Progress:
    """Tests ended so far (skips included), how many passed and failed, the one running."""

    done: int = 0
    passed: int = 0
    failed: int = 0
    current: str | None = None

    def columns(self) -> dict[str, Any]:
        """The step row's columns (ci.models.BuildStep) holding this progress."""
        return {"tests_done": self.done, "tests_passed": self.passed,
                "tests_failed": self.failed, "current_test": self.current}


def packet_length(buffer: bytes | bytearray) -> int | None:
    """The length of the subunit v2 packet starting at buffer[0], or None when the
    bytes that say it have not all arrived yet."""
    if len(buffer) < 4:
        return None
    first = buffer[3]
    more = first >> 6  # 0: 1 byte, 1: 2 bytes, 2: 3 bytes (3 is not allowed here)
    if len(buffer) < 4 + more:
        return None
    value = first & 0x3F
    for byte in buffer[4:4 + more]:
        value = (value << 8) | byte
    return value


def take_complete(buffer: bytearray) -> bytes:
    """Remove and return the longest prefix of `buffer` made of whole packets (and of
    any non-subunit bytes before the next signature); a torn packet stays."""
    end = 0
    while end < len(buffer):
        if buffer[end] != SIGNATURE:
            # Not subunit (a stray print): up to the next signature, as the parser
            # itself takes such bytes (ByteStreamToStreamResult's non_subunit_name).
            found = buffer.find(bytes([SIGNATURE]), end)
            end = len(buffer) if found == -1 else found
            continue
        length = packet_length(buffer[end:end + 8])
        if length is None or length < 6 or end + length > len(buffer):
            break
        end += length
    complete = bytes(buffer[:end])
    del buffer[:end]
    return complete


class TestCounter(testtools.StreamResult):
    """Counts test events of one or more streams into a `Progress` (thread-safe).

    In a re-run (`rerun=True`), a test that failed before and now passes moves
    from failed to passed, as the final verdict counts it (flaky, not failed).
    """

    __test__ = False  # not a pytest class

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._done = self._passed = self._failed = 0
        self._failed_ids: set[str] = set()
        self._running: dict[str, None] = {}  # insertion-ordered: the newest last
        self.rerun = False

    def status(self, test_id: str | None = None, test_status: str | None = None,
               test_tags: set[str] | None = None, runnable: bool = True,
               file_name: str | None = None, file_bytes: bytes | None = None,
               eof: bool = False, mime_type: str | None = None,
               route_code: str | None = None, timestamp: datetime | None = None) -> None:
        if test_id is None or test_status is None:
            return  # a file attachment alone, or the stream's own "stdout"
        with self._lock:
            if test_status == "inprogress":
                self._running.pop(test_id, None)
                self._running[test_id] = None
                return
            if test_status not in _ENDED:
                return  # "exists": the enumeration both producers send first
            self._running.pop(test_id, None)
            if self.rerun:
                if test_status in _PASSING and test_id in self._failed_ids:
                    self._failed_ids.discard(test_id)
                    self._failed -= 1
                    self._passed += 1
                return
            self._done += 1
            if test_status in _PASSING:
                self._passed += 1
            elif test_status in _FAILING:
                self._failed += 1
                self._failed_ids.add(test_id)

    def forget_running(self) -> None:
        """A stream is over: a test it left in progress is not running any more."""
        with self._lock:
            self._running.clear()

    def progress(self) -> Progress:
        with self._lock:
            current = next(reversed(self._running), None)
            return Progress(self._done, self._passed, self._failed,
                            current[:CURRENT_TEST_CHARS] if current else None)


class StreamFeed:
    """One growing stream file: bytes in, whole packets to the counter."""

    def __init__(self, counter: TestCounter) -> None:
        self.counter = counter
        self.offset = 0
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self.offset += len(data)
        self._buffer += data
        complete = take_complete(self._buffer)
        if complete:
            subunit.ByteStreamToStreamResult(
                _Bytes(complete), non_subunit_name="stdout").run(self.counter)


class _Bytes:
    """The file-like source ByteStreamToStreamResult reads (it calls read(1) and read(n))."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._data) if size < 0 else self._pos + size
        chunk = bytes(self._data[self._pos:end])
        self._pos += len(chunk)
        return chunk


class RemoteReader(Protocol):
    """Reads part of a file on the node: runners.ssh.SSHExecutor.read_from."""

    def read_from(self, remote_path: str, offset: int, limit: int) -> bytes | None: ...


class ProgressWatcher:
    """While a tempest run lasts (a `with` block), follow its stream files and publish.

    `paths` are read in order on each poll (tempest.sh writes them one after
    the other); `publish` gets the progress each time it changed, at most
    once per `interval`, and once more when the block ends.
    """

    def __init__(self, reader: RemoteReader, paths: Sequence[str], counter: TestCounter,
                 publish: Callable[[Progress], None], interval: float = POLL_SECONDS) -> None:
        self.reader = reader
        self.feeds = {path: StreamFeed(counter) for path in paths}
        self.counter = counter
        self.publish = publish
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tempest-progress", daemon=True)
        self._published: Progress | None = None
        self._warned = False

    def __enter__(self) -> ProgressWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()  # what arrived since the last poll
        self.counter.forget_running()
        self._publish()

    def _loop(self) -> None:
        while True:
            self.poll()
            self._publish()
            if self._stop.wait(self.interval):
                return

    def poll(self) -> None:
        """Read what every stream file gained since the last poll."""
        for path, feed in self.feeds.items():
            try:
                data = self.reader.read_from(path, feed.offset, READ_LIMIT)
                if data:
                    feed.feed(data)
            except Exception as exc:  # a view only: the run goes on without it
                if not self._warned:
                    logger.warning("live tempest progress: cannot read %s: %s", path, exc)
                    self._warned = True

    def _publish(self) -> None:
        progress = self.counter.progress()
        if progress == self._published:
            return
        try:
            self.publish(progress)
            self._published = progress
        except Exception:  # the database hiccupped: the next poll tries again
            logger.exception("live tempest progress: cannot record it")
