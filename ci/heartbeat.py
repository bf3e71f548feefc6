"""Liveness of the long-running processes, for a container's healthcheck.

A process started with `--heartbeat FILE` runs a pulse thread that, every
`interval` seconds, asks the database a trivial question through the
process's own configuration (password reference included) and touches FILE
only when the answer came. `hyperv-ci alive FILE --max-age N` (the
healthcheck) exits non-zero once FILE is older than N seconds or missing.

So a container turns unhealthy when its process is stopped or frozen (the
pulse stops with it), when it cannot reach the database, or when its
database password no longer resolves; a stuck build or a frozen Gerrit
stream are caught elsewhere (the build lease and step timeouts, the
listener's keepalive and silence watchdog).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Freshness:
    """What the healthcheck found: `ok`, and a one-line reason for a person."""

    ok: bool
    reason: str
    age: float | None = None


def judge(mtime: float | None, now: float, max_age: float) -> Freshness:
    """Whether a heartbeat last touched at `mtime` (None: never) is recent enough."""
    if mtime is None:
        return Freshness(False, "no heartbeat yet (the process has not reached its database)")
    age = now - mtime
    if age > max_age:
        return Freshness(False, f"last heartbeat {age:.0f} s ago (more than {max_age:.0f} s)",
                         age)
    return Freshness(True, f"alive (heartbeat {max(age, 0):.0f} s ago)", age)


def check(path: Path, max_age: float, now: float | None = None) -> Freshness:
    """Read FILE's modification time and judge it."""
    try:
        mtime: float | None = path.stat().st_mtime
    except FileNotFoundError:
        mtime = None
    return judge(mtime, time.time() if now is None else now, max_age)


def beat(path: Path) -> None:
    """Mark the process alive now."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    os.utime(path)


def database_probe(url: str) -> Callable[[], None]:
    """A probe that runs `SELECT 1` on the database at `url` (raises when it cannot)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    # A connection of its own each time: a broken pooled one must not look alive.
    engine = create_engine(url, poolclass=NullPool)

    def probe() -> None:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    return probe


class Pulse:
    """Touches `path` every `interval` seconds while `probe()` succeeds."""

    def __init__(self, path: Path, probe: Callable[[], None], interval: float = 15.0) -> None:
        self.path = path
        self.probe = probe
        self.interval = interval
        self._failing = False

    def once(self) -> bool:
        """Probe, and beat if it answered; a failure is logged once, not every pass."""
        try:
            self.probe()
        except Exception as exc:  # any failure means "not alive": say it, do not beat
            if not self._failing:
                logger.warning("heartbeat: probe failed, %s not touched: %s",
                               self.path, str(exc).splitlines()[0][:200] if str(exc) else
                               type(exc).__name__)
            self._failing = True
            return False
        if self._failing:
            logger.info("heartbeat: probe answers again")
        self._failing = False
        beat(self.path)
        return True

    def run(self, stop: threading.Event) -> None:
        while True:
            self.once()
            if stop.wait(self.interval):
                return

    def start(self, stop: threading.Event) -> threading.Thread:
        """Run in a daemon thread until `stop` is set."""
        # A file left by an earlier run (a restarted container) proves nothing.
        self.path.unlink(missing_ok=True)
        thread = threading.Thread(target=self.run, args=(stop,), name="heartbeat", daemon=True)
        thread.start()
        return thread
