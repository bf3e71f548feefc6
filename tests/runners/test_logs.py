"""Publishing logs: secrets redacted everywhere, big files gzipped, indexes written, retention."""

from __future__ import annotations

import gzip
import os
import time
from pathlib import Path

from runners.logs import prune_logs, publish_logs
from runners.steps import REDACTED, make_redactor

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
    # Every published text file is clean.
    for path in root.rglob("*"):
        if path.is_file() and path.suffix != ".bin":
            data = path.read_bytes()
            if path.suffix == ".gz":
                data = gzip.decompress(data)
            assert SECRET.encode() not in data, path


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
