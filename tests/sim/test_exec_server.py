"""The paramiko exec + SFTP fallback server, driven by the real SSH executor."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from runners.base import CommandTimeout, ExecutorError
from runners.ssh import SSHExecutor
from sim.exec_server import ParamikoExecServer


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ParamikoExecServer]:
    srv = ParamikoExecServer(tmp_path_factory.mktemp("exec")).start()
    yield srv
    srv.stop()


@pytest.fixture
def executor(server: ParamikoExecServer) -> Iterator[SSHExecutor]:
    ex = SSHExecutor(server.node_config(), kill_grace=1.0)
    yield ex
    ex.close()


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def test_commands_output_and_exit_codes(executor: SSHExecutor, tmp_path: Path) -> None:
    args = ["a b", "it's", "$(touch x)", "中文 é", ""]
    code = "import json, sys; print(json.dumps(sys.argv[1:])); sys.exit(4)"
    chunks: list[str] = []
    result = executor.run([sys.executable, "-c", code, *args], timeout=20,
                          on_output=chunks.append, cwd=str(tmp_path), env={"X": "1"})
    assert result.exit_code == 4
    assert json.loads(result.stdout) == args
    assert "".join(chunks) == result.stdout
    result = executor.run(["sh", "-c", "echo out; echo 错误 >&2"], timeout=20)
    assert (result.stdout, result.stderr, result.exit_code) == ("out\n", "错误\n", 0)


def test_timeout_kills_the_command(executor: SSHExecutor, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    with pytest.raises(CommandTimeout):
        executor.run(["sh", "-c", 'echo "$$" > "$1"; sleep 300', "sh", str(pidfile)], timeout=1)
    assert not alive(int(pidfile.read_text()))


def test_sftp_put_get_tree(executor: SSHExecutor, tmp_path: Path) -> None:
    remote = tmp_path / "remote" / "日志"
    executor.put("contenu é\n".encode(), str(remote / "a.log"), mode=0o600)
    assert (remote / "a.log").read_bytes() == "contenu é\n".encode()
    assert (remote / "a.log").stat().st_mode & 0o777 == 0o600
    (remote / "sub").mkdir()
    (remote / "sub" / "b.log").write_text("b", encoding="utf-8")
    out = tmp_path / "out"
    written = executor.get_tree(str(remote), out)
    assert sorted(p.relative_to(out).as_posix() for p in written) == ["a.log", "sub/b.log"]
    executor.get(str(remote / "sub" / "b.log"), tmp_path / "b.copy")
    assert (tmp_path / "b.copy").read_text(encoding="utf-8") == "b"
    with pytest.raises(FileNotFoundError):
        executor.get(str(remote / "absent"), tmp_path / "x")


def test_other_keys_are_refused(server: ParamikoExecServer, tmp_path: Path) -> None:
    other = ParamikoExecServer(tmp_path / "other")
    with other:
        ssh = server.node_config().ssh.model_copy(  # type: ignore[union-attr]
            update={"key_file": other.client_key_file})
        node = server.node_config().model_copy(update={"ssh": ssh})
        with pytest.raises(ExecutorError, match="cannot connect"):
            SSHExecutor(node).run(["true"], timeout=10)
        # known_hosts holds no key for the other server's address.
        moved = server.node_config().ssh.model_copy(  # type: ignore[union-attr]
            update={"port": other.port})
        with pytest.raises(ExecutorError, match="not found in known_hosts"):
            SSHExecutor(server.node_config().model_copy(update={"ssh": moved})).run(
                ["true"], timeout=10)
