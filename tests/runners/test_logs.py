"""Publishing logs: secrets redacted everywhere, big files gzipped, indexes written, retention."""

from __future__ import annotations

import gzip
import io
import os
import time
from pathlib import Path
from urllib.parse import quote

import subunit

from runners.logs import WITHHELD, prune_logs, publish_logs, redact_file
from runners.steps import REDACTED, make_redactor
from runners.subunit import parse_subunit

SECRET = "Pa55-w0rd!"


def test_publish_redacts_compresses_and_indexes(tmp_path: Path) -> None:
    root = tmp_path / "10001" / "1" / "job-1"
    (root / "hv-1").mkdir(parents=True)
    (root / "controller").mkdir()
    (root / "hv-1" / "nova.conf").write_text(
        f"[DEFAULT]\ntransport_url = rabbit://stackrabbit:{SECRET}@10.0.0.1:5672/\n",
        encoding="utf-8")
    (root / "controller" / "big.log").write_text(
        ("实例 Zoë line\n" * 2000) + f"password={SECRET}\n", encoding="utf-8")
    already = root / "controller" / "old.log.gz"
    already.write_bytes(gzip.compress(f"token {SECRET}\n".encode()))
    (root / "hv-1" / "image.bin").write_bytes(b"\x00\x01" + SECRET.encode())

    publish_logs(root, make_redactor([SECRET]), gzip_over=10_000)

    nova = (root / "hv-1" / "nova.conf").read_text(encoding="utf-8")
    assert SECRET not in nova and REDACTED in nova
    assert not (root / "controller" / "big.log").exists()
    big = gzip.decompress((root / "controller" / "big.log.gz").read_bytes()).decode("utf-8")
    assert SECRET not in big and "实例 Zoë line" in big
    assert SECRET not in gzip.decompress(already.read_bytes()).decode()
    index = (root / "index.html").read_text(encoding="utf-8")
    assert 'href="controller/index.html"' in index and 'href="hv-1/index.html"' in index
    assert "big.log.gz" in (root / "controller" / "index.html").read_text(encoding="utf-8")
    # Every published file is clean.
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            if path.suffix == ".gz":
                data = gzip.decompress(data)
            assert SECRET.encode() not in data, path


def test_utf16_text_is_redacted_and_stays_utf16(tmp_path: Path) -> None:
    # Windows writes many logs as UTF-16LE with a BOM: NUL bytes everywhere.
    path = tmp_path / "hv-1" / "setup.log"
    path.parent.mkdir()
    text = f"Zoë 实例 line\r\nrabbit://u:{quote(SECRET, safe='')}@h/\r\npassword={SECRET}\r\n"
    path.write_bytes(b"\xff\xfe" + text.encode("utf-16-le"))

    publish_logs(tmp_path, make_redactor([SECRET]), gzip_over=10_000)

    data = path.read_bytes()
    assert data.startswith(b"\xff\xfe")
    clean = data[2:].decode("utf-16-le")  # strict: still valid UTF-16
    assert SECRET not in clean and quote(SECRET, safe="") not in clean
    assert clean == (f"Zoë 实例 line\r\nrabbit://u:{REDACTED}@h/\r\n"
                     f"password={REDACTED}\r\n")


def test_big_endian_utf16_is_redacted_too(tmp_path: Path) -> None:
    path = tmp_path / "be.log"
    path.write_bytes(b"\xfe\xff" + f"token {SECRET}\n".encode("utf-16-be"))
    assert redact_file(path, make_redactor([SECRET]))
    assert path.read_bytes() == b"\xfe\xff" + f"token {REDACTED}\n".encode("utf-16-be")


def test_binary_with_a_secret_is_withheld(tmp_path: Path) -> None:
    redact = make_redactor([SECRET])
    # No NUL byte, not UTF-8: the old text path would have rewritten it.
    utf8 = tmp_path / "dump.bin"
    utf8.write_bytes(b"\xb3\x29\x01" + SECRET.encode() + b"\xff\xfe\x80")
    evtx = tmp_path / "System.evtx"
    evtx.write_bytes(b"ElfFile\x00\x80\xf3" + bytes(100) + SECRET.encode("utf-16-le") + bytes(50))
    # Strictly UTF-8 (NULs are), with the secret in UTF-16: the redactor drops NULs
    # (the database refuses them), which lays the secret bare to be masked.
    padded = tmp_path / "padded.log"
    padded.write_bytes(b"log line\n" + bytes(64) + SECRET.encode("utf-16-le"))
    packed = tmp_path / "blob.bin.gz"
    packed.write_bytes(gzip.compress(b"\x00\x9f" + SECRET.encode()))

    publish_logs(tmp_path, redact, gzip_over=10_000)

    assert utf8.read_text(encoding="utf-8") == WITHHELD
    assert evtx.read_text(encoding="utf-8") == WITHHELD
    assert padded.read_text(encoding="utf-8") == "log line\n" + REDACTED
    assert gzip.decompress(packed.read_bytes()).decode("utf-8") == WITHHELD


def test_binary_without_a_secret_is_untouched(tmp_path: Path) -> None:
    blob = bytes(range(256)) * 40 + "no secret, Zoë".encode("utf-16-le")
    path = tmp_path / "disk.vhdx"
    path.write_bytes(blob)
    publish_logs(tmp_path, make_redactor([SECRET]), gzip_over=1_000_000)
    assert path.read_bytes() == blob


def _subunit_stream(details: str) -> bytes:
    out = io.BytesIO()
    writer = subunit.StreamResultToBytes(out)
    for index in range(20):
        test_id = f"tempest.api.compute.test_servers.ServersTest.test_{index}"
        writer.status(test_id=test_id, test_status="inprogress")
        writer.status(test_id=test_id, test_status="fail" if index == 3 else "success",
                      file_name="traceback", file_bytes=details.encode("utf-8"),
                      mime_type="text/plain; charset=utf8")
    return out.getvalue()


def test_subunit_stream_survives_publishing(tmp_path: Path) -> None:
    stream = _subunit_stream("no secret here: Zoë 实例")
    path = tmp_path / "tempest.subunit"
    path.write_bytes(stream)
    publish_logs(tmp_path, make_redactor([SECRET]), gzip_over=1_000_000)
    assert path.read_bytes() == stream
    results = parse_subunit(path.read_bytes())
    assert len(results) == 20 and all(r.test_id != "subunit.parser" for r in results)
    assert [r.status for r in results].count("fail") == 1


def test_subunit_stream_with_a_secret_is_withheld_not_corrupted(tmp_path: Path) -> None:
    path = tmp_path / "tempest.subunit"
    path.write_bytes(_subunit_stream(f"auth failed for password {SECRET}"))
    assert redact_file(path, make_redactor([SECRET]))
    assert path.read_text(encoding="utf-8") == WITHHELD


def test_prune_removes_only_trees_past_retention(tmp_path: Path) -> None:
    old = tmp_path / "10001" / "1" / "job-1"
    new = tmp_path / "10002" / "1" / "job-2"
    for d in (old, new):
        d.mkdir(parents=True)
        (d / "x.log").write_text("x", encoding="utf-8")
    past = time.time() - 40 * 86400
    os.utime(old, (past, past))
    assert prune_logs(tmp_path, retention_days=30) == 1
    assert not (tmp_path / "10001").exists()
    assert (new / "x.log").exists()


def test_staged_files_are_redacted_moved_and_the_staging_tree_removed(tmp_path: Path) -> None:
    redact = make_redactor(["s3cr3t"])
    log_dir, staging = tmp_path / "logs" / "1001" / "1" / "job-7", tmp_path / "staging"
    (staging / "controller" / "nova").mkdir(parents=True)
    (staging / "controller" / "nova" / "n-cpu.log").write_text("pw=s3cr3t ünïcode\n",
                                                               encoding="utf-8")
    (staging / "empty-dir").mkdir()
    publish_logs(log_dir, redact, 1 << 20, staging=staging)
    moved = log_dir / "controller" / "nova" / "n-cpu.log"
    assert moved.read_text(encoding="utf-8") == f"pw={REDACTED} ünïcode\n"
    assert not staging.exists()  # directories left in it too
    assert (log_dir / "index.html").is_file()


def test_a_build_that_staged_nothing_still_gets_its_index(tmp_path: Path) -> None:
    log_dir, staging = tmp_path / "logs" / "1001" / "1" / "job-8", tmp_path / "staging"
    log_dir.mkdir(parents=True)
    staging.mkdir()
    publish_logs(log_dir, make_redactor([]), 1 << 20, staging=staging)
    assert not staging.exists()
    assert [p.name for p in log_dir.iterdir()] == ["index.html"]  # the report's link works
