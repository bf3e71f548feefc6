"""runners/subunit_v2.py and parse_subunit against python-subunit and testtools,
the reference: every event, and every outcome and attachment file, compared
field by field on streams StreamResultToBytes writes, corrupted and not."""

from __future__ import annotations

import datetime
import io
import random
from pathlib import Path
from typing import Any

import pytest
import subunit
import testtools
from testtools.testresult import real as testtools_real

from runners.subunit import (
    STREAM_STATUSES,
    AttachmentStore,
    TestOutcome,
    _details_text,
    _kept_names,
    parse_subunit,
)
from runners.subunit_v2 import read_packets

EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
Event = tuple[Any, ...]


class _Recorder(testtools.StreamResult):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[Event] = []

    def status(self, test_id: str | None = None, test_status: str | None = None,
               test_tags: set[str] | None = None, runnable: bool = True,
               file_name: str | None = None, file_bytes: bytes | None = None,
               eof: bool = False, mime_type: str | None = None,
               route_code: str | None = None,
               timestamp: datetime.datetime | None = None) -> None:
        if test_id is None and file_name == "stdout":
            return  # the reference's non-subunit chunks: read_packets skips them
        us = None if timestamp is None else (timestamp - EPOCH) // datetime.timedelta(
            microseconds=1)
        self.events.append((test_id, test_status, test_tags and frozenset(test_tags),
                            file_name, None if file_bytes is None else bytes(file_bytes),
                            mime_type, route_code, eof, us))


def reference_events(data: bytes) -> list[Event]:
    recorder = _Recorder()
    subunit.ByteStreamToStreamResult(io.BytesIO(data), non_subunit_name="stdout").run(recorder)
    return recorder.events


def our_events(data: bytes) -> list[Event]:
    return [(p.test_id, p.status, p.tags, p.file_name,
             None if p.file_bytes is None else bytes(p.file_bytes), p.mime_type,
             p.route_code, p.eof, p.timestamp_us) for p in read_packets(data)]


def reference_outcomes(data: bytes, store: AttachmentStore | None = None) -> list[TestOutcome]:
    """parse_subunit as it was: python-subunit's parser into testtools' StreamToDict."""
    outcomes: list[TestOutcome] = []

    def on_test(test: testtools_real.TestDict) -> None:
        status = test["status"]
        if status == "exists":
            return
        every = test["details"]
        stored = ""
        if store is not None:
            kept = _kept_names(status if status in STREAM_STATUSES else "fail")
            rest = {k: v for k, v in every.items() if k not in kept}
            every = {k: v for k, v in every.items() if k in kept}
            if rest:
                stored = store.write(test["id"], rest)
        details = _details_text(every)
        if status not in STREAM_STATUSES:
            details = (details + "\n" if details else "") + "the test did not complete"
            status = "fail"
        start, stop = list(test["timestamps"])[:2]
        duration = (None if start is None or stop is None
                    else max((stop - start).total_seconds(), 0.0))
        outcomes.append(TestOutcome(test["id"], status, duration, details, attachments=stored))

    result = testtools.StreamToDict(on_test)
    result.startTestRun()
    try:
        subunit.ByteStreamToStreamResult(io.BytesIO(data), non_subunit_name="stdout").run(result)
    finally:
        result.stopTestRun()
        if store is not None:
            store.close()
    return outcomes


def assert_same(data: bytes, tmp_path: Path) -> None:
    """Events, outcomes without a store, and outcomes and files with one, alike."""
    assert our_events(data) == reference_events(data)
    assert parse_subunit(data) == reference_outcomes(data)
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    assert parse_subunit(data, AttachmentStore(ours)) == reference_outcomes(
        data, AttachmentStore(theirs))
    files = sorted(p.relative_to(ours) for p in ours.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(theirs) for p in theirs.rglob("*") if p.is_file())
    for rel in files:
        assert (ours / rel).read_bytes() == (theirs / rel).read_bytes(), rel


def rich_stream() -> bytes:
    """What real streams carry: stestr's worker tags and route codes, timestamps
    with nanoseconds, a file over several packets (the last with eof), attachments
    of 3-byte packet lengths, non-ASCII ids and text, mime types with and without
    a charset, binary, empty chunks, a test enumerated then run, one never ended."""
    out = io.BytesIO()
    w = subunit.StreamResultToBytes(out)
    t0 = datetime.datetime(2026, 12, 2, 10, 0, 0, 123456, tzinfo=datetime.UTC)
    utf8 = "text/plain;charset=utf8"
    w.status(test_tags={"global"}, timestamp=t0)  # no test id: no test
    for i in range(6):
        tid = f"tempest.api.compute.test_é{i % 2}.Servers.test_服务器_{i}[id-{i},smoke]"
        route = None if i % 3 == 0 else str(i % 3)
        tags = {f"worker-{i % 2}"}
        ts = t0 + datetime.timedelta(seconds=i, microseconds=7 * i)
        w.status(test_id=tid, test_status="exists", route_code=route)
        w.status(test_id=tid, test_status="inprogress", test_tags=tags, route_code=route,
                 timestamp=ts)
        for part in range(3):
            w.status(test_id=tid, file_name="pythonlogging", mime_type=utf8,
                     file_bytes=f"part {part} «réponse» 请求\n".encode() * (i + 1),
                     eof=part == 2, route_code=route, timestamp=ts)
        w.status(test_id=tid, file_name="stdout", file_bytes=b"", route_code=route)
        w.status(test_id=tid, file_name="big", mime_type="text/plain; charset=UTF-8",
                 file_bytes=("x" * 70 + "é\n").encode() * (300 * i), eof=True,
                 route_code=route)
        w.status(test_id=tid, file_name="latin", mime_type="text/x-log",
                 file_bytes="café".encode("latin-1"), eof=True, route_code=route)
        w.status(test_id=tid, file_name="pickle", mime_type="application/octet-stream",
                 file_bytes=bytes(range(256)), eof=True, route_code=route)
        if i == 4:
            w.status(test_id=tid, file_name="traceback", mime_type=utf8, eof=True,
                     file_bytes="Traceback: 实例 boom\n".encode(), route_code=route)
        status = ["success", "fail", "skip", "xfail", "uxsuccess", "success"][i]
        if i == 5:
            continue  # a worker died: never ended
        if status == "skip":
            w.status(test_id=tid, file_name="reason", file_bytes=b"no Hyper-V",
                     mime_type=utf8, eof=True, route_code=route)
        w.status(test_id=tid, test_status=status, test_tags=tags, route_code=route,
                 timestamp=ts + datetime.timedelta(seconds=1.5))
    w.status(test_id="bad-utf8", test_status="fail", file_name="traceback",
             mime_type=utf8, file_bytes=b"\xff\xfe not utf-8 \xe4", eof=True)
    w.status(test_id="odd-charset", test_status="fail", file_name="log",
             mime_type="text/plain;charset=no-such-charset", file_bytes=b"abc", eof=True)
    return out.getvalue()


def test_a_rich_stream_reads_as_the_reference_reads_it(tmp_path: Path) -> None:
    data = rich_stream()
    assert len(our_events(data)) > 60
    assert_same(data, tmp_path)


def test_non_subunit_bytes_are_skipped_by_the_same_rule(tmp_path: Path) -> None:
    data = rich_stream()
    # A 0xB3 inside a UTF-8 character is no packet start, nor one after an
    # invalid byte (the reference's decoder keeps a stale partial character).
    for noise in (b"plain console\n", "中文 ó ³ «»\n".encode(), b"\xe4\xb3\xb3",
                  b"\xe4A\xb8\xb3", b"\xff\xb3", b"\xc3", "é".encode() * 50):
        mixed = noise + data[:300] + noise + data[300:] + noise
        cut = data.index(b"\xb3", 400)
        mixed += data[:cut] + noise + data[cut:]
        assert_same(mixed, tmp_path / str(len(list(tmp_path.iterdir()))))


def test_truncated_streams_read_as_the_reference_reads_them(tmp_path: Path) -> None:
    data = rich_stream()[:3000]
    for cut in range(0, len(data), 7):
        truncated = data[:cut]
        assert our_events(truncated) == reference_events(truncated), cut
        assert parse_subunit(truncated) == reference_outcomes(truncated), cut
    assert_same(data[:1234], tmp_path)


def test_corrupt_packets_fail_as_the_reference_fails_them(tmp_path: Path) -> None:
    data = rich_stream()[:2500]
    rng = random.Random(14)
    compared = 0
    for pos in range(len(data)):
        for value in (data[pos] ^ 0x01, data[pos] ^ 0x80, 0xB3, 0xFF, rng.randrange(256)):
            corrupt = data[:pos] + bytes([value]) + data[pos + 1:]
            try:
                theirs = reference_events(corrupt)
            except Exception:  # struct.error on a few CRC-valid degenerate packets
                assert any(e[0] == "subunit.parser" for e in our_events(corrupt))
                continue
            assert our_events(corrupt) == theirs, (pos, value)
            compared += 1
    assert compared > 10_000
    bad_crc = bytearray(data)
    bad_crc[40] ^= 0x55
    outcomes = parse_subunit(bytes(bad_crc))
    assert outcomes[0].test_id == "subunit.parser" and outcomes[0].status == "fail"
    assert "Bad checksum" in outcomes[0].details
    assert_same(bytes(bad_crc), tmp_path)


@pytest.mark.parametrize("packet", [
    b"\xb3\x20\x00\xc0\x00\x00\x00\x00",  # a 4-byte packet length
    b"\xb3\x20\x00\x03\x00\x00",  # shorter than its own header
    b"\xb3\x20\x00\x40\x20\x00\x00",  # longer than what is left
])
def test_malformed_headers(packet: bytes, tmp_path: Path) -> None:
    data = packet + rich_stream()
    assert our_events(data) == reference_events(data)
    assert parse_subunit(data)[0].test_id == "subunit.parser"


def test_a_heavy_stream_matches_including_its_files(tmp_path: Path) -> None:
    from bench.subunit_store import heavy_stream

    assert_same(heavy_stream(120), tmp_path)


def _raw_packet(flags: int, body: bytes) -> bytes:
    """A packet as another writer may send it (python-subunit's writes whole
    microseconds): signature, flags, a 1- or 2-byte length, body, CRC32."""
    import struct
    import zlib

    size = 1 + 2 + 1 + len(body) + 4
    if size > 0x3F:
        size += 1
        length = struct.pack(">H", 0x4000 | size)
    else:
        length = bytes([size])
    head = b"\xb3" + struct.pack(">H", flags) + length + body
    return head + struct.pack(">I", zlib.crc32(head))


@pytest.mark.parametrize("nanos", [0, 999, 1500, 2500, 123_456_789, 999_999_999])
def test_nanosecond_timestamps_round_as_the_reference(nanos: int, tmp_path: Path) -> None:
    varint = (nanos | 0xC0000000).to_bytes(4, "big")
    ends = b""
    for status in (0x2, 0x3):  # inprogress, then success
        seconds = (1_800_000_000 + status).to_bytes(4, "big")
        ends += _raw_packet(0x2000 | 0x0200 | 0x0800 | status, seconds + varint + b"\x04test")
    assert our_events(ends) == reference_events(ends)
    assert parse_subunit(ends) == reference_outcomes(ends)


def test_a_checksummed_packet_too_short_for_its_fields_is_corrupt() -> None:
    """python-subunit dies on it (struct.error out of the parser); here it is a
    corrupt packet like any other, and the stream goes on."""
    import struct

    short = _raw_packet(0x2000 | 0x0800 | 0x3, b"")  # a test id announced, none there
    good = _raw_packet(0x2000 | 0x0800 | 0x3, b"\x02ok")
    with pytest.raises(struct.error):
        reference_events(short + good)
    outcomes = parse_subunit(short + good)
    assert [(o.test_id, o.status) for o in outcomes] == [("subunit.parser", "fail"),
                                                        ("ok", "success")]
    assert "varint past the end of the packet" in outcomes[0].details
