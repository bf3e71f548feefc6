"""The simulated WinRM node against real, unmodified pywinrm over loopback.

The node is a default Windows Server 2022 one unless a test says otherwise:
NTLM with message encryption over http; Basic only where a test allows it.
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import winrm
from winrm.exceptions import (
    InvalidCredentialsError,
    WinRMOperationTimeoutError,
    WSManFaultError,
)
from winrm.protocol import Protocol

from sim.hyperv_host import HyperVHost
from sim.tls import make_tls_files
from sim.windows_shell import script_parameters, split_command_line, step_name
from sim.winrm import SimWinRMServer
from sim.wsman_config import WinRMConfig
from sim.wsman_xml import FAULT_QUOTA_MAX_SHELLS, FAULT_SHELL_NOT_FOUND, FAULT_TIMEOUT

USER, PASSWORD = "Administrator", "s3cret-pw"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[SimWinRMServer]:
    sim = SimWinRMServer("hv-1", tmp_path / "lab", USER, PASSWORD).start()
    yield sim
    sim.stop()


def session(sim: SimWinRMServer, password: str = PASSWORD) -> winrm.Session:
    return winrm.Session(
        sim.url,
        auth=(USER, password),
        transport="ntlm",
        server_cert_validation="ignore",
        operation_timeout_sec=1,
        read_timeout_sec=3,
    )


def protocol(sim: SimWinRMServer, operation_timeout: int = 1) -> Protocol:
    return Protocol(
        sim.url,
        transport="ntlm",
        username=USER,
        password=PASSWORD,
        server_cert_validation="ignore",
        operation_timeout_sec=operation_timeout,
        read_timeout_sec=operation_timeout + 2,
    )


def encoded(script: str) -> str:
    return "powershell -encodedcommand " + base64.b64encode(script.encode("utf-16-le")).decode()


def test_run_ps_full_exchange_and_recorded_script(server: SimWinRMServer) -> None:
    server.faults.set("probe", stdout="ready", exit_code=0)
    result = session(server).run_ps("# hyperv-ci-step: probe\nWrite-Output 'ready'\n")
    assert result.status_code == 0
    assert result.std_out == b"ready\r\n"
    for action in ("Create", "Command", "Receive", "Signal", "Delete"):
        assert server.stats[action] >= 1, action
    assert server.scripts == [
        ("hv-1", "probe", "# hyperv-ci-step: probe\nWrite-Output 'ready'\n")
    ]


def test_output_streams_over_several_receives(server: SimWinRMServer) -> None:
    server.faults.set("slow", slow=0.1, stdout="one\ntwo\nthree")
    proto = protocol(server)
    shell = proto.open_shell()
    command = proto.run_command(shell, encoded("# hyperv-ci-step: slow\n"))
    pieces: list[bytes] = []
    done = False
    while not done:
        try:
            out, _err, code, done = proto.get_command_output_raw(shell, command)
        except WinRMOperationTimeoutError:
            continue
        if out:
            pieces.append(out)
    proto.cleanup_command(shell, command)
    proto.close_shell(shell)
    assert code == 0
    assert len(pieces) >= 2
    assert b"".join(pieces) == b"one\r\ntwo\r\nthree\r\n"


def test_relates_to_echoes_message_id_verbatim(tmp_path: Path) -> None:
    # A raw, unencrypted request: only a node configured for Basic over http takes it.
    open_node = SimWinRMServer("hv-1", tmp_path / "lab", USER, PASSWORD, config=WinRMConfig(
        allow_basic=True, allow_unencrypted=True)).start()
    message_id = f"uuid:{uuid.uuid4()}"
    try:
        reply = raw_create(open_node.url, message_id)
    finally:
        open_node.stop()
    assert reply.status_code == 200
    assert reply.headers["Content-Type"].startswith("application/soap+xml")
    assert f"RelatesTo>{message_id}</" in reply.text
    assert 'Name="ShellId"' in reply.text and "ShellId>" in reply.text


def raw_create(url: str, message_id: str, ca: Path | None = None,
               password: str = PASSWORD) -> requests.Response:
    """A shell Create sent as plain SOAP with Basic credentials (no pywinrm)."""
    body = (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
        'xmlns:wsa="http://schemas.xmlsoap.org/ws/2004/08/addressing" '
        'xmlns:wsman="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"><s:Header>'
        "<wsa:Action>http://schemas.xmlsoap.org/ws/2004/09/transfer/Create</wsa:Action>"
        f"<wsa:MessageID>{message_id}</wsa:MessageID>"
        "<wsman:ResourceURI>http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd"
        "</wsman:ResourceURI></s:Header><s:Body/></s:Envelope>"
    )
    return requests.post(
        url,
        data=body.encode(),
        auth=(USER, password),
        headers={"Content-Type": "application/soap+xml;charset=UTF-8"},
        timeout=5,
        verify=str(ca) if ca else True,
    )


def test_operation_timeout_fault_is_retried_by_pywinrm(server: SimWinRMServer) -> None:
    # Quiet for longer than the OperationTimeout (1 s): the Receive times out once.
    server.faults.set("quiet", slow=1.5, stdout="late")
    result = session(server).run_ps("# hyperv-ci-step: quiet\n")
    assert result.status_code == 0 and result.std_out == b"late\r\n"
    assert server.stats["Receive.timeout"] >= 1
    assert server.stats[f"Receive.fault.{FAULT_TIMEOUT}"] == server.stats["Receive.timeout"]


def test_bad_credentials_get_401(server: SimWinRMServer) -> None:
    with pytest.raises(InvalidCredentialsError):
        session(server, password="wrong").run_ps("# hyperv-ci-step: x\n")
    assert server.scripts == []


def test_ntlm_authenticates_and_seals_every_message(server: SimWinRMServer) -> None:
    # pywinrm's "ntlm" over http: a Negotiate handshake, then MS-WSMV encryption.
    ntlm = winrm.Session(server.url, auth=(USER, PASSWORD), transport="ntlm",
                         server_cert_validation="ignore", operation_timeout_sec=1,
                         read_timeout_sec=3)
    server.faults.set("probe", stdout="prêt 就绪", exit_code=0)
    result = ntlm.run_ps("# hyperv-ci-step: probe\nWrite-Output 'prêt 就绪'\n")
    assert result.status_code == 0 and "prêt".encode("cp437") in result.std_out
    assert server.stats["ntlm"] == 1
    # Create, Command, Receive.., Signal, Delete: every one sealed both ways.
    assert server.stats["sealed"] >= 5
    assert server.scripts == [
        ("hv-1", "probe", "# hyperv-ci-step: probe\nWrite-Output 'prêt 就绪'\n")]


def test_ntlm_with_a_wrong_password_is_refused(server: SimWinRMServer) -> None:
    wrong = winrm.Session(server.url, auth=(USER, "wrong"), transport="ntlm",
                          server_cert_validation="ignore", operation_timeout_sec=1,
                          read_timeout_sec=3)
    with pytest.raises(InvalidCredentialsError):
        wrong.run_ps("# hyperv-ci-step: x\n")
    assert server.scripts == [] and server.stats["ntlm"] == 0


def test_ntlm_user_cannot_have_two_passwords_at_once(server: SimWinRMServer,
                                                     tmp_path: Path) -> None:
    # pyspnego reads one process-wide credential file: a clash is refused, not guessed.
    other = SimWinRMServer("hv-2", tmp_path / "lab2", USER, "another-password")
    with pytest.raises(ValueError, match="different password"):
        other.start()
    with SimWinRMServer("hv-3", tmp_path / "lab3", USER, PASSWORD):
        pass  # the same password is fine


def test_unknown_shell_is_a_soap_fault_with_500(server: SimWinRMServer) -> None:
    with pytest.raises(WSManFaultError) as info:
        protocol(server).run_command("00000000-DEAD-BEEF-0000-000000000000", "hostname")
    assert info.value.code == 500
    assert info.value.wsman_fault_code == FAULT_SHELL_NOT_FOUND


def test_codepage_437_by_default_and_65001_on_request(server: SimWinRMServer) -> None:
    server.faults.set("hello", stdout="héllo 中文")
    assert session(server).run_ps("# hyperv-ci-step: hello\n").std_out == b"h\x82llo ??\r\n"
    proto = protocol(server)
    shell = proto.open_shell(codepage=65001)
    command = proto.run_command(shell, encoded("# hyperv-ci-step: hello\n"))
    out, _err, code = proto.get_command_output(shell, command)
    proto.close_shell(shell)
    assert (out.decode("utf-8"), code) == ("héllo 中文\r\n", 0)


def test_inlined_long_script_fails_like_cmd_exe(server: SimWinRMServer) -> None:
    body = "# hyperv-ci-step: install\n" + "Write-Output 'padding line'\n" * 150
    assert len(body) > 3100
    result = session(server).run_ps(body)
    assert (result.status_code, result.std_out) == (1, b"")
    assert result.std_err == b"The command line is too long.\r\n"
    assert server.scripts == []  # cmd.exe refused it: PowerShell never saw the script
    short = body[: body.rindex("\n", 0, 2500) + 1]  # whole lines: a script that parses
    assert session(server).run_ps(short).status_code == 0


def test_syntax_error_is_rejected_as_powershell_would(server: SimWinRMServer) -> None:
    result = session(server).run_ps("# hyperv-ci-step: configure-services\nif ($x) {\n")
    assert result.status_code == 1
    assert b"ParserError" in result.std_err and b"At line:2" in result.std_err
    assert server.model.services == {}  # the step did not run
    assert server.scripts[0][1] == "configure-services"


def test_fault_exit_code_and_stderr(server: SimWinRMServer) -> None:
    server.faults.set("start-services", exit_code=3, stderr="service failed: Zoë", times=1)
    sess = session(server)
    first = sess.run_ps("# hyperv-ci-step: configure-services\n")
    failed = sess.run_ps("# hyperv-ci-step: start-services\n")
    assert first.status_code == 0
    assert failed.status_code == 3 and b"service failed: Zo" in failed.std_err
    assert sess.run_ps("# hyperv-ci-step: start-services\n").status_code == 0  # times=1


def test_hang_until_terminate_signal(server: SimWinRMServer) -> None:
    server.faults.set("teardown", hang=True)
    proto = protocol(server)
    shell = proto.open_shell()
    command = proto.run_command(shell, encoded("# hyperv-ci-step: teardown\n"))
    with pytest.raises(WinRMOperationTimeoutError):
        while True:
            proto.get_command_output_raw(shell, command)
    proto.cleanup_command(shell, command)
    proto.close_shell(shell)
    assert server.signals == [("teardown", "terminate")]


def test_dropped_connection_resets_tcp(server: SimWinRMServer) -> None:
    server.faults.set("install", drop=True, times=1)
    with pytest.raises(requests.exceptions.ConnectionError):
        session(server).run_ps("# hyperv-ci-step: install\n")
    assert session(server).run_ps("# hyperv-ci-step: install\n").status_code == 0


def test_kill_refuses_connections_and_revive_restores(server: SimWinRMServer) -> None:
    server.model.add_vm("instance-0001")
    server.kill()
    with pytest.raises(requests.exceptions.ConnectionError):
        session(server).run_ps("# hyperv-ci-step: probe\n")
    assert json.loads(server.model.state_file.read_text())["alive"] is False
    server.revive()
    assert session(server).run_ps("# hyperv-ci-step: probe\n").status_code == 0
    assert server.model.vms == {"instance-0001": "Running"}


def test_job_steps_change_the_model_and_publish_services(server: SimWinRMServer) -> None:
    sess = session(server)
    server.model.add_vm("instance-0001")
    server.model.add_vm("migrating", planned=True)
    for step in ("configure-services", "start-services"):
        assert sess.run_ps(f"# hyperv-ci-step: {step}\n").status_code == 0
    state = json.loads((server.model.state_file).read_text(encoding="utf-8"))
    assert state["node"] == "hv-1"
    assert state["services"] == {"nova-compute": "Running", "neutron-hyperv-agent": "Running"}
    assert sess.run_ps("# hyperv-ci-step: collect-logs\n").status_code == 0
    log = server.model.read_file("c:\\openstack\\LOGS\\nova-compute.log")
    assert log is not None and "实例 Zoë" in log.decode("utf-8")
    assert server.model.read_file("C:\\OpenStack\\hyperv-ci\\logs.zip") is not None  # staging
    assert sess.run_ps("# hyperv-ci-step: teardown\n").status_code == 0
    assert (server.model.services, server.model.vms, server.model.planned_vms) == ({}, {}, set())
    assert server.model.files_under("C:\\OpenStack\\logs") == []
    published = json.loads((server.model.state_file).read_text(encoding="utf-8"))
    assert published["services"] == {}


def test_start_services_fails_when_services_are_missing(server: SimWinRMServer) -> None:
    result = session(server).run_ps("# hyperv-ci-step: start-services\n")
    assert result.status_code == 1
    assert b"Cannot find any service with service name 'nova-compute'" in result.std_err


def test_file_script_without_bom_is_read_as_ansi(tmp_path: Path) -> None:
    host = HyperVHost("hv-x", tmp_path)
    text = "# hyperv-ci-step: install\n$Name = 'Zoë'\n"
    host.write_file("C:\\s\\a.ps1", text.encode("utf-8"))
    host.write_file("C:\\s\\b.ps1", b"\xef\xbb\xbf" + text.encode("utf-8"))

    class Sink:
        step = ""

        def write(self, text: str, *, stderr: bool = False) -> None:
            pass

        def wait(self, seconds: float | None) -> bool:
            return False

        def read_stdin(self) -> bytes | None:
            return b""

        def drop_connection(self) -> None:
            pass

    for path in ("C:\\s\\a.ps1", "c:\\S\\B.ps1"):
        assert host.execute(f'powershell -NoProfile -File "{path}"', Sink()) == 0
    assert [script_parameters(s)["name"] for _, _, s in host.scripts] == ["ZoÃ«", "Zoë"]
    assert host.execute("powershell -File C:\\missing.ps1", Sink()) == -196608


def test_command_line_helpers() -> None:
    assert split_command_line('powershell -File "C:\\a b\\x.ps1" -x') == [
        "powershell",
        "-File",
        "C:\\a b\\x.ps1",
        "-x",
    ]
    assert step_name("\ufeff\n# hyperv-ci-step: collect-logs\nfoo") == "collect-logs"
    assert step_name("Write-Output 1") == ""
    assert script_parameters("$Path = 'C:\\it''s 中文'\n$x = 1\n") == {"path": "C:\\it's 中文"}


def test_https_with_validated_certificate(tmp_path: Path) -> None:
    # Basic over https: the node must allow Basic; TLS makes it encrypted.
    tls = make_tls_files(tmp_path / "tls")
    sim = SimWinRMServer("hv-tls", tmp_path, USER, PASSWORD, tls=(tls.cert, tls.key),
                         config=WinRMConfig(allow_basic=True)).start()
    try:
        assert sim.url.startswith("https://127.0.0.1:")
        sess = winrm.Session(
            sim.url,
            auth=(USER, PASSWORD),
            transport="ssl",
            server_cert_validation="validate",
            ca_trust_path=str(tls.ca_cert),
            operation_timeout_sec=1,
            read_timeout_sec=3,
        )
        assert sess.run_ps("# hyperv-ci-step: probe\n").status_code == 0
    finally:
        sim.stop()


def test_stop_leaves_no_threads(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    sim = SimWinRMServer("hv-t", tmp_path, USER, PASSWORD).start()
    sim.faults.set("hang", hang=True)
    proto = protocol(sim)
    shell = proto.open_shell()
    proto.run_command(shell, encoded("# hyperv-ci-step: hang\n"))
    sim.stop()
    assert set(threading.enumerate()) <= before


# -- a default Windows Server 2022 node's quotas --------------------------------------------
def test_the_31st_shell_of_a_user_gets_the_quota_fault(server: SimWinRMServer) -> None:
    proto = protocol(server)
    shells = [proto.open_shell() for _ in range(30)]  # MaxShellsPerUser: 30
    with pytest.raises(WSManFaultError) as info:
        proto.open_shell()
    assert info.value.code == 500
    assert info.value.wsman_fault_code == FAULT_QUOTA_MAX_SHELLS
    assert info.value.fault_subcode == "w:QuotaLimit"
    assert "maximum number of 30 concurrent shells" in (info.value.reason or "")
    assert server.open_shells == 30
    proto.close_shell(shells.pop())  # a closed shell frees its place
    shells.append(proto.open_shell())
    for shell in shells:
        proto.close_shell(shell)
    assert server.open_shells == 0


def test_an_idle_shell_is_deleted_and_frees_its_place(tmp_path: Path) -> None:
    now = [1000.0]
    sim = SimWinRMServer("hv-1", tmp_path / "lab", USER, PASSWORD, clock=lambda: now[0],
                         config=WinRMConfig(idle_timeout_ms=60_000, max_shells_per_user=2))
    with sim:
        proto = protocol(sim)
        used, idle = proto.open_shell(), proto.open_shell()
        for _ in range(3):  # each request naming a shell restarts its idle time
            now[0] += 40
            proto.cleanup_command(used, proto.run_command(used, "hostname"))
        assert sim.open_shells == 1  # `idle` was not named for 120 s: deleted
        with pytest.raises(WSManFaultError) as info:
            proto.run_command(idle, "hostname")
        assert info.value.wsman_fault_code == FAULT_SHELL_NOT_FOUND
        assert "shell was not found" in (info.value.reason or "")
        assert sim.stats["Shell.idle-deleted"] == 1
        proto.close_shell(proto.open_shell())  # its place is free again (quota 2)
        proto.close_shell(used)


def test_idle_timeout_default_is_two_hours() -> None:
    # winrm get winrm/config on Server 2022 (and the PowerShell reference): 7200000 ms.
    config = WinRMConfig()
    assert (config.idle_timeout, config.max_shells_per_user, config.max_envelope_size_kb,
            config.max_timeout_ms) == (7200.0, 30, 500, 60000)
    assert not config.allow_basic and not config.allow_unencrypted


def test_receive_is_held_until_the_operation_timeout(server: SimWinRMServer) -> None:
    # Output comes after 1.5 s; the client's OperationTimeout is 4 s: one Receive
    # is held until the output is there, without a timeout fault in between.
    server.faults.set("late", slow=1.5, stdout="late")
    proto = protocol(server, operation_timeout=4)
    shell = proto.open_shell()
    command = proto.run_command(shell, encoded("# hyperv-ci-step: late\n"))
    out, _err, code, done = proto.get_command_output_raw(shell, command)
    while not done:
        more, _err, code, done = proto.get_command_output_raw(shell, command)
        out += more
    proto.close_shell(shell)
    assert (out, code) == (b"late\r\n", 0)
    assert server.stats["Receive.timeout"] == 0
    assert server.holds[:1] == [4.0]


def test_operation_timeout_above_max_timeout_is_cut_to_it(tmp_path: Path) -> None:
    # MS-WSMV 3.1.4.1.6: an OperationTimeout over MaxTimeoutms gets MaxTimeoutms.
    sim = SimWinRMServer("hv-1", tmp_path / "lab", USER, PASSWORD,
                         config=WinRMConfig(max_timeout_ms=1000))
    with sim:
        sim.faults.set("teardown", hang=True)
        proto = protocol(sim, operation_timeout=30)
        shell = proto.open_shell()
        command = proto.run_command(shell, encoded("# hyperv-ci-step: teardown\n"))
        with pytest.raises(WinRMOperationTimeoutError):
            while True:
                proto.get_command_output_raw(shell, command)
        proto.cleanup_command(shell, command)
        proto.close_shell(shell)
        assert set(sim.holds) == {1.0}
