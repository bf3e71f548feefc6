"""A web recheck follows the rules of a Gerrit `recheck` comment: project, branch, files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ci import queue
from ci.config import Config, parse_config
from ci.models import Build

pytestmark = pytest.mark.usefixtures("logged_in")  # actions need an operator


@pytest.fixture
def dash_config(tmp_path: Path) -> Config:
    # nova watched only for its Hyper-V files, on stable branches (as a real CI is).
    logs = tmp_path / "logs"
    logs.mkdir(exist_ok=True)
    return parse_config({
        "gerrit": {"host": "127.0.0.1", "username": "hyperv-ci",
                   "key_file": str(tmp_path / "id_ed25519"),
                   "known_hosts": str(tmp_path / "known_hosts")},
        "projects": [
            {"name": "openstack/compute-hyperv", "jobs": ["hyperv-local", "hyperv-extra"]},
            {"name": "openstack/nova", "branches": ["stable/.*"],
             "files": ["^nova/virt/hyperv/"], "jobs": ["hyperv-local"]},
        ],
        "jobs": {"hyperv-local": {"type": "local", "command": ["true"]},
                 "hyperv-extra": {"type": "local", "command": ["true"]}},
        "logs": {"dir": str(logs), "url": "http://127.0.0.1:8080/logs/"},
    })


def _patchset(sessions: sessionmaker[Session], number: int, branch: str,
              files: tuple[str, ...] | None) -> None:
    with sessions() as s, s.begin():
        queue.upsert_patchset(s, queue.ChangeInfo(
            number=number, project="openstack/nova", branch=branch, patchset=1,
            subject="修复", files=files))


def _recheck(client: FlaskClient, csrf: Any, number: int) -> str:
    token = csrf("/changes/1001")
    assert client.post(f"/changes/{number}/1/recheck",
                       data={"csrf_token": token}).status_code == 303
    page = client.get(f"/changes/{number}").get_data(as_text=True)
    return page.split('<ul class="flashes">', 1)[-1]


def _rechecked(sessions: sessionmaker[Session]) -> list[int]:
    with sessions() as s:
        builds = s.scalars(select(Build).where(Build.reason == "manual recheck")).all()
        return [b.patchset.change.number for b in builds]


def test_a_change_outside_the_watched_files_is_not_queued(
        client: FlaskClient, world: Any, csrf: Any,
        dash_sessions: sessionmaker[Session]) -> None:
    _patchset(dash_sessions, 2001, "stable/2023.1", ("nova/compute/manager.py",))
    assert "touches none of the watched files" in _recheck(client, csrf, 2001)
    _patchset(dash_sessions, 2002, "master", ("nova/virt/hyperv/vmops.py",))
    assert "openstack/nova master is not watched" in _recheck(client, csrf, 2002)
    _patchset(dash_sessions, 2003, "stable/2023.1", None)
    assert "comment &#39;recheck&#39; on the change in Gerrit" in _recheck(client, csrf, 2003)
    assert _rechecked(dash_sessions) == []


def test_a_change_touching_the_watched_files_is_queued(
        client: FlaskClient, world: Any, csrf: Any,
        dash_sessions: sessionmaker[Session]) -> None:
    _patchset(dash_sessions, 2004, "stable/2023.1", ("nova/virt/hyperv/vmops.py",))
    assert "Queued hyperv-local" in _recheck(client, csrf, 2004)
    assert _rechecked(dash_sessions) == [2004]
