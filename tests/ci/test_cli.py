"""`hyperv-ci` as an operator runs it: subprocesses, a real SQLite file, the simulated Gerrit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy import inspect, select

from ci import queue
from ci.app.cli import COMMANDS, main
from ci.db import make_engine, make_sessionmaker
from ci.models import Base, Node, NodeState, Report, ReportState
from runners import pool
from runners.powershell import syntax_errors
from sim.gerrit import SimGerrit, make_client_identity

CLI = str(Path(sys.executable).with_name("hyperv-ci"))
SIM_CLI = str(Path(sys.executable).with_name("hyperv-ci-sim"))
SUBJECT = "修复 Hyper-V 实例名 « Zoë » 'quoted' $(rm -rf /)"
OWNER = "张伟"
PASSWORD_ENVS = ("HYPERV_CI_TEST_ADMIN_PASSWORD", "HYPERV_CI_TEST_SERVICE_PASSWORD",
                 "HYPERV_CI_TEST_WINRM_PASSWORD")


@pytest.fixture
def identity(tmp_path: Path) -> tuple[Path, str]:
    return make_client_identity(tmp_path / "client", "hyperv-ci")


@pytest.fixture
def gerrit(tmp_path: Path, identity: tuple[Path, str]) -> Iterator[SimGerrit]:
    server = SimGerrit(tmp_path / "sim", users={"hyperv-ci": identity[1]}).start()
    yield server
    server.stop()


def write_config(tmp_path: Path, gerrit: SimGerrit | None = None,
                 key_file: Path | None = None) -> Path:
    """A valid config: nova runs a two-node devstack-hyperv job; nodes need not answer."""
    winrm = {"scheme": "http", "transport": "basic", "username": "Administrator",
             "password": {"password_env": PASSWORD_ENVS[2]}}
    # The controller's key and known_hosts exist (a worker checks them at start).
    node_key, node_public = make_client_identity(tmp_path / "node", "stack")
    node_known = tmp_path / "node" / "known_hosts"
    node_known.write_text(f"192.0.2.10 {node_public}\n", encoding="utf-8")
    data: dict[str, Any] = {
        "database": {"url": f"sqlite:///{tmp_path / 'ci.db'}"},
        "gerrit": {"host": "127.0.0.1", "port": gerrit.port if gerrit else 29418,
                   "username": "hyperv-ci", "keepalive": 5,
                   "key_file": str(key_file or tmp_path / "no-key"),
                   "known_hosts": str(gerrit.known_hosts_file if gerrit
                                      else tmp_path / "no-known-hosts")},
        "projects": [{"name": "openstack/nova", "jobs": ["hyperv-tempest"]}],
        "jobs": {"hyperv-tempest": {
            "type": "devstack-hyperv", "hyperv_nodes": 2,
            "image": "/opt/stack/images/cirros-0.6.2-x86_64-disk.vhdx",
            "admin_password": {"password_env": PASSWORD_ENVS[0]},
            "service_password": {"password_env": PASSWORD_ENVS[1]}}},
        "nodes": [
            {"name": "ctl-01", "label": "devstack", "address": "192.0.2.10",
             "ssh": {"username": "stack", "key_file": str(node_key),
                     "known_hosts": str(node_known)}},
            {"name": "hv-a", "label": "hyperv", "address": "192.0.2.21", "winrm": winrm},
            {"name": "hv-b", "label": "hyperv", "address": "192.0.2.22", "winrm": winrm},
        ],
        "logs": {"dir": str(tmp_path / "logs"), "url": "http://logs.example.org/"},
        "worker": {"poll_interval": 0.2, "git_cache_dir": str(tmp_path / "git-cache")},
    }
    path = tmp_path / "hyperv-ci.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env.update({name: f"secret-{i}-value" for i, name in enumerate(PASSWORD_ENVS)})
    return env


def cli(config: Path, *args: str, status: int = 0) -> subprocess.CompletedProcess[str]:
    """Run one short command to the end; check its exit status."""
    done = subprocess.run([CLI, "-c", str(config), *args], capture_output=True, text=True,
                          encoding="utf-8", env=environment(), cwd=config.parent, timeout=60,
                          check=False)
    assert done.returncode == status, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    return done


def test_db_upgrade_creates_the_schema_in_an_empty_file(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    (tmp_path / "ci.db").touch()

    out = cli(config, "db", "upgrade").stdout
    assert "is up to date" in out
    engine = make_engine(f"sqlite:///{tmp_path / 'ci.db'}")
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert set(Base.metadata.tables) <= tables
    assert "alembic_version" in tables
    cli(config, "db", "upgrade")  # again: nothing to do, still fine


def test_enqueue_fetches_an_unknown_change_and_builds_lists_it(
        tmp_path: Path, gerrit: SimGerrit, identity: tuple[Path, str]) -> None:
    pushed = gerrit.state.push("openstack/nova", files={"nova/virt/hyperv/vmops.py": "# 实例\n"},
                               subject=SUBJECT, owner=OWNER)
    spec = f"{pushed['change']},{pushed['patchset']}"
    config = write_config(tmp_path, gerrit, identity[0])

    out = cli(config, "enqueue", "openstack/nova", spec).stdout
    assert out == "queued build 1: hyperv-tempest\n"
    [row] = json.loads(cli(config, "builds", "--json").stdout)
    assert row["subject"] == SUBJECT
    assert row["owner"] == OWNER
    assert (row["change"], row["patchset"]) == (int(pushed["change"]), int(pushed["patchset"]))
    assert (row["job"], row["state"], row["reason"]) == ("hyperv-tempest", "queued", "manual")
    assert SUBJECT in cli(config, "builds").stdout
    # A second request for the same waiting patchset queues nothing.
    assert "nothing queued" in cli(config, "enqueue", "openstack/nova", spec).stdout
    missing = cli(config, "enqueue", "openstack/nova", "424242,1", status=2)
    assert "424242" in missing.stderr and "not found" in missing.stderr
    gerrit.stop()  # Gerrit down: a clear error, no traceback (cli() checks that)
    down = cli(config, "enqueue", "openstack/nova", "424243,1", status=1)
    assert "cannot look up openstack/nova 424243,1 in Gerrit" in down.stderr


def test_render_writes_each_file_named_for_its_node_and_step(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    out_dir = tmp_path / "rendered 文件"

    out = cli(config, "render", "hyperv-tempest", "--change", "10001,3", "--out", str(out_dir))
    printed = [Path(line) for line in out.stdout.splitlines()]
    assert printed and all(p.parent == out_dir and p.is_file() for p in printed)
    names = {p.name for p in out_dir.iterdir()}
    assert names == {p.name for p in printed}
    for name in ("ctl-01-stack.sh", "ctl-01-tempest.sh", "ctl-01-local.conf",
                 "hv-a-install.ps1", "hv-b-cleanup.ps1", "hv-a-nova.conf",
                 "hv-b-neutron_hyperv_agent.conf"):
        assert name in names, sorted(names)
    assert {n.rsplit(".", 1)[-1] for n in names} >= {"ps1", "sh", "conf"}
    for node in ("ctl-01", "hv-a", "hv-b"):
        assert any(n.startswith(node + "-") for n in names)
    for path in printed:
        if path.suffix == ".ps1":
            assert syntax_errors(path.read_text(encoding="utf-8-sig")) == [], path.name
    # Secrets are never rendered into a preview.
    text = "".join(p.read_text(encoding="utf-8-sig", errors="replace") for p in printed)
    assert "secret-0-value" not in text and "secret-1-value" not in text
    assert "change 10001,3 of" in (out_dir / "ctl-01-local.conf").read_text(encoding="utf-8")
    assert "$LocalBranch = 'hyperv-ci-10001-3'" in (
        out_dir / "hv-b-install.ps1").read_text(encoding="utf-8-sig")
    unknown = cli(config, "render", "nope", "--change", "1,1", "--out", str(out_dir), status=2)
    assert "unknown job 'nope'" in unknown.stderr


def wait_for(predicate: Any, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("command", ["worker", "listen", "dashboard"])
def test_long_running_commands_stop_cleanly_on_a_signal(
        tmp_path: Path, gerrit: SimGerrit, identity: tuple[Path, str], command: str,
        signum: signal.Signals) -> None:
    config = write_config(tmp_path, gerrit, identity[0])
    args = {"worker": ["worker", "--name", "cli-worker"], "listen": ["listen"],
            "dashboard": ["dashboard", "--port", "0"]}[command]
    stderr_path = tmp_path / "stderr.txt"
    with stderr_path.open("w", encoding="utf-8") as stderr:
        proc = subprocess.Popen([CLI, "-c", str(config), *args], stdout=subprocess.DEVNULL,
                                stderr=stderr, env=environment(), cwd=tmp_path)
    try:
        if command == "worker":
            ready = wait_for(lambda: "worker cli-worker started" in
                             stderr_path.read_text(encoding="utf-8"))
        elif command == "dashboard":
            ready = wait_for(lambda: "dashboard serving on" in
                             stderr_path.read_text(encoding="utf-8"))
        else:
            ready = gerrit.wait_for_streams(1, timeout=20)
        assert ready, stderr_path.read_text(encoding="utf-8")
        assert proc.poll() is None
        proc.send_signal(signum)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = stderr_path.read_text(encoding="utf-8")
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert f"signal {int(signum)}: stopping" in err
    if command == "worker":
        assert "worker cli-worker stopped" in err
    if command == "dashboard":
        assert "dashboard stopped" in err


def test_nodes_drain_and_undo(tmp_path: Path) -> None:
    config = write_config(tmp_path)

    listed = cli(config, "nodes", "list").stdout
    assert [line.split()[0] for line in listed.splitlines()] == ["ctl-01", "hv-a", "hv-b"]
    assert "(drained)" not in listed
    assert cli(config, "nodes", "drain", "hv-a").stdout == "hv-a drained\n"
    listed = cli(config, "nodes", "list").stdout
    assert [line.split()[0] for line in listed.splitlines() if "(drained)" in line] == ["hv-a"]
    engine = make_engine(f"sqlite:///{tmp_path / 'ci.db'}")
    try:
        with make_sessionmaker(engine)() as session:
            drained = {n.name: n.drained for n in session.scalars(select(Node))}
    finally:
        engine.dispose()
    assert drained == {"ctl-01": False, "hv-a": True, "hv-b": False}
    assert cli(config, "nodes", "drain", "hv-a", "--undo").stdout == "hv-a undrained\n"
    assert "(drained)" not in cli(config, "nodes", "list").stdout
    missing = cli(config, "nodes", "drain", "nope", status=2)
    assert "no node 'nope'" in missing.stderr


def test_nodes_enable(tmp_path: Path) -> None:
    """An operator brings back a node only an operator may bring back; never a busy one."""
    config = write_config(tmp_path)
    cli(config, "nodes", "list")
    engine = make_engine(f"sqlite:///{tmp_path / 'ci.db'}")
    sessions = make_sessionmaker(engine)
    try:
        with sessions() as session, session.begin():
            patchset = queue.upsert_patchset(session, queue.ChangeInfo(
                number=1, project="openstack/nova", branch="master", patchset=1))
            build = queue.enqueue(session, patchset, "hyperv-tempest", "test")
            assert build is not None
            assert pool.reserve(session, build.id, ["hyperv", "hyperv"])
            pool.release(session, build.id, failed=["hv-a"])
            pool.record_health(session, "hv-a", False, "WinRM refused")
            assert pool.reserve(session, build.id, ["devstack"])
            build_id = build.id

        # Cleaned and checked first: this node is unreachable, so it is refused, with why...
        refused = cli(config, "nodes", "enable", "hv-a", status=1)
        assert "hv-a not enabled (cleanup-failed): `nodes enable` refused: cleanup after " \
            f"build {build_id} failed" in refused.stderr
        # ...unless the operator says it is clean (and the output says what was skipped).
        forced = cli(config, "nodes", "enable", "hv-a", "--force")
        assert forced.stdout == "hv-a enabled WITHOUT cleanup or health check (--force)\n"
        busy = cli(config, "nodes", "enable", "ctl-01", status=1)
        assert f"node 'ctl-01' holds build {build_id}" in busy.stderr
        missing = cli(config, "nodes", "enable", "nope", status=2)
        assert "no node 'nope'" in missing.stderr
        with sessions() as session:
            nodes = {n.name: (n.state, n.offline_cause, n.health_failures, n.build_id, n.message)
                     for n in session.scalars(select(Node))}
    finally:
        engine.dispose()
    assert nodes == {
        "hv-a": (NodeState.READY, None, 0, None,
                 "enabled by an operator with --force: not cleaned nor checked"),
        "hv-b": (NodeState.READY, None, 0, None, ""),
        "ctl-01": (NodeState.RESERVED, None, 0, build_id, ""),
    }
    assert "enabled by an operator" in cli(config, "nodes", "list").stdout


def test_reports_list_and_retry(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    cli(config, "db", "upgrade")
    engine = make_engine(f"sqlite:///{tmp_path / 'ci.db'}")
    try:
        with make_sessionmaker(engine)() as session, session.begin():
            patchset = queue.upsert_patchset(session, queue.ChangeInfo(
                number=10001, project="openstack/nova", branch="master", patchset=1))
            build = queue.enqueue(session, patchset, "hyperv-tempest", "patchset-created")
            assert build is not None
            session.add(Report(build_id=build.id, project="openstack/nova", change_number=10001,
                               patchset_number=1, label="Verified", vote=-1, message="m",
                               state=ReportState.FAILED, attempts=9,
                               last_error="gerrit unreachable: 连接被拒绝"))
    finally:
        engine.dispose()
    listed = cli(config, "reports", "list", "--failed").stdout
    assert "failed" in listed and "10001,1" in listed and "Verified-1" in listed
    assert "连接被拒绝" in listed
    assert "give a REPORT_ID or --all-failed" in cli(config, "reports", "retry", status=2).stderr
    assert "no failed report 99" in cli(config, "reports", "retry", "99", status=2).stderr
    assert cli(config, "reports", "retry", "--all-failed").stdout.startswith("requeued 1 report")
    assert cli(config, "reports", "list", "--failed").stdout == ""
    assert "pending" in cli(config, "reports", "list").stdout


def test_reports_list_shows_a_refused_vote(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    cli(config, "db", "upgrade")
    engine = make_engine(f"sqlite:///{tmp_path / 'ci.db'}")
    refusal = 'Applying label "Verified": -1 is restricted'
    try:
        with make_sessionmaker(engine)() as session, session.begin():
            for number, state in ((10001, ReportState.LABEL_REFUSED), (10002, ReportState.SENT)):
                patchset = queue.upsert_patchset(session, queue.ChangeInfo(
                    number=number, project="openstack/nova", branch="master", patchset=1))
                build = queue.enqueue(session, patchset, "hyperv-tempest", "patchset-created")
                assert build is not None
                refused = state == ReportState.LABEL_REFUSED
                session.add(Report(build_id=build.id, project="openstack/nova",
                                   change_number=number, patchset_number=1, label="Verified",
                                   vote=-1, message="m", state=state, attempts=1,
                                   label_refused=refusal if refused else None,
                                   last_error=refusal if refused else ""))
    finally:
        engine.dispose()
    listed = cli(config, "reports", "list", "--refused").stdout.splitlines()
    assert len(listed) == 1 and "label-refused" in listed[0] and "10001,1" in listed[0]
    assert refusal in listed[0]
    assert "label-refused" in cli(config, "reports", "list").stdout
    # Permanent: an operator's retry is for reports that gave up, not for a refused vote.
    assert cli(config, "reports", "retry", "--all-failed").stdout.startswith("requeued 0")


def test_reports_list_shows_a_report_withheld_from_a_closed_change(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    cli(config, "db", "upgrade")
    engine = make_engine(f"sqlite:///{tmp_path / 'ci.db'}")
    try:
        with make_sessionmaker(engine)() as session, session.begin():
            for number, state, error in ((10001, ReportState.NOT_SENT,
                                          "change closed (ABANDONED)"),
                                         (10002, ReportState.SENT, "")):
                patchset = queue.upsert_patchset(session, queue.ChangeInfo(
                    number=number, project="openstack/nova", branch="master", patchset=1))
                build = queue.enqueue(session, patchset, "hyperv-tempest", "patchset-created")
                assert build is not None
                session.add(Report(build_id=build.id, project="openstack/nova",
                                   change_number=number, patchset_number=1, label="Verified",
                                   vote=1, message="m", state=state, attempts=1,
                                   last_error=error))
    finally:
        engine.dispose()
    listed = cli(config, "reports", "list", "--not-sent").stdout.splitlines()
    assert len(listed) == 1 and "10001,1" in listed[0]
    assert "not-sent" in listed[0] and "change closed (ABANDONED)" in listed[0]
    assert "not-sent" in cli(config, "reports", "list").stdout
    # Nothing to retry: the change will not reopen for this build (a recheck builds anew).
    assert cli(config, "reports", "retry", "--all-failed").stdout.startswith("requeued 0")


def _render(config: Path, out_dir: Path) -> subprocess.CompletedProcess[str]:
    return cli(config, "render", "hyperv-tempest", "--change", "10001,3", "--out", str(out_dir))


def test_render_previews_without_creating_or_migrating_the_database(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    db_file = tmp_path / "ci.db"

    _render(config, tmp_path / "out")
    assert not db_file.exists()  # no database: an example change, nothing created

    db_file.touch()  # a database without the schema is left as it is
    out = _render(config, tmp_path / "out2")
    assert db_file.stat().st_size == 0
    assert "no current schema" in out.stderr
    assert "EXAMPLE change" in (tmp_path / "out2" / "hv-a-bootstrap.ps1").read_text("utf-8-sig")


def test_render_reads_a_known_change_and_leaves_the_database_unchanged(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    cli(config, "db", "upgrade")
    engine = make_engine(f"sqlite:///{tmp_path / 'ci.db'}")
    with make_sessionmaker(engine).begin() as session:
        queue.upsert_patchset(session, queue.ChangeInfo(
            number=10001, project="openstack/nova", branch="unmaintained/2023.1", patchset=3,
            subject=SUBJECT, owner_name=OWNER, revision="a" * 40,
            ref="refs/changes/01/10001/3"))
    engine.dispose()
    before = (tmp_path / "ci.db").read_bytes()

    _render(config, tmp_path / "out")
    assert (tmp_path / "ci.db").read_bytes() == before
    assert SUBJECT.replace("'", "''") in (tmp_path / "out" / "hv-a-bootstrap.ps1").read_text(
        "utf-8-sig")


def test_render_with_an_unreadable_database_is_a_note_not_a_traceback(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    (tmp_path / "ci.db").write_bytes(b"not a database\x00" * 100)

    out = _render(config, tmp_path / "out")  # cli() checks: exit 0, no traceback
    assert "cannot read the database" in out.stderr
    assert (tmp_path / "out" / "hv-a-bootstrap.ps1").is_file()
    # A database path under a regular file can be neither read nor created.
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder", encoding="utf-8")
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    data["database"]["url"] = f"sqlite:///{blocker / 'ci.db'}"
    config.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    _render(config, tmp_path / "out3")
    assert blocker.read_text(encoding="utf-8") == "a file, not a folder"


@pytest.mark.postgres
def test_render_never_migrates_a_postgresql_database(tmp_path: Path, pg_url: str) -> None:
    config = write_config(tmp_path)
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    data["database"]["url"] = pg_url
    config.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")

    out = _render(config, tmp_path / "out")
    assert "no current schema" in out.stderr
    engine = make_engine(pg_url)
    try:
        assert inspect(engine).get_table_names() == []
    finally:
        engine.dispose()


def test_events_list_shows_failed_events_with_their_reason(tmp_path: Path) -> None:
    from ci.models import Event, utcnow

    config = write_config(tmp_path)
    cli(config, "db", "upgrade")
    engine = make_engine(f"sqlite:///{tmp_path / 'ci.db'}")
    try:
        with make_sessionmaker(engine)() as session, session.begin():
            session.add(Event(type="patchset-created", raw="{}", processed_at=utcnow(),
                              failed_at=utcnow(),
                              outcome="failed: GerritError: change 7 has no patch set 1"))
            session.add(Event(type="comment-added", raw="{}", processed_at=utcnow(),
                              outcome="ignored: not a recheck — 中文"))
            session.add(Event(type="ref-updated", raw="{}"))
    finally:
        engine.dispose()
    failed = cli(config, "events", "list", "--failed").stdout.splitlines()
    assert len(failed) == 1 and "failed" in failed[0] and "no patch set 1" in failed[0]
    listed = cli(config, "events", "list").stdout
    assert "中文" in listed and "pending" in listed and "done" in listed
    assert "ref-updated" in cli(config, "events", "list", "--pending").stdout


def test_the_simulators_have_their_own_command_not_the_products() -> None:
    product = subprocess.run([CLI, "sim", "--help"], capture_output=True, text=True,
                             timeout=60, check=False)
    assert product.returncode == 2 and "No such command 'sim'" in product.stderr
    sims = subprocess.run([SIM_CLI, "--help"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert sims.returncode == 0, sims.stderr
    listed = {line.split()[0] for line in sims.stdout.split("Commands:")[1].splitlines()
              if line.strip()}
    assert listed == {"serve", "push", "comment", "abandon", "merge", "replay", "reviews",
                      "grant"}


def test_every_command_loads_and_help_lists_them_all() -> None:
    """The commands are imported when looked up: a wrong name in COMMANDS shows here."""
    runner = CliRunner()
    listing = runner.invoke(main, ["--help"], catch_exceptions=False)
    assert listing.exit_code == 0
    listed = {line.split()[0] for line in listing.output.split("Commands:")[1].splitlines()
              if line.strip()}
    assert listed == set(COMMANDS)
    for name in COMMANDS:
        result = runner.invoke(main, [name, "--help"], catch_exceptions=False)
        assert result.exit_code == 0, (name, result.output)


def test_alive_loads_neither_the_database_nor_gerrit_nor_the_processes(tmp_path: Path) -> None:
    """A container healthcheck runs every few seconds: it must start fast."""
    beat = tmp_path / "heartbeat"
    beat.touch()
    script = ("import sys\nfrom ci.app.cli import main\n"
              f"try:\n    main(['alive', {str(beat)!r}])\nexcept SystemExit as exc:\n"
              "    assert exc.code == 0, exc.code\n"
              "print('loaded:', *sorted(m for m in sys.modules if m.split('.')[0] in "
              "{'sqlalchemy', 'paramiko', 'flask', 'listener', 'runners', 'dashboard', 'sim'}))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.splitlines()[-1] == "loaded:", done.stdout
