"""The controller's log archive, unpacked: its files, and nothing that leaves the target."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from runners.log_archive import extract_tar, member_path


def _add(tar: tarfile.TarFile, name: str, data: bytes = b"", **fields: object) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in fields.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data) if data else None)


def make_archive(path: Path) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, "logs", type=tarfile.DIRTYPE)
        _add(tar, "logs/devstack/stack.sh.log.2026", "stack.sh réussi 完成\n".encode())
        # devstack's own link to the current log, relative within the tree
        _add(tar, "logs/devstack/stack.sh.log", type=tarfile.SYMTYPE,
             linkname="stack.sh.log.2026")
        _add(tar, "logs/etc/nova/nova.conf.hard", type=tarfile.LNKTYPE,
             linkname="logs/devstack/stack.sh.log.2026")
        _add(tar, "logs/实例 Zoë's/n-api.log", b"api\n")
        _add(tar, "logs/system/passwd", type=tarfile.SYMTYPE, linkname="/etc/passwd")
        _add(tar, "logs/system/dangling", type=tarfile.SYMTYPE, linkname="gone.log")
        _add(tar, "logs/../../escape.txt", b"out")
        _add(tar, "/abs/escape.txt", b"out")
        _add(tar, "other/top.txt", b"not under logs/")
        _add(tar, "logs/dev/null", type=tarfile.CHRTYPE, devmajor=1, devminor=3)
        _add(tar, "logs/fifo", type=tarfile.FIFOTYPE)
    return path


def test_files_and_in_tree_links_are_written_under_the_target(tmp_path: Path) -> None:
    target = tmp_path / "out" / "controller"
    count = extract_tar(make_archive(tmp_path / "logs.tar.gz"), target)
    written = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert written == ["devstack/stack.sh.log", "devstack/stack.sh.log.2026",
                       "etc/nova/nova.conf.hard", "实例 Zoë's/n-api.log"]
    assert count == 4
    assert (target / "devstack" / "stack.sh.log").read_text(encoding="utf-8") == \
        "stack.sh réussi 完成\n"
    assert not (target / "devstack" / "stack.sh.log").is_symlink()
    assert not list(tmp_path.rglob("escape.txt"))
    assert not (target / "system").exists() and not (target / "dev").exists()


def test_member_paths_stay_below_the_stripped_top() -> None:
    assert str(member_path("logs/a/b.log", "logs")) == "a/b.log"
    assert str(member_path("./logs/./a.log", "logs")) == "a.log"
    assert str(member_path("logs\\win\\c.log", "logs")) == "win/c.log"
    for bad in ("logs", "logs/", "/logs/a", "logs/../a", "logs/a/../../b", "other/a", ""):
        assert member_path(bad, "logs") is None, bad
