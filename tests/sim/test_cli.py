"""`hyperv-ci-sim ...` against a running simulated Gerrit: click's CliRunner, and the
console script itself for `serve`."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from ci.app.processes import run_listener
from ci.config import GerritConfig, parse_config
from ci.db import make_engine, make_sessionmaker
from ci.gerrit import GerritClient
from ci.gerrit_errors import LabelRefused
from ci.models import Build, Change, Event, Patchset
from sim.cli import sim as sim_group
from sim.gerrit import SimGerrit, make_client_identity
from tests.listener.conftest import config_data

# The simulators' own console script (pyproject.toml), beside the interpreter.
SIM_CLI = str(Path(sys.executable).with_name("hyperv-ci-sim"))


@pytest.fixture
def identity(tmp_path: Path) -> tuple[Path, str]:
    return make_client_identity(tmp_path / "client", "hyperv-ci")


@pytest.fixture
def running(tmp_path: Path, identity: tuple[Path, str]) -> Iterator[SimGerrit]:
    server = SimGerrit(tmp_path / "demo", users={"hyperv-ci": identity[1]})
    server.start()
    yield server
    server.stop()


@pytest.fixture
def runner(running: SimGerrit, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    # No flag: the commands find the sim through $HYPERV_CI_STATE_DIR.
    monkeypatch.setenv("HYPERV_CI_STATE_DIR", str(running.state_dir))
    return CliRunner()


def invoke(runner: CliRunner, *args: str) -> str:
    result = runner.invoke(sim_group, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_push_comment_merge_abandon(runner: CliRunner, running: SimGerrit) -> None:
    events: list[str] = []
    running.state.subscribe(events.append)
    out = invoke(runner, "push", "--project", "openstack/compute-hyperv", "--file",
                 "compute_hyperv/nova/vmops.py", "--file", "doc/说明.rst", "--subject",
                 "Fix Zoë's “VM” 名字", "--owner", "Zoë Ünal")
    assert out == "10001,1 refs/changes/01/10001/1\n"
    out = invoke(runner, "push", "--project", "openstack/compute-hyperv", "--file", "x.py",
                 "--subject", "v2", "--change", "10001")
    assert out.startswith("10001,2 ")
    invoke(runner, "comment", "10001,2", "recheck hyper-v", "--author", "张伟")
    created = [json.loads(e) for e in events if '"patchset-created"' in e]
    assert created[0]["change"]["subject"] == "Fix Zoë's “VM” 名字"
    assert created[0]["change"]["owner"]["name"] == "Zoë Ünal"
    added = json.loads(events[-1])
    assert added["comment"] == "Patch Set 2:\n\nrecheck hyper-v"
    assert added["author"]["name"] == "张伟"
    rev = invoke(runner, "merge", "10001").strip()
    merged = json.loads(events[-1])
    assert merged["type"] == "change-merged" and merged["newRev"] == rev
    invoke(runner, "push", "--project", "openstack/nova", "--file", "a", "--subject", "s")
    invoke(runner, "abandon", "10002")
    assert json.loads(events[-1])["type"] == "change-abandoned"


def test_refusals_are_clean_errors(runner: CliRunner) -> None:
    result = runner.invoke(sim_group, ["abandon", "424242"])
    assert result.exit_code == 1 and "no such change" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    result = runner.invoke(sim_group, ["comment", "10001", "x"])
    assert result.exit_code == 2 and "CHANGE,PATCHSET" in result.output


def test_replay_emits_lines_verbatim(runner: CliRunner, running: SimGerrit,
                                     tmp_path: Path) -> None:
    fixture = (Path(__file__).parents[1] / "fixtures" / "gerrit"
               / "events__ferrit__gerrit_fake_ssh_server_e547a9a_events.jsonl")
    lines = fixture.read_text(encoding="utf-8").splitlines()[:3]
    replay = tmp_path / "replay.jsonl"
    replay.write_text("\n".join([*lines, "", '{"type":"comment-added","comment":"中文"}']) + "\n",
                      encoding="utf-8")
    events: list[str | bytes] = []
    running.state.subscribe(events.append)
    assert invoke(runner, "replay", str(replay)) == "4 events emitted\n"
    assert events == [line.encode() for line in
                      [*lines, '{"type":"comment-added","comment":"中文"}']]


def test_replay_sends_a_line_that_is_not_utf8_as_it_is(
        runner: CliRunner, running: SimGerrit, identity: tuple[Path, str], sqlite_url: str,
        tmp_path: Path) -> None:
    """What a broken plugin might send: the lines around it are stored and acted on."""
    lines: list[str | bytes] = []
    unsubscribe = running.state.subscribe(lines.append)
    changes = [running.state.push("openstack/nova", files={"nova/virt/hyperv/vmops.py": "x"},
                                  subject=f"Hyper-V fix {n} — Zoë")["change"] for n in (1, 2)]
    unsubscribe()
    created = [str(line) for line in lines if '"patchset-created"' in str(line)]
    broken = b'{"type":"comment-added","comment":"caf\xe9 \xff\xfe recheck"}'
    replay = tmp_path / "replay.jsonl"
    replay.write_bytes(b"\n".join([created[0].encode(), broken, created[1].encode()]) + b"\n")
    config = parse_config(config_data(sqlite_url, host=running.host, port=running.port,
                                       key_file=str(identity[0]),
                                       known_hosts=str(running.known_hosts_file)))
    stop = threading.Event()
    listener = threading.Thread(target=run_listener, args=(config, stop))
    listener.start()
    try:
        assert running.wait_for_streams(1, timeout=20)
        assert invoke(runner, "replay", str(replay)) == "3 events emitted\n"
        sessions = make_sessionmaker(make_engine(sqlite_url))

        def built() -> list[tuple[int, str]]:
            with sessions() as session:
                return sorted((number, job) for number, job in session.execute(
                    select(Change.number, Build.job).join(Build.patchset)
                    .join(Patchset.change)))
        deadline = time.monotonic() + 30
        while built() != [(n, "hyperv-tempest") for n in changes]:
            assert time.monotonic() < deadline, built()
            time.sleep(0.1)
        with sessions() as session:
            stored = list(session.execute(select(Event.type, Event.raw).order_by(Event.id)))
    finally:
        stop.set()
        listener.join(timeout=15)
    assert [kind for kind, _ in stored] == ["patchset-created", "invalid", "patchset-created"]
    assert "caf\ufffd" in stored[1][1]  # kept, with what could not be decoded marked


def test_reviews_lists_what_was_posted(runner: CliRunner, running: SimGerrit,
                                       identity: tuple[Path, str]) -> None:
    assert invoke(runner, "reviews") == "no reviews yet\n"
    running.state.push("openstack/nova", files=["a.py"], subject="s")
    gerrit = GerritClient(running.client_config("hyperv-ci", identity[0]))
    gerrit.review("openstack/nova", 10001, 1, message="Build failed: 测试\nlogs: http://x",
                  labels={"Verified": -1})
    gerrit.close()
    [row] = json.loads(invoke(runner, "reviews", "--json"))
    assert {k: row[k] for k in ("change", "patchset", "labels", "message", "author")} == {
        "change": 10001, "patchset": 1, "labels": {"Verified": -1},
        "message": "Build failed: 测试\nlogs: http://x", "author": "hyperv-ci"}
    table = invoke(runner, "reviews")
    assert "10001,1" in table and "Verified-1" in table and "Build failed: 测试" in table


def test_cli_calls_leave_no_error_in_the_sims_log(runner: CliRunner, running: SimGerrit,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    # Each call hangs up on the server; the demo's console must not fill with ERRORs.
    caplog.set_level(logging.DEBUG)
    running.state.push("openstack/nova", files=["a.py"], subject="s")
    for _ in range(10):
        invoke(runner, "reviews")
    running.stop()  # joins the server's transports: everything they log is in
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []


def test_no_running_sim_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(sim_group, ["reviews", "--state-dir", str(tmp_path / "none")])
    assert result.exit_code == 1
    assert "no simulated Gerrit is running" in result.output
    assert "Traceback" not in result.output


def test_stale_advert_is_a_clear_error(tmp_path: Path, identity: tuple[Path, str]) -> None:
    with SimGerrit(tmp_path / "demo", users={"hyperv-ci": identity[1]}) as server:
        advert = (tmp_path / "demo" / "sim-gerrit.json").read_text(encoding="utf-8")
        port = server.port
    (tmp_path / "demo" / "sim-gerrit.json").write_text(advert, encoding="utf-8")
    result = CliRunner().invoke(sim_group, ["reviews", "--state-dir", str(tmp_path / "demo")])
    assert result.exit_code == 1
    assert f"no simulated Gerrit answers at 127.0.0.1:{port}" in result.output


def test_serve_runs_until_terminated(tmp_path: Path, identity: tuple[Path, str]) -> None:
    state_dir = tmp_path / "served"
    pub = identity[0].with_suffix(".pub")
    proc = subprocess.Popen(
        [SIM_CLI, "serve", "--state-dir",
         str(state_dir), "--port", "0", "--user", f"hyperv-ci={pub}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "simulated Gerrit on 127.0.0.1:" in (proc.stdout.readline() if proc.stdout else "")
        out = invoke(CliRunner(), "push", "--state-dir", str(state_dir), "--project", "p",
                     "--file", "f", "--subject", "s")
        assert out.startswith("10001,1 ")
        advert = json.loads((state_dir / "sim-gerrit.json").read_text(encoding="utf-8"))
        gerrit = GerritClient(GerritConfig(host="127.0.0.1", port=advert["port"],
                                           username="hyperv-ci", key_file=identity[0],
                                           known_hosts=Path(advert["known_hosts"])))
        assert gerrit.changed_files(10001, 1) == ["f"]
        gerrit.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert not (state_dir / "sim-gerrit.json").exists()


def test_cli_calls_leave_no_connection_chatter(runner: CliRunner, running: SimGerrit,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    invoke(runner, "reviews")
    running.stop()
    assert not [r for r in caplog.records if r.name.startswith("sim.gerrit.ssh")]


def test_grant_sets_an_accounts_labels_on_the_running_sim(runner: CliRunner,
                                                          running: SimGerrit) -> None:
    assert invoke(runner, "grant", "hyperv-ci:Verified=0..+1,Code-Review=-1..1") == (
        "hyperv-ci: Verified=0..+1, Code-Review=-1..+1\n")
    assert running.state.labels.granted("hyperv-ci", "Verified") == (0, 1)
    assert invoke(runner, "grant", "zoë:") == "zoë: no label\n"
    bad = runner.invoke(sim_group, ["grant", "hyperv-ci:Verified=1..-1"])
    assert bad.exit_code == 2 and "the minimum is above the maximum" in bad.output


def test_serve_grants_labels_and_strict_labels(tmp_path: Path,
                                               identity: tuple[Path, str]) -> None:
    state_dir = tmp_path / "served"
    pub = identity[0].with_suffix(".pub")
    proc = subprocess.Popen(
        [SIM_CLI, "serve", "--state-dir",
         str(state_dir), "--port", "0", "--user", f"hyperv-ci={pub}",
         "--grant", "hyperv-ci:Code-Review=-1..+1", "--strict-labels"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "simulated Gerrit on 127.0.0.1:" in (proc.stdout.readline() if proc.stdout else "")
        invoke(CliRunner(), "push", "--state-dir", str(state_dir), "--project", "p",
               "--file", "f", "--subject", "s")
        advert = json.loads((state_dir / "sim-gerrit.json").read_text(encoding="utf-8"))
        gerrit = GerritClient(GerritConfig(host="127.0.0.1", port=advert["port"],
                                           username="hyperv-ci", key_file=identity[0],
                                           known_hosts=Path(advert["known_hosts"])))
        try:
            with pytest.raises(LabelRefused, match='"Verified": 1 is restricted'):
                gerrit.review("p", 10001, 1, message="m", labels={"Verified": 1})
            with pytest.raises(LabelRefused, match='"Foo" is not a configured label'):
                gerrit.review("p", 10001, 1, message="m", labels={"Foo": 1})
            gerrit.review("p", 10001, 1, message="m", labels={"Code-Review": -1})
        finally:
            gerrit.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    assert proc.returncode == 0
