"""The WinRM executor (real pywinrm) against the simulated Hyper-V node on loopback."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ci.config import NodeConfig
from runners import winrm as winrm_module
from runners.base import CommandAborted, CommandTimeout, ExecutorError
from runners.winrm import (
    WinRMExecutor,
    encoded_command,
    missing_transport_support,
    step_of,
    windows_command_line,
)
from runners.winrm_output import OutputDecoder, clixml_to_text
from sim.tls import TLSFiles, make_tls_files
from sim.winrm import SimWinRMServer
from sim.wsman_config import WinRMConfig

USER, PASSWORD = "Administrator", "pw-Zoë-7f3a"


@pytest.fixture
def password_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("HYPERV_CI_TEST_WINRM_PW", PASSWORD)
    return "HYPERV_CI_TEST_WINRM_PW"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


class Node(SimWinRMServer):
    """A simulated node and how the executor reaches it (scheme, transport, CA)."""

    transport = "ntlm"
    ca_file: Path | None = None


# The transports an operator would really use: NTLM over http (hyperv-ci's default
# lab setup; every message sealed) and Basic over https on a node that allows Basic.
@pytest.fixture(params=["ntlm", "basic"])
def sim(tmp_path: Path, tls: TLSFiles, request: pytest.FixtureRequest) -> Iterator[Node]:
    if request.param == "basic":
        server = Node("hv-1", tmp_path / "lab", USER, PASSWORD, tls=(tls.cert, tls.key),
                      config=WinRMConfig(allow_basic=True))
        server.ca_file = tls.ca_cert
    else:
        server = Node("hv-1", tmp_path / "lab", USER, PASSWORD)
    server.transport = request.param
    server.start()
    yield server
    server.stop()


def node_for(sim: SimWinRMServer, password_env: str, **winrm: object) -> NodeConfig:
    ca_file = getattr(sim, "ca_file", None)
    access = {
        "scheme": "https" if ca_file else "http",
        "port": sim.port,
        "transport": getattr(sim, "transport", "ntlm"),
        **({"ca_file": str(ca_file)} if ca_file else {}),
        "username": USER,
        "password": {"password_env": password_env},
        "operation_timeout": 1,
        "read_timeout": 3,
        **winrm,
    }
    return NodeConfig.model_validate(
        {"name": sim.node_name, "label": "hyperv", "address": "127.0.0.1", "winrm": access}
    )


@pytest.fixture
def executor(sim: Node, password_env: str) -> Iterator[WinRMExecutor]:
    ex = WinRMExecutor(node_for(sim, password_env), backoff=0.01)
    yield ex
    ex.close()
    if sim.stats["Create"]:  # the node answered at all
        # NTLM over http seals every message; Basic over https leaves that to TLS.
        assert (sim.stats["sealed"] > 0) == (sim.transport == "ntlm")
        assert sim.open_shells == 0  # every path closed the shells it opened


def test_output_is_streamed_before_the_command_ends(
    sim: SimWinRMServer, executor: WinRMExecutor
) -> None:
    sim.faults.set("long-step", slow=0.05, hang=True,
                   stdout="Installing\nInstallation réussie : 安装完成\nStill going")
    chunks: list[str] = []
    with pytest.raises(CommandTimeout):
        executor.run_powershell("# hyperv-ci-step: long-step\n", timeout=2,
                                on_output=chunks.append)
    # The command never finished, yet its lines arrived, over several Receives.
    assert len(chunks) >= 2
    assert "Installation réussie : 安装完成\r\n" in "".join(chunks)


def test_result_collects_streamed_pieces(sim: SimWinRMServer, executor: WinRMExecutor) -> None:
    sim.faults.set("chatty", slow=0.05, stdout="one\ntwo\nthree\nAmorçage terminé — 节点就绪")
    chunks: list[str] = []
    result = executor.run_powershell(
        "# hyperv-ci-step: chatty\n", timeout=10, on_output=chunks.append
    )
    assert result.ok and len(chunks) >= 3
    assert "".join(chunks) == result.stdout
    assert result.stdout.endswith("Amorçage terminé — 节点就绪\r\n")


def test_non_ascii_output_survives_receive_boundaries(
    sim: SimWinRMServer, executor: WinRMExecutor
) -> None:
    text = "实例 Zoë 中" * 20000  # ~280 KB of UTF-8: split mid-character across Receives
    sim.faults.set("service-stderr", stdout=text)
    result = executor.run_powershell("# hyperv-ci-step: service-stderr\n", timeout=20)
    assert result.stdout.endswith(text + "\r\n")
    assert "\ufffd" not in result.stdout


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "cp437"])
def test_native_tool_output_in_its_own_encoding_is_decoded(
    sim: SimWinRMServer, executor: WinRMExecutor, encoding: str
) -> None:
    # A native tool ignores the shell's UTF-8 code page: UTF-16 (with or without a
    # BOM) or the OEM code page; the seed's bug was exactly such text turned to '?'.
    text = "Zoë's VM état: Running ±" if encoding == "cp437" else "实例 Zoë état"
    sim.faults.set("native-tool", stdout=text, stdout_encoding=encoding)
    result = executor.run_powershell("# hyperv-ci-step: native-tool\n", timeout=20)
    assert text in result.stdout, ascii(result.stdout)
    assert "\ufffd" not in result.stdout and "\x00" not in result.stdout


def test_output_decoder_pieces() -> None:
    decoder = OutputDecoder("cp850")
    # Split anywhere, even inside the BOM or a character.
    data = "Ñandú — 节点".encode("utf-16")
    assert "".join(decoder.decode(data[i:i + 1]) for i in range(len(data))) + decoder.decode(
        b"", final=True) == "Ñandú — 节点"
    oem = OutputDecoder("cp850")
    assert oem.decode(b"ok " + "Ñ".encode("cp850"), final=True) == "ok Ñ"
    mixed = OutputDecoder()
    # UTF-8 first, then a tool's UTF-16 text: readable, without NULs.
    assert mixed.decode(b"PS ok\r\n" + "sc ok".encode("utf-16-le"), final=True) == (
        "PS ok\r\nsc ok")


def test_scripts_are_staged_not_inlined(sim: SimWinRMServer, executor: WinRMExecutor) -> None:
    script = "# hyperv-ci-step: configure-services\n" + "Write-Output 'Zoë 中文'\n" * 600
    result = executor.run_powershell(script, timeout=10)
    assert result.ok, result.stderr
    assert set(sim.model.services) == {"nova-compute", "neutron-hyperv-agent"}
    steps = [step for _, step, _ in sim.scripts]
    assert steps == ["winrm-put", "configure-services"]
    assert sim.scripts[-1][2] == script  # arrived whole, non-ASCII intact (UTF-8 with BOM)
    staged = sim.model.files_under("C:\\OpenStack\\hyperv-ci\\scripts")
    assert len(staged) == 1 and staged[0].endswith("-configure-services.ps1")


def test_powershell_errors_come_back_as_text(sim: SimWinRMServer, executor: WinRMExecutor) -> None:
    broken = executor.run_powershell("# hyperv-ci-step: install\nif ($x) {\n", timeout=10)
    assert broken.exit_code == 1 and "ParserError" in broken.stderr
    assert "#< CLIXML" not in broken.stderr
    sim.faults.set("start-services", exit_code=1, stderr="échec: 服务 nova-compute")
    failed = executor.run_powershell("# hyperv-ci-step: start-services\n", timeout=10)
    assert failed.exit_code == 1
    assert "échec: 服务 nova-compute" in failed.stderr


def test_hanging_command_is_terminated_at_its_timeout(
    sim: SimWinRMServer, executor: WinRMExecutor
) -> None:
    sim.faults.set("start-services", hang=True)
    with pytest.raises(CommandTimeout):
        executor.run_powershell("# hyperv-ci-step: start-services\n", timeout=1.5)
    assert sim.signals == [("start-services", "terminate")]
    assert sim.stats["Delete"] >= 1  # the shell was cleaned up too


def test_should_stop_terminates_a_hanging_command(
    sim: SimWinRMServer, executor: WinRMExecutor
) -> None:
    sim.faults.set("install", hang=True)
    running = threading.Event()
    asked: list[float] = []

    def should_stop() -> bool:
        asked.append(time.monotonic())
        return running.is_set()

    def sink(text: str) -> None:
        running.set()  # the script is running on the node: abort the build now

    begun = time.monotonic()
    with pytest.raises(CommandAborted) as info:
        # idempotent: an abort is never retried the way a dropped connection is.
        executor.run_powershell("# hyperv-ci-step: install\n", timeout=600, on_output=sink,
                                idempotent=True, should_stop=should_stop)
    assert not isinstance(info.value, CommandTimeout)
    assert time.monotonic() - begun < 60  # the abort, not the 600 s timeout
    assert len(asked) >= 2
    assert sim.signals == [("install", "terminate")]
    assert [s for _, s, _ in sim.scripts].count("install") == 1
    assert sim.stats["Delete"] >= 1  # the shell was cleaned up too


def test_should_stop_is_asked_within_a_long_operation_timeout(
    tmp_path: Path, password_env: str
) -> None:
    # A real node holds a quiet Receive for the whole OperationTimeout (20 s by
    # default): the executor must shorten it to notice an abort promptly.
    server = SimWinRMServer("hv-slow", tmp_path / "lab", USER, PASSWORD).start()
    try:
        ex = WinRMExecutor(node_for(server, password_env, operation_timeout=40,
                                    read_timeout=50))
        server.faults.set("bootstrap", hang=True)
        stop = threading.Event()
        threading.Timer(1.0, stop.set).start()
        begun = time.monotonic()
        with pytest.raises(CommandAborted):
            ex.run_powershell("# hyperv-ci-step: bootstrap\n", timeout=600,
                              should_stop=stop.is_set)
        assert time.monotonic() - begun < 20  # well inside one 40 s Receive
        assert server.signals == [("bootstrap", "terminate")]
        ex.close()
    finally:
        server.stop()


def test_should_stop_already_true_starts_nothing(
    sim: SimWinRMServer, executor: WinRMExecutor
) -> None:
    with pytest.raises(CommandAborted):
        executor.run_powershell("# hyperv-ci-step: install\n", timeout=10,
                                should_stop=lambda: True)
    assert sim.scripts == []


def test_idempotent_step_is_retried_after_a_dropped_connection(
    sim: SimWinRMServer, executor: WinRMExecutor
) -> None:
    sim.faults.set("install", drop=True, times=1)
    result = executor.run_powershell("# hyperv-ci-step: install\n", timeout=10, idempotent=True)
    assert result.ok
    assert sim.stats["Receive.dropped"] == 1
    assert [s for _, s, _ in sim.scripts].count("install") == 2


def test_no_retry_when_not_idempotent(sim: SimWinRMServer, executor: WinRMExecutor) -> None:
    sim.faults.set("install", drop=True, times=1)
    with pytest.raises(ExecutorError) as info:
        executor.run_powershell("# hyperv-ci-step: install\n", timeout=10)
    assert not isinstance(info.value, CommandTimeout)
    assert [s for _, s, _ in sim.scripts].count("install") == 1


def test_put_get_round_trip_binary_large_non_ascii(
    sim: SimWinRMServer, executor: WinRMExecutor, tmp_path: Path
) -> None:
    data = os.urandom(700 * 1024) + b"\x00\r\n\xff" + "实例 Zoë".encode()
    remote = "C:\\OpenStack\\logs\\实例 Zoë's\\blob.bin"
    executor.put(data, remote)
    assert sim.model.read_file(remote) == data
    assert sim.stats["Send"] >= 10  # chunked
    executor.get(remote.upper(), tmp_path / "out" / "blob.bin")  # Windows paths ignore case
    assert (tmp_path / "out" / "blob.bin").read_bytes() == data
    executor.put(b"", "C:\\empty.txt")
    executor.get("C:\\empty.txt", tmp_path / "empty.txt")
    assert (tmp_path / "empty.txt").read_bytes() == b""


def test_get_missing_file(executor: WinRMExecutor, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        executor.get("C:\\nope\\missing.log", tmp_path / "dl" / "missing.log")
    assert list((tmp_path / "dl").iterdir()) == []  # no partial file left behind


def test_a_service_log_downloads_intact(
    sim: SimWinRMServer, executor: WinRMExecutor, tmp_path: Path
) -> None:
    # What nova-compute writes on the node (UTF-8), as collect-logs leaves it.
    sim.model.write_file("C:\\OpenStack\\logs\\nova-compute.log",
                         "INFO 实例 Zoë spawned\r\n".encode())
    executor.get("C:\\OpenStack\\logs\\nova-compute.log", tmp_path / "nova-compute.log")
    assert "实例 Zoë" in (tmp_path / "nova-compute.log").read_text(encoding="utf-8")


def test_https_with_validated_certificate(tmp_path: Path, password_env: str) -> None:
    tls = make_tls_files(tmp_path / "tls")
    other = make_tls_files(tmp_path / "other")
    server = SimWinRMServer("hv-tls", tmp_path / "lab", USER, PASSWORD, tls=(tls.cert, tls.key))
    server.start()
    try:
        good = WinRMExecutor(node_for(server, password_env, scheme="https", ca_file=tls.ca_cert))
        assert good.run_powershell("# hyperv-ci-step: probe\n", timeout=10).ok
        untrusted = WinRMExecutor(
            node_for(server, password_env, scheme="https", ca_file=other.ca_cert)
        )
        with pytest.raises(ExecutorError, match=r"SSL|certificate"):
            untrusted.run_powershell("# hyperv-ci-step: bootstrap\n", timeout=10)
        unchecked = WinRMExecutor(
            node_for(server, password_env, scheme="https", verify_certificate=False)
        )
        assert unchecked.run_powershell("# hyperv-ci-step: probe\n", timeout=10).ok
        for ex in (good, untrusted, unchecked):
            ex.close()
    finally:
        server.stop()


def test_defaults_are_https_on_5986_with_the_certificate_checked(
    tmp_path: Path, password_env: str
) -> None:
    tls = make_tls_files(tmp_path / "tls")
    server = SimWinRMServer("hv-tls", tmp_path / "lab", USER, PASSWORD, tls=(tls.cert, tls.key))
    server.start()
    try:
        bare = NodeConfig.model_validate({
            "name": "hv-1", "label": "hyperv", "address": "127.0.0.1",
            "winrm": {"username": USER, "password": {"password_env": password_env}}})
        assert WinRMExecutor(bare).endpoint == "https://127.0.0.1:5986/wsman"
        assert bare.winrm is not None and bare.winrm.transport == "ntlm"
        plain = bare.model_copy(update={"winrm": bare.winrm.model_copy(update={"scheme": "http"})})
        assert WinRMExecutor(plain).endpoint == "http://127.0.0.1:5985/wsman"
        # No ca_file: the system's trust store, which does not know the node's CA.
        access = bare.winrm.model_copy(update={"port": server.port})
        default = WinRMExecutor(bare.model_copy(update={"winrm": access}))
        with pytest.raises(ExecutorError, match=r"SSL|certificate"):
            default.run_powershell("# hyperv-ci-step: bootstrap\n", timeout=10)
        default.close()
        assert server.scripts == []
    finally:
        server.stop()


def test_killed_node_raises_executor_error(sim: SimWinRMServer, executor: WinRMExecutor) -> None:
    sim.kill()
    with pytest.raises(ExecutorError):
        executor.run_powershell("# hyperv-ci-step: teardown\n", timeout=10, idempotent=True)
    with pytest.raises(ExecutorError):
        executor.put(b"x", "C:\\x.txt")
    sim.revive()
    assert executor.run_powershell("# hyperv-ci-step: teardown\n", timeout=10).ok


def test_bad_password_is_an_executor_error_and_never_logged(
    sim: SimWinRMServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("WRONG_PW", "wrong-Zoë-secret")
    caplog.set_level(logging.DEBUG)
    ex = WinRMExecutor(node_for(sim, "WRONG_PW"), backoff=0.01)
    with pytest.raises(ExecutorError, match="credentials"):
        ex.run_powershell("# hyperv-ci-step: teardown\n", timeout=10, idempotent=True, retries=1)
    assert "wrong-Zoë-secret" not in caplog.text and PASSWORD not in caplog.text
    assert sim.scripts == []


def test_transport_without_its_library_is_a_clear_error(
    sim: SimWinRMServer, password_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import winrm.transport

    monkeypatch.setattr(winrm.transport, "HAVE_KERBEROS", False)
    with pytest.raises(ExecutorError, match=r"'kerberos' is not available.*'kerberos' extra"):
        WinRMExecutor(node_for(sim, password_env, transport="kerberos"))
    # CredSSP ships with hyperv-ci (requests-credssp): set up without complaint.
    assert missing_transport_support("credssp") is None
    WinRMExecutor(node_for(sim, password_env, transport="credssp"))


def test_helpers() -> None:
    assert step_of("\ufeff\n# hyperv-ci-step: collect-logs\n") == "collect-logs"
    assert step_of("Get-Service") == "script"
    assert windows_command_line(["powershell", "-File", "C:\\a b\\x&y.ps1"]) == (
        'powershell -File "C:\\a b\\x&y.ps1"'
    )
    with pytest.raises(ValueError):
        windows_command_line(['C:\\"x'])
    with pytest.raises(ValueError):
        encoded_command("# x\n" + "a" * 4000)
    clixml = (
        '#< CLIXML\r\n<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">'
        '<Obj S="progress" RefId="0"><MS><S N="Activity">Preparing</S></MS></Obj>'
        '<S S="Error">Zo&#xEB; &lt;x&gt; a_x005F_x0041_b_x000D__x000A_</S></Objs>'
    )
    assert clixml_to_text(clixml) == "Zoë <x> a_x0041_b\n"
    assert clixml_to_text("plain error\r\n") == "plain error\r\n"


def test_commands_share_one_authenticated_session(
    sim: Node, executor: WinRMExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each shell's Delete keeps the HTTP session: one NTLM logon for a node's
    back-to-back scripts and files, a new one after an idle gap or a dropped link."""
    ntlm = sim.transport == "ntlm"
    executor.connect()  # logs on now (NTLM: pywinrm's empty sealed-session message)
    assert sim.stats["ntlm"] == (1 if ntlm else 0) and sim.stats["Create"] == 0
    assert executor.run_powershell("# hyperv-ci-step: probe\n", timeout=10).ok
    executor.put_many([(b"one", "C:\\hyperv-ci\\a.txt"),
                       ("deux é".encode(), "C:\\hyperv-ci\\b.txt")])
    assert executor.run_powershell("# hyperv-ci-step: probe\n", timeout=10).ok
    assert sim.stats["Create"] == 3
    assert sim.stats["ntlm"] == (1 if ntlm else 0)
    assert sim.model.read_file("C:\\hyperv-ci\\b.txt") == "deux é".encode()
    assert sim._httpd is not None
    sim._httpd.reset_connections()  # the kept connection is gone
    assert executor.run_powershell("# hyperv-ci-step: probe\n", timeout=10).ok
    # requests_ntlm logs on by itself on the new connection, but a sealed session
    # cannot move to it (the node answers 400): the executor starts a new session.
    assert sim.stats["ntlm"] == (3 if ntlm else 0)
    monkeypatch.setattr(winrm_module, "SESSION_IDLE", 0.0)  # every gap is too long now
    assert executor.run_powershell("# hyperv-ci-step: probe\n", timeout=10).ok
    assert sim.stats["ntlm"] == (4 if ntlm else 0)
    assert sim.stats["Create"] == 5  # the refused Create never reached the shell service
