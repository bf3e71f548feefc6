"""`serve` in its own process: answers on its port, stops cleanly on SIGTERM and SIGINT."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from ci.config import Config

SCRIPT = """
import logging, sys
from ci.config import parse_config
from dashboard.server import serve
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
data = {data!r}
serve(parse_config(data), "127.0.0.1", 0)
print("clean exit", flush=True)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_until_signal(tmp_path: Path, dash_config: Config, sqlite_url: str,
                            signum: int) -> None:
    data = dash_config.model_dump(mode="json")
    data["database"] = {"url": sqlite_url}  # an empty file: serve upgrades it
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT.format(data=data)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = None
        assert proc.stderr is not None
        for line in proc.stderr:
            found = re.search(r"dashboard serving on http://127\.0\.0\.1:(\d+)/", line)
            if found:
                port = int(found.group(1))
                break
        assert port, "the server never said where it listens"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=10) as r:
            assert r.status == 200
            assert json.loads(r.read())["queued"] == []
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert out == "clean exit\n"
    assert "dashboard stopped" in err


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used, from its own counters."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_an_idle_dashboard_uses_almost_no_cpu(tmp_path: Path, dash_config: Config,
                                              sqlite_url: str) -> None:
    # waitress's loop once spun at a zero timeout: 29-74 % of a core while idle.
    import time

    data = dash_config.model_dump(mode="json")
    data["database"] = {"url": sqlite_url}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT.format(data=data)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        port = None
        for line in proc.stderr:
            found = re.search(r"dashboard serving on http://127\.0\.0\.1:(\d+)/", line)
            if found:
                port = int(found.group(1))
                break
        assert port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
            assert r.status == 200
        before = _cpu_seconds(proc.pid)
        time.sleep(10)
        used = _cpu_seconds(proc.pid) - before
        assert used < 0.2, f"idle dashboard used {used:.2f} s of CPU in 10 s"
    finally:
        proc.kill()
        proc.communicate()
