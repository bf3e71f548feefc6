"""ci.changes: one change record from Gerrit's answer to the database and back."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session, sessionmaker

from ci import queue
from ci.changes import (
    ChangeInfo,
    NoSuchPatchset,
    change_info_from_query,
    change_info_from_rows,
)
from ci.errors import PermanentError

ROW = {
    "project": "openstack/nova", "branch": "unmaintained/2023.1", "number": 10001,
    "subject": "Hyper-V: 修复 — café", "owner": {"name": "Zoë", "email": "z@example.org"},
    "url": "https://review.example/10001", "status": "NEW",
    "patchSets": [
        {"number": 1, "revision": "a" * 40, "ref": "refs/changes/01/10001/1"},
        {"number": 2, "revision": "b" * 40, "ref": "refs/changes/01/10001/2",
         "uploader": {"name": "李"},
         "files": [{"file": "/COMMIT_MSG"}, {"file": "nova/virt/hyperv/vmops.py"}]},
    ],
}


def test_the_record_stored_and_read_back_is_the_one_gerrit_gave(
        sessions: sessionmaker[Session]) -> None:
    info = change_info_from_query(ROW, None)
    assert info == ChangeInfo(
        number=10001, project="openstack/nova", branch="unmaintained/2023.1", patchset=2,
        subject="Hyper-V: 修复 — café", owner_name="Zoë", owner_email="z@example.org",
        url="https://review.example/10001", revision="b" * 40,
        ref="refs/changes/01/10001/2", uploader_name="李",
        files=("nova/virt/hyperv/vmops.py",))
    assert info.owner == "Zoë"  # what the job's files show
    with sessions() as session, session.begin():
        patchset = queue.upsert_patchset(session, info)
        assert change_info_from_rows(patchset.change, patchset) == info


def test_a_missing_patch_set_is_permanent_and_still_a_value_error() -> None:
    with pytest.raises(NoSuchPatchset, match="no patch set 3") as raised:
        change_info_from_query(ROW, 3)
    assert isinstance(raised.value, PermanentError) and isinstance(raised.value, ValueError)
    with pytest.raises(NoSuchPatchset, match="no patch sets in the query answer"):
        change_info_from_query({**ROW, "patchSets": []}, None)
