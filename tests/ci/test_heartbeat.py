"""ci/heartbeat.py and `hyperv-ci alive`: a container's healthcheck for the
listener and the workers, over the real processes and databases."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy import create_engine, text

from ci.app.cli import main
from ci.heartbeat import Pulse, check, database_probe, judge

ROOT = Path(__file__).resolve().parents[2]


def test_judge_needs_a_recent_heartbeat() -> None:
    assert not judge(None, 1000.0, 60).ok
    assert judge(990.0, 1000.0, 60).ok
    stale = judge(900.0, 1000.0, 60)
    assert not stale.ok and "100 s ago" in stale.reason


def test_pulse_beats_only_while_the_database_answers(tmp_path: Path) -> None:
    beat_file = tmp_path / "run" / "heartbeat"
    pulse = Pulse(beat_file, database_probe(f"sqlite:///{tmp_path / 'ci.db'}"))
    assert pulse.once() and check(beat_file, 60).ok

    beat_file.unlink()
    # A database that cannot be opened (its directory is missing) is no answer.
    dead = Pulse(beat_file, database_probe(f"sqlite:///{tmp_path / 'missing' / 'ci.db'}"))
    assert not dead.once()
    assert not beat_file.exists() and not check(beat_file, 60).ok


def test_pulse_start_forgets_an_earlier_runs_file(tmp_path: Path) -> None:
    beat_file = tmp_path / "heartbeat"
    beat_file.touch()
    os.utime(beat_file, (1.0, 1.0))
    stop = threading.Event()
    stop.set()  # one pass, then stop

    def refuse() -> None:
        raise OSError("database down")

    Pulse(beat_file, refuse).start(stop).join(timeout=10)
    assert not beat_file.exists()


def test_alive_command_exit_codes(tmp_path: Path) -> None:
    beat_file = tmp_path / "heartbeat"
    runner = CliRunner()
    missing = runner.invoke(main, ["alive", str(beat_file)])
    assert missing.exit_code == 1 and "no heartbeat yet" in missing.output
    beat_file.touch()
    assert runner.invoke(main, ["alive", str(beat_file)]).exit_code == 0
    old = time.time() - 120
    os.utime(beat_file, (old, old))
    stale = runner.invoke(main, ["alive", str(beat_file), "--max-age", "60"])
    assert stale.exit_code == 1 and "s ago" in stale.output


# --- the real processes -----------------------------------------------------------


def _config(tmp_path: Path, db_url: str) -> Path:
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    # A host key for the (absent) Gerrit: processes check known_hosts at start.
    (tmp_path / "known_hosts").write_text(
        "[127.0.0.1]:1 ssh-ed25519 "
        "AAAAC3NzaC1lZDI1NTE5AAAAIKNN9Z8v9yMGK7aa5vW41BVkD8JOAoiSk1Nm9874kmJy\n",
        encoding="utf-8")
    (tmp_path / "logs").mkdir()
    path = tmp_path / "ci.yaml"
    path.write_text(yaml.safe_dump({
        "database": {"url": db_url},
        # Nothing listens there: the listener keeps reconnecting, which is not ill health.
        "gerrit": {"host": "127.0.0.1", "port": 1, "username": "ci",
                   "key_file": str(key), "known_hosts": str(tmp_path / "known_hosts")},
        "projects": [{"name": "openstack/nova", "jobs": ["noop"]}],
        "jobs": {"noop": {"type": "local", "command": ["true"]}},
        "logs": {"dir": str(tmp_path / "logs")},
    }), encoding="utf-8")
    return path


def _alive(beat_file: Path, max_age: float) -> bool:
    return CliRunner().invoke(main, ["alive", str(beat_file), "--max-age",
                                     str(max_age)]).exit_code == 0


def _wait_for(condition: Callable[[], bool], what: str, log: Callable[[], str],
              deadline: float = 60.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting until {what}; the process said:\n{log()}")


@pytest.mark.postgres
@pytest.mark.parametrize("command", ["listen", "worker"])
def test_process_heartbeat_stops_when_its_database_goes(command: str, tmp_path: Path,
                                                        pg_server: str, pg_url: str) -> None:
    config = _config(tmp_path, pg_url)
    beat_file = tmp_path / "heartbeat"
    subprocess.run([sys.executable, "-m", "ci.app.cli", "-c", str(config), "db", "upgrade"],
                   check=True, cwd=ROOT, capture_output=True)
    log = tmp_path / f"{command}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ci.app.cli", "-c", str(config), command,
             "--heartbeat", str(beat_file), "--heartbeat-interval", "0.2"],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)

    def tail() -> str:
        return log.read_text(encoding="utf-8", errors="replace")[-3000:]

    try:
        def started() -> bool:
            assert proc.poll() is None, f"{command} exited:\n{tail()}"
            return _alive(beat_file, 5)

        _wait_for(started, f"{command} is alive", tail)
        # The database goes away under the running process.
        name = pg_url.rsplit("/", 1)[1]
        admin = create_engine(pg_server, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false'))
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = :name"), {"name": name})
        admin.dispose()
        _wait_for(lambda: not _alive(beat_file, 2), f"{command}'s heartbeat goes stale", tail)
        assert proc.poll() is None, f"the process itself is still running:\n{tail()}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        admin = create_engine(pg_server, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:  # let the fixture drop it
            conn.execute(text(f'ALTER DATABASE "{pg_url.rsplit("/", 1)[1]}" '
                              "WITH ALLOW_CONNECTIONS true"))
        admin.dispose()
