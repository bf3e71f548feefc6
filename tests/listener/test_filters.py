"""listener.filters: project/branch/files, recheck comments, our own account."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ci.config import Config
from ci.queue import ChangeInfo
from listener.events import Account
from listener.filters import (
    branch_name,
    comment_body,
    files_match,
    is_ignored_author,
    is_recheck,
    jobs_for,
    needs_files,
    project_matches,
)

HYPERV = ["^nova/virt/hyperv/", "^nova/tests/unit/virt/hyperv/"]


def change(project: str = "openstack/nova", branch: str = "master") -> ChangeInfo:
    return ChangeInfo(number=1, project=project, branch=branch, patchset=1)


def test_branch_name_strips_refs_heads() -> None:
    assert branch_name("refs/heads/stable/2024.1") == "stable/2024.1"
    assert branch_name("master") == "master"


@pytest.mark.parametrize(("project", "branch", "expected"), [
    ("openstack/nova", "master", True),
    ("openstack/nova", "refs/heads/master", True),
    ("openstack/nova", "stable/2024.1", True),
    ("openstack/nova", "feature/master", False),  # whole-name match
    ("openstack/nova", "master-old", False),
    ("openstack/neutron", "master", False),
    ("openstack/nova-specs", "master", False),
])
def test_project_and_branch(config: Config, project: str, branch: str, expected: bool) -> None:
    assert project_matches(config.projects[0], project, branch) is expected


def test_files_regexes() -> None:
    assert files_match(HYPERV, ["nova/virt/hyperv/vmops.py"])
    assert not files_match(HYPERV, ["nova/compute/manager.py"])
    assert files_match(HYPERV, ["nova/compute/manager.py", "nova/tests/unit/virt/hyperv/t.py"])
    assert not files_match(HYPERV, ["doc/nova/virt/hyperv/x.rst"])  # anchored
    assert not files_match(HYPERV, [])


def test_files_non_ascii_paths() -> None:
    assert files_match(["^nova/virt/hyperv/"], ["nova/virt/hyperv/données_测试.py"])
    assert files_match(["测试"], ["doc/source/测试.rst"])
    assert not files_match(["^nova/virt/hyperv/"], ["nova/virt/libvirt/é.py"])


def test_commit_msg_is_ignored_and_empty_list_is_whole_repo() -> None:
    assert not files_match([".*"], ["/COMMIT_MSG"])
    assert not files_match(["COMMIT_MSG"], ["/COMMIT_MSG", "/MERGE_LIST"])
    assert files_match([], ["anything.py"])
    assert files_match([], ["/COMMIT_MSG"])


@pytest.mark.parametrize("comment", [
    "recheck",
    "RECHECK",
    "Patch Set 3:\n\nrecheck",
    "Patch Set 3: Code-Review+1\n\nrecheck hyperv",
    "Patch Set 3:\n\nrecheck hyper-v",
    "Patch Set 12: Verified-1 Workflow+1\n\n(2 comments)\n\nreverify",
    "Patch Set 1:\n\nThe failure looks unrelated.\n\nrecheck\n",
    "recheck hyperv",
    "Patch Set 2:\r\n\r\nrecheck",
])
def test_recheck_matches(config: Config, comment: str) -> None:
    assert is_recheck(config.gerrit, comment)


@pytest.mark.parametrize("comment", [
    "please recheck",
    "Patch Set 3:\n\nplease recheck",
    "recheck-please",
    "recheck nova-next",
    "Patch Set 3: Code-Review+1",
    "Patch Set 3: recheck",  # a header is not the reviewer's text
    "",
])
def test_recheck_does_not_match(config: Config, comment: str) -> None:
    assert not is_recheck(config.gerrit, comment)


def test_recheck_regex_is_configurable(make_config: Callable[..., Config]) -> None:
    config = make_config(recheck_regex=r"^hyper-?v:\s*recheck$")
    assert is_recheck(config.gerrit, "Patch Set 1:\n\nHyperV: Recheck")
    assert not is_recheck(config.gerrit, "recheck")


def test_comment_body() -> None:
    assert comment_body("Patch Set 4: Code-Review-1\n\n(1 comment)\n\n修复\nok") == "修复\nok"
    assert comment_body("no header") == "no header"


def test_own_account_and_ignored_authors(make_config: Callable[..., Config]) -> None:
    config = make_config(ignore_authors=["zuul", "Jenkins Bot"])
    gerrit = config.gerrit
    assert is_ignored_author(gerrit, Account(name="Hyper-V CI", username="hyperv-ci"))
    assert is_ignored_author(gerrit, Account(username="zuul"))
    assert is_ignored_author(gerrit, Account(name="Jenkins Bot"))
    assert not is_ignored_author(gerrit, Account(name="张伟", username="zhang"))
    assert not is_ignored_author(gerrit, Account())


def test_jobs_for(config: Config) -> None:
    nova = change()
    assert jobs_for(config, nova, ["/COMMIT_MSG", "nova/virt/hyperv/vmops.py"]) == [
        "hyperv-tempest"]
    assert jobs_for(config, nova, ["/COMMIT_MSG", "nova/compute/manager.py"]) == []
    assert jobs_for(config, nova, None) == []
    assert jobs_for(config, change(branch="feature/x"), ["nova/virt/hyperv/vmops.py"]) == []
    chv = change("openstack/compute-hyperv")
    assert jobs_for(config, chv, None) == ["hyperv-tempest", "hyperv-unit"]
    assert jobs_for(config, chv, ["README.rst"]) == ["hyperv-tempest", "hyperv-unit"]
    assert jobs_for(config, change("openstack/neutron"), ["x"]) == []


def test_needs_files(config: Config) -> None:
    assert needs_files(config, "openstack/nova", "master")
    assert not needs_files(config, "openstack/compute-hyperv", "master")
    assert not needs_files(config, "openstack/nova", "feature/x")
