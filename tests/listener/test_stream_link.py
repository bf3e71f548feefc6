"""The listener's link to Gerrit: a frozen link is noticed and caught up, a refused one is loud.

Real SSH both ways (the simulated Gerrit), with a loopback TCP proxy between
that freezes its connections as a real network can.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from ci import stream_status
from ci.config import Config, GerritConfig, load_config
from ci.db import transaction
from ci.gerrit import GerritClient
from dashboard import create_app
from listener.stream import Listener
from sim.gerrit import SimGerrit
from tests.listener.test_stream import HYPERV_FILES, Running, stored, stored_changes, wait_for
from tests.tcp_freeze import FreezingProxy

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ["etc/demo.yaml", "etc/openstack-hyperv.yaml", "etc/compose/hyperv-ci.yaml"]


def _demo_gerrit() -> GerritConfig:
    return load_config(ROOT / "etc/demo.yaml").gerrit


@pytest.mark.parametrize("path", SHIPPED)
def test_every_shipped_config_notices_a_dead_link_within_a_minute(path: str) -> None:
    assert load_config(ROOT / path).gerrit.dead_link_seconds is not None
    assert load_config(ROOT / path).gerrit.dead_link_seconds <= 60


def test_the_defaults_notice_a_dead_link_within_a_minute() -> None:
    gerrit = GerritConfig(host="h", username="u", key_file=Path("k"), known_hosts=Path("kh"))
    assert gerrit.dead_link_seconds == 45
    assert GerritConfig(host="h", username="u", key_file=Path("k"), known_hosts=Path("kh"),
                        keepalive=0, silence_timeout=0).dead_link_seconds is None


def _known_hosts_for(proxy: FreezingProxy, sim: SimGerrit, path: Path) -> Path:
    key = sim.host_key_line().split(" ", 1)[1]
    path.write_text(f"[127.0.0.1]:{proxy.port} {key}\n", encoding="utf-8")
    return path


def test_a_frozen_link_is_noticed_reconnected_and_caught_up_in_the_demo_configuration(
        make_config: Callable[..., Config], sim_gerrit: SimGerrit,
        client_key: tuple[Path, str], sqlite_url: str, tmp_path: Path,
        sqlite_sessions: sessionmaker[Session]) -> None:
    demo = _demo_gerrit()
    assert demo.keepalive and demo.keepalive + demo.keepalive_timeout <= 60
    with FreezingProxy(sim_gerrit.port) as proxy:
        # The demo's settings, with its keepalive intervals shortened (same mechanism).
        config = make_config(
            database_url=sqlite_url, host="127.0.0.1", port=proxy.port,
            key_file=str(client_key[0]),
            known_hosts=str(_known_hosts_for(proxy, sim_gerrit, tmp_path / "known_hosts")),
            keepalive=1, keepalive_timeout=2, silence_timeout=demo.silence_timeout)
        listener = Listener(config, sqlite_sessions, lambda: GerritClient(config.gerrit),
                            backoff=0.1, max_backoff=0.5)
        with Running(listener):
            before = sim_gerrit.state.push("openstack/nova", files=HYPERV_FILES, subject="before")
            wait_for(lambda: stored(sqlite_sessions))
            assert proxy.freeze() >= 1
            # Gerrit sends this one into the frozen link: only catch-up can bring it.
            lost = sim_gerrit.state.push("openstack/nova", files=HYPERV_FILES, subject="lost")
            wait_for(lambda: listener.connections >= 2 and listener.catch_ups >= 1, timeout=30)
            after = sim_gerrit.state.push("openstack/nova", files=HYPERV_FILES, subject="after")
            wait_for(lambda: len(stored(sqlite_sessions)) >= 3)
    assert stored_changes(sqlite_sessions) == [
        (before["change"], 1, "stream"),
        (lost["change"], 1, "catch-up"),
        (after["change"], 1, "stream"),
    ]


def _status(sessions: sessionmaker[Session]) -> stream_status.StreamError | None:
    with transaction(sessions) as session:
        return stream_status.read(session)


def test_a_host_key_that_changes_after_running_fine_is_loud_and_shown(
        stream_config: Config, sim_gerrit: SimGerrit, client_key: tuple[Path, str],
        tmp_path: Path, sqlite_sessions: sessionmaker[Session],
        caplog: pytest.LogCaptureFixture) -> None:
    listener = Listener(stream_config, sqlite_sessions,
                        lambda: GerritClient(stream_config.gerrit), backoff=0.1, max_backoff=0.5)
    running = Running(listener)
    with running:
        port = sim_gerrit.port
        sim_gerrit.stop()
        # Another server answers on Gerrit's address, with another host key.
        other = SimGerrit(tmp_path / "impostor", port=port,
                          users={"hyperv-ci": client_key[1]}).start()
        try:
            error = wait_for(lambda: _status(sqlite_sessions), timeout=30)
            assert "does not match gerrit.known_hosts" in error.message
            refused = [r for r in caplog.records if "event stream refused" in r.getMessage()]
            assert refused and all(r.levelno == logging.ERROR for r in refused)
            app = create_app(stream_config, sessions=sqlite_sessions,
                             test_config={"TESTING": True})
            api = app.test_client().get("/api/status").get_json()
            assert "does not match gerrit.known_hosts" in api["stream_error"]["message"]
            page = app.test_client().get("/").get_data(as_text=True)
            assert "Gerrit refuses the event stream" in page
            assert "does not match gerrit.known_hosts" in page
            # The operator checks the new key and trusts it: the stream comes back.
            stream_config.gerrit.known_hosts.write_text(other.host_key_line() + "\n",
                                                        encoding="utf-8")
            wait_for(lambda: listener.connections >= 2 and _status(sqlite_sessions) is None,
                     timeout=30)
            api = app.test_client().get("/api/status").get_json()
            assert api["stream_error"] is None
        finally:
            running.__exit__()
            other.stop()
