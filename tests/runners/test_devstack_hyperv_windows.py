"""The devstack-hyperv job's Windows side end to end: logs, the service account, uploads."""

from __future__ import annotations

import hashlib
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from runners.base import Outcome
from sim.gerrit_state import GerritState
from sim.lab import SERVICE_ACCOUNT, SimLab
from tests.runners.test_devstack_hyperv import (  # noqa: F401 - fixtures
    gerrit,
    lab,
    make_config,
    push,
    run_build,
    step,
    step_log,
    steps_of,
)

NODE_FILES = ("systeminfo.txt", "hotfixes.txt", "ipconfig.txt", "net-adapters.txt",
              "vmswitch.txt", "disks.txt", "firewall.txt", "services.txt", "pip-freeze.txt")


def test_windows_logs_an_operator_needs_are_in_the_build_log_tree(
        lab: SimLab, gerrit: GerritState, tmp_path: Path,  # noqa: F811
        sqlite_sessions: sessionmaker[Session]) -> None:
    config = make_config(lab, gerrit)
    out = run_build(config, push(gerrit, {"nova/virt/hyperv/vmops.py": "x\n"}),
                    sqlite_sessions, tmp_path)

    assert out.result.outcome == Outcome.SUCCEEDED, out.result.summary
    for node in ("hv-1", "hv-2"):
        tree = out.ctx.log_dir / node
        for name in NODE_FILES:
            assert (tree / "node" / name).is_file(), (node, name)
        events = {p.name for p in (tree / "eventlog").iterdir()}
        assert {"System.evtx", "System.txt"} <= events
        services = (tree / "node" / "services.txt").read_text(encoding="utf-8")
        assert f"SERVICE_START_NAME : {SERVICE_ACCOUNT}" in services
        # Published configs carry no password.
        conf = (tree / "etc" / "nova.conf").read_text(encoding="utf-8")
        assert "password = ********" in conf and "service-Secret-789" not in conf
    # The account's password reached the node only in configure-services, and no log.
    for row in steps_of(sqlite_sessions, out.ctx.build_id):
        assert lab_password() not in step_log(out, row)
    rendered = (out.ctx.log_dir / "rendered" / "hv-1-configure-services.ps1").read_text(
        encoding="utf-8")
    assert lab_password() not in rendered


def lab_password() -> str:
    import os

    from sim.lab import ACCOUNT_PASSWORD_ENV

    return os.environ[ACCOUNT_PASSWORD_ENV]


def test_a_tool_uploaded_from_the_worker_reaches_every_node(
        lab: SimLab, gerrit: GerritState, tmp_path: Path,  # noqa: F811
        sqlite_sessions: sessionmaker[Session]) -> None:
    assert lab.artefacts is not None
    data = lab.artefacts.files["mkisofs.exe"]
    local = tmp_path / "mkisofs.exe"
    local.write_bytes(data)
    windows = lab.job_overrides()["windows"]
    windows["tools"]["mkisofs"] = {"path": str(local), "sha256": hashlib.sha256(data).hexdigest()}
    config = make_config(lab, gerrit, windows=windows)
    out = run_build(config, push(gerrit, {"a.py": "a\n"}), sqlite_sessions, tmp_path)

    assert out.result.outcome == Outcome.SUCCEEDED, out.result.summary
    rows = steps_of(sqlite_sessions, out.ctx.build_id)
    for node in ("hv-1", "hv-2"):
        assert lab.winrm[node].model.read_file("C:\\OpenStack\\bin\\mkisofs.exe") == data
        assert "mkisofs: SHA-256 verified" in step_log(out, step(rows, "windows-bootstrap", node))
    assert "/mkisofs.exe" not in lab.artefacts.requests


def test_a_wrong_sha256_ends_the_build_as_an_error_naming_the_file(
        lab: SimLab, gerrit: GerritState, tmp_path: Path,  # noqa: F811
        sqlite_sessions: sessionmaker[Session]) -> None:
    windows = lab.job_overrides()["windows"]
    windows["tools"]["qemu_img"]["sha256"] = "f" * 64
    config = make_config(lab, gerrit, windows=windows)
    out = run_build(config, push(gerrit, {"a.py": "a\n"}), sqlite_sessions, tmp_path)

    assert out.result.outcome == Outcome.ERROR
    rows = steps_of(sqlite_sessions, out.ctx.build_id)
    log = step_log(out, step(rows, "windows-bootstrap", "hv-1"))
    assert "qemu_img: SHA-256" in log and "does not match the configured " + "f" * 64 in log
