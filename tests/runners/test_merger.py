"""runners/merger.py against real git repositories built like the simulated Gerrit's."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ci.changes import ChangeInfo
from runners.base import InfraError
from runners.merger import MergeConflict, MergeError, expand_git_url, prepare_change
from sim import gerrit_git
from sim.gerrit_state import GerritState

AUTHOR = ("Zoë Hyper", "zoe@example.org")
DRIVER = "nova/virt/hyperv/驱动.py"
BASE_TEXT = "line one\nline two\nline three\n"


class Upstream:
    """A bare repository with a branch and Gerrit-style change refs."""

    def __init__(self, root: Path) -> None:
        self.repo = root / "openstack" / "nova.git"
        gerrit_git.init_bare(self.repo)
        self.clock = 1_700_000_000
        tip = self._commit([], {DRIVER: BASE_TEXT, "README": "nova\n"}, "Initial import")
        gerrit_git.update_ref(self.repo, "refs/heads/master", tip)

    @property
    def url(self) -> str:
        return str(self.repo.parent.parent / "{project}.git")

    def _commit(self, parents: list[str], files: dict[str, str], message: str) -> str:
        self.clock += 60
        return gerrit_git.commit(self.repo, parents, files, message, AUTHOR, self.clock)

    def tip(self) -> str:
        rev = gerrit_git.rev_parse(self.repo, "refs/heads/master")
        assert rev
        return rev

    def push(self, number: int, patchset: int, files: dict[str, str], subject: str,
             parent: str | None = None) -> ChangeInfo:
        rev = self._commit([parent or self.tip()], files, subject)
        ref = f"refs/changes/{number % 100:02d}/{number}/{patchset}"
        gerrit_git.update_ref(self.repo, ref, rev)
        return ChangeInfo(project="openstack/nova", branch="master", number=number,
                         patchset=patchset, ref=ref, revision=rev, subject=subject,
                         owner_name="Zoë Hyper")

    def advance(self, files: dict[str, str], message: str) -> str:
        rev = self._commit([self.tip()], files, message)
        gerrit_git.update_ref(self.repo, "refs/heads/master", rev)
        return rev


def git_out(repo: Path, *args: str) -> str:
    argv = ["git", "-c", "core.quotepath=false", "-C", str(repo), *args]
    return subprocess.run(argv, capture_output=True, check=True).stdout.decode()


@pytest.fixture
def upstream(tmp_path: Path) -> Upstream:
    return Upstream(tmp_path / "gerrit")


def test_change_is_merged_onto_the_moved_branch_tip(upstream: Upstream, tmp_path: Path) -> None:
    change = upstream.push(10001, 1, {"nova/virt/hyperv/新文件 é.py": "print('你好')\n"},
                           "Add a file 新")
    moved = upstream.advance({"README": "nova, newer\n"}, "Someone else's change")
    output: list[str] = []

    prepared = prepare_change(upstream.url, change, tmp_path / "build", output.append)

    assert prepared.base_commit == moved
    assert prepared.change_commit == change.revision
    parents = git_out(prepared.checkout, "rev-list", "--parents", "-n1", "HEAD").split()
    assert parents == [prepared.merge_commit, moved, change.revision]
    assert (prepared.checkout / "nova/virt/hyperv/新文件 é.py").read_text() == "print('你好')\n"
    assert (prepared.checkout / "README").read_text() == "nova, newer\n"
    assert any("merged refs/changes/01/10001/1" in line for line in output)

    # The bundle carries the branch at the merge commit: a node can clone it as is.
    clone = tmp_path / "node-checkout"
    subprocess.run(["git", "clone", "--quiet", "--branch", "master", str(prepared.bundle),
                    str(clone)], check=True, capture_output=True)
    assert git_out(clone, "rev-parse", "HEAD").strip() == prepared.merge_commit
    assert (clone / "nova/virt/hyperv/新文件 é.py").is_file()


def test_change_already_on_tip_still_gets_a_merge_commit(upstream: Upstream,
                                                         tmp_path: Path) -> None:
    base = upstream.tip()
    change = upstream.push(10002, 1, {"a.txt": "a\n"}, "Small")

    prepared = prepare_change(upstream.url, change, tmp_path / "build")

    parents = git_out(prepared.checkout, "rev-list", "--parents", "-n1", "HEAD").split()
    assert parents[1:] == [base, change.revision]


def test_conflict_lists_the_conflicting_files(upstream: Upstream, tmp_path: Path) -> None:
    base = upstream.tip()
    first = upstream.push(10003, 1, {DRIVER: "line one\nline 2 by first\nline three\n"}, "First")
    second = upstream.push(10004, 1, {DRIVER: "line one\nline 2 by second\nline three\n",
                                      "other.py": "x = 1\n"}, "Second", parent=base)
    # The first change lands, as Gerrit would merge it.
    gerrit_git.update_ref(upstream.repo, "refs/heads/master", first.revision)

    with pytest.raises(MergeConflict) as info:
        prepare_change(upstream.url, second, tmp_path / "build")

    assert info.value.files == [DRIVER]
    assert DRIVER in str(info.value)
    assert not isinstance(info.value, InfraError)  # the change's situation, not the CI's fault
    # The working tree is left clean (merge aborted), ready for the next build.
    status = git_out(tmp_path / "build" / "src", "status", "--porcelain")
    assert status == ""


def test_cache_is_reused_between_builds(upstream: Upstream, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    one = upstream.push(10005, 1, {"a.txt": "1\n"}, "PS1")
    prepare_change(upstream.url, one, tmp_path / "b1", cache_dir=cache)
    two = upstream.push(10005, 2, {"a.txt": "2\n"}, "PS2")

    prepared = prepare_change(upstream.url, two, tmp_path / "b2", cache_dir=cache)

    assert [p.name for p in cache.iterdir() if p.is_dir()] == ["openstack_nova.git"]
    assert (prepared.checkout / "a.txt").read_text() == "2\n"
    refs = git_out(cache / "openstack_nova.git", "for-each-ref", "--format=%(refname)")
    assert "refs/changes/05/10005/1" in refs and "refs/changes/05/10005/2" in refs


@pytest.mark.parametrize(
    ("ref", "branch"),
    [
        ("--upload-pack=touch /tmp/pwned", "master"),
        ("refs/changes/01/10001/1 extra", "master"),
        ("refs/heads/master", "master"),
        ("refs/changes/01/10001/1", "--upload-pack=x"),
        ("refs/changes/01/10001/1", "bad..branch"),
    ],
)
def test_hostile_refs_and_branches_are_refused(upstream: Upstream, tmp_path: Path, ref: str,
                                               branch: str) -> None:
    change = ChangeInfo(project="openstack/nova", branch=branch, number=10001, patchset=1,
                       ref=ref, revision="", subject="x", owner_name="x")
    with pytest.raises(MergeError, match="not a"):
        prepare_change(upstream.url, change, tmp_path / "build")
    assert not (tmp_path / "build" / "src").exists()


def test_missing_ref_is_an_infra_error(upstream: Upstream, tmp_path: Path) -> None:
    change = ChangeInfo(project="openstack/nova", branch="master", number=10099, patchset=1,
                       ref="refs/changes/99/10099/1", revision="", subject="x", owner_name="x")
    with pytest.raises(InfraError, match="fetch failed"):
        prepare_change(upstream.url, change, tmp_path / "build")


def test_revision_mismatch_is_an_infra_error(upstream: Upstream, tmp_path: Path) -> None:
    change = upstream.push(10006, 1, {"a.txt": "a\n"}, "Small")
    stale = ChangeInfo(**{**change.__dict__, "revision": "0" * 40})
    with pytest.raises(MergeError, match="not the event's revision"):
        prepare_change(upstream.url, stale, tmp_path / "build")


def test_sim_gerrit_changes_merge_and_conflict(tmp_path: Path) -> None:
    """The simulated Gerrit's own repositories: one change lands, a rival one conflicts."""
    state = GerritState(tmp_path / "gerrit")
    project = "openstack/compute-hyperv"
    git_url = (tmp_path / "gerrit").resolve().as_uri() + "/git/{project}.git"
    assert expand_git_url(git_url, project) == state.git_url(project)
    first = state.push(project, files={"驱动.py": "a = 'première'\n"}, subject="Première",
                       owner="Zoë")
    second = state.push(project, files={"驱动.py": "a = '第二'\n"}, subject="第二", owner="李")

    def ref(pushed: dict[str, object]) -> ChangeInfo:
        return ChangeInfo(project=project, branch="master", number=int(str(pushed["change"])),
                         patchset=int(str(pushed["patchset"])), ref=str(pushed["ref"]),
                         revision=str(pushed["revision"]), subject="s", owner_name="o")

    cache = tmp_path / "cache"
    ok = prepare_change(git_url, ref(second), tmp_path / "b1", cache_dir=cache)
    assert (ok.checkout / "驱动.py").read_text(encoding="utf-8") == "a = '第二'\n"

    state.merge(int(str(first["change"])))
    with pytest.raises(MergeConflict) as info:
        prepare_change(git_url, ref(second), tmp_path / "b2", cache_dir=cache)
    assert info.value.files == ["驱动.py"]
