"""The SSH executor against OpenSSH's real sshd on loopback."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from ci.config import NodeConfig, SSHAccess
from runners.base import CommandAborted, CommandTimeout, ExecutorError
from runners.ssh import SSHExecutor
from sim.sshd import OpenSSHServer, free_port

pytestmark = pytest.mark.sshd

TRICKY_ARGS = [
    "a b", "it's", '"double"', "$(touch {marker})", "`touch {marker}`", "中文 名字 é",
    "; rm -rf /nonexistent", "back\\slash", "*", "", "new\nline", "-n", "$HOME", "'--'",
]


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def test_output_streams_as_it_is_produced(executor: SSHExecutor, tmp_path: Path) -> None:
    # The command waits for a flag the test only creates after seeing the first
    # line: unless output streams, it could never finish.
    flag = tmp_path / "flag"
    script = 'echo first; while [ ! -e "$1" ]; do sleep 0.05; done; echo second >&2; echo third'
    chunks: list[str] = []

    def sink(text: str) -> None:
        chunks.append(text)
        if "first" in text:
            flag.touch()

    result = executor.run(["sh", "-c", script, "sh", str(flag)], timeout=20, on_output=sink)
    assert result.exit_code == 0
    assert result.stdout == "first\nthird\n"
    assert result.stderr == "second\n"
    assert len(chunks) >= 2 and chunks[0] == "first\n"
    assert "".join(chunks).count("second") == 1


@pytest.mark.parametrize(("argv", "code"), [
    (["true"], 0), (["sh", "-c", "exit 3"], 3), (["no-such-command-hyperv-ci"], 127),
])
def test_exit_codes(executor: SSHExecutor, argv: list[str], code: int) -> None:
    result = executor.run(argv, timeout=20)
    assert result.exit_code == code
    assert result.ok is (code == 0)


def test_non_ascii_output_survives_split_packets(executor: SSHExecutor) -> None:
    # '中' is split across two writes (and so two packets); é goes to stderr.
    script = r"printf '\344'; sleep 0.2; printf '\270\255 ok\n'; printf 'caf\303\251\n' >&2"
    result = executor.run(["sh", "-c", script], timeout=20)
    assert result.stdout == "中 ok\n"
    assert result.stderr == "café\n"


def test_output_that_trails_the_exit_status_is_kept(executor: SSHExecutor) -> None:
    # sshd sends the exit status when the command ends; a child still writing
    # then is only done at the channel's EOF.
    script = "(sleep 0.3; printf 'late\\n'; printf 'après\\n' >&2) & exit 4"
    result = executor.run(["sh", "-c", script], timeout=20)
    assert (result.exit_code, result.stdout, result.stderr) == (4, "late\n", "après\n")


def test_a_background_child_holding_the_output_does_not_hang_the_command(
        executor: SSHExecutor) -> None:
    # No EOF comes while `sleep` keeps the pipes open: the command still ends
    # (within EOF_GRACE), not at its timeout.
    result = executor.run(["sh", "-c", "sleep 6 & echo started"], timeout=5)
    assert (result.exit_code, result.stdout) == (0, "started\n")


def test_invalid_utf8_is_replaced_not_fatal(executor: SSHExecutor) -> None:
    result = executor.run(["printf", r"bad \377 byte\n"], timeout=20)
    assert result.stdout == "bad \ufffd byte\n"


def test_argv_reaches_the_node_verbatim(executor: SSHExecutor, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    args = [a.format(marker=marker) for a in TRICKY_ARGS]
    code = "import json, sys; print(json.dumps(sys.argv[1:]))"
    result = executor.run([sys.executable, "-c", code, *args], timeout=20)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == args
    assert not marker.exists()


def test_env_and_cwd(executor: SSHExecutor, remote_dir: Path) -> None:
    env = {"CHANGE_SUBJECT": "Fix 'quotes' $(id) 修复", "EMPTY": ""}
    code = ("import os, json; "
            "print(json.dumps([os.getcwd(), os.environ['CHANGE_SUBJECT'], os.environ['EMPTY']]))")
    result = executor.run([sys.executable, "-c", code], timeout=20, env=env, cwd=str(remote_dir))
    assert json.loads(result.stdout) == [str(remote_dir), env["CHANGE_SUBJECT"], ""]


def test_bad_env_name_is_refused(executor: SSHExecutor) -> None:
    with pytest.raises(ValueError, match="environment"):
        executor.run(["true"], timeout=5, env={"A; touch x": "1"})


def test_missing_cwd_fails_the_command(executor: SSHExecutor, tmp_path: Path) -> None:
    result = executor.run(["true"], timeout=20, cwd=str(tmp_path / "absent"))
    assert result.exit_code == 125
    assert "absent" in result.stderr


def test_timeout_kills_the_remote_process_tree(executor: SSHExecutor, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    # A shell plus a background child: both must be gone after the timeout.
    script = 'sleep 300 & echo "$$ $!" > "$1"; echo started; wait'
    seen: list[str] = []
    with pytest.raises(CommandTimeout):
        executor.run(["sh", "-c", script, "sh", str(pids)], timeout=1.5, on_output=seen.append)
    assert "started\n" in "".join(seen)
    shell_pid, child_pid = (int(p) for p in pids.read_text().split())
    assert not alive(shell_pid)
    assert not alive(child_pid)
    # The connection is still usable afterwards.
    assert executor.run(["echo", "still here"], timeout=20).stdout == "still here\n"


def test_should_stop_kills_the_remote_process_tree(executor: SSHExecutor, tmp_path: Path) -> None:
    # A superseded build's stack.sh: the command would run for 5 minutes (the
    # timeout is longer still); the abort must stop it within seconds.
    pids = tmp_path / "pids"
    script = 'sleep 300 & echo "$$ $!" > "$1"; echo started; wait'
    started = threading.Event()
    asked: list[float] = []

    def should_stop() -> bool:
        asked.append(time.monotonic())
        return started.is_set()

    def sink(text: str) -> None:
        if "started" in text:
            started.set()

    begun = time.monotonic()
    with pytest.raises(CommandAborted) as info:
        executor.run(["sh", "-c", script, "sh", str(pids)], timeout=600, on_output=sink,
                     should_stop=should_stop)
    assert not isinstance(info.value, CommandTimeout)
    assert time.monotonic() - begun < 60  # stopped by the abort, not the 600 s timeout
    shell_pid, child_pid = (int(p) for p in pids.read_text().split())
    assert not alive(shell_pid)
    assert not alive(child_pid)
    assert len(asked) >= 2  # asked while the command ran, not only before it started
    # The connection is still usable afterwards.
    assert executor.run(["echo", "still here"], timeout=20).stdout == "still here\n"


def test_should_stop_already_true_starts_nothing(executor: SSHExecutor, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    with pytest.raises(CommandAborted):
        executor.run(["touch", str(marker)], timeout=20, should_stop=lambda: True)
    assert not marker.exists()


def test_a_quiet_should_stop_changes_nothing(executor: SSHExecutor) -> None:
    result = executor.run(["sh", "-c", "sleep 1; echo done"], timeout=20,
                          should_stop=lambda: False)
    assert result.ok and result.stdout == "done\n"


def test_a_failing_sink_stops_the_remote_command(executor: SSHExecutor, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    script = 'echo "$$" > "$1"; echo go; sleep 300'

    def sink(text: str) -> None:
        if "go" in text:
            raise RuntimeError("viewer went away")

    with pytest.raises(RuntimeError, match="viewer"):
        executor.run(["sh", "-c", script, "sh", str(pidfile)], timeout=60, on_output=sink)
    assert not alive(int(pidfile.read_text()))


def test_put_get_and_get_tree(executor: SSHExecutor, remote_dir: Path, tmp_path: Path) -> None:
    data = "résumé 中文\n".encode() * 5000  # several SFTP chunks
    target = remote_dir / "deep" / "er" / "ファイル.txt"
    executor.put(data, str(target), mode=0o750)
    assert target.read_bytes() == data
    assert target.stat().st_mode & 0o777 == 0o750
    executor.put(b"short", str(target))  # overwrite truncates
    assert target.read_bytes() == b"short"

    local = tmp_path / "local" / "copy.txt"
    executor.get(str(target), local)
    assert local.read_bytes() == b"short"

    (remote_dir / "logs" / "n-api").mkdir(parents=True)
    (remote_dir / "logs" / "n-api" / "api.log").write_text("ok ✓\n", encoding="utf-8")
    (remote_dir / "logs" / "stack.sh.log.2024").write_text("stacked\n", encoding="utf-8")
    (remote_dir / "logs" / "stack.sh.log").symlink_to("stack.sh.log.2024")
    (remote_dir / "logs" / "loop").symlink_to(remote_dir / "logs")
    (remote_dir / "logs" / "dangling").symlink_to(remote_dir / "nowhere")
    out = tmp_path / "collected"
    written = executor.get_tree(str(remote_dir / "logs"), out)
    assert sorted(p.relative_to(out).as_posix() for p in written) == [
        "n-api/api.log", "stack.sh.log", "stack.sh.log.2024"]
    assert (out / "stack.sh.log").read_text(encoding="utf-8") == "stacked\n"
    assert (out / "n-api" / "api.log").read_text(encoding="utf-8") == "ok ✓\n"


def test_get_of_a_missing_file_is_a_file_error(executor: SSHExecutor, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        executor.get(str(tmp_path / "absent"), tmp_path / "out")


def test_reconnects_after_a_drop(executor: SSHExecutor) -> None:
    assert executor.run(["echo", "1"], timeout=20).stdout == "1\n"
    transport = executor._client.get_transport()  # type: ignore[union-attr]
    assert transport is not None
    transport.close()  # what a network blip looks like to paramiko
    assert executor.run(["echo", "2"], timeout=20).stdout == "2\n"


def test_unknown_host_key_is_refused(sshd: OpenSSHServer, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("", encoding="ascii")
    node = sshd.node_config().model_copy(
        update={"ssh": sshd.node_config().ssh.model_copy(update={"known_hosts": known})})  # type: ignore[union-attr]
    with pytest.raises(ExecutorError, match="not found in known_hosts"):
        SSHExecutor(node).run(["true"], timeout=10)


def test_wrong_host_key_is_refused(sshd: OpenSSHServer, tmp_path: Path) -> None:
    other = OpenSSHServer(tmp_path / "other")
    other._generate_keys()  # keys only: a different host key for the same address
    pub = (tmp_path / "other" / "host_ed25519.pub").read_text(encoding="ascii").split()
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} {pub[0]} {pub[1]}\n", encoding="ascii")
    ssh = SSHAccess(port=sshd.port, username=sshd.username, key_file=sshd.client_key_file,
                    known_hosts=known)
    node = NodeConfig(name="evil", label="devstack", address="127.0.0.1", ssh=ssh)
    with pytest.raises(ExecutorError, match="does not match"):
        SSHExecutor(node).run(["true"], timeout=10)


def test_wrong_client_key_is_refused(sshd: OpenSSHServer, tmp_path: Path) -> None:
    other = OpenSSHServer(tmp_path / "other")
    other._generate_keys()
    ssh = sshd.node_config().ssh.model_copy(update={"key_file": other.client_key_file})  # type: ignore[union-attr]
    node = sshd.node_config().model_copy(update={"ssh": ssh})
    with pytest.raises(ExecutorError, match="cannot connect"):
        SSHExecutor(node).run(["true"], timeout=10)


def test_node_down_is_an_executor_error(sshd: OpenSSHServer) -> None:
    ssh = sshd.node_config().ssh.model_copy(update={"port": free_port()})  # type: ignore[union-attr]
    node = sshd.node_config().model_copy(update={"ssh": ssh})
    executor = SSHExecutor(node, connect_timeout=3)
    with pytest.raises(ExecutorError):
        executor.run(["true"], timeout=10)
    with pytest.raises(ExecutorError):
        executor.put(b"x", "/tmp/x")


def test_node_config_keeps_the_key_private(sshd: OpenSSHServer) -> None:
    assert os.stat(sshd.client_key_file).st_mode & 0o077 == 0
    assert sshd.known_hosts_file.read_text(encoding="ascii").startswith(
        f"[127.0.0.1]:{sshd.port} ssh-ed25519 ")
