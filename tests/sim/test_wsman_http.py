"""sim/wsman_http.py: what a default Windows Server 2022 WinRM listener refuses and accepts.

Against real clients: pywinrm (what hyperv-ci uses), pypsrp (its default
`auth="negotiate"`: SPNEGO), and plain requests for the raw cases.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import winrm
from pypsrp.shell import Process, WinRS
from pypsrp.wsman import WSMan
from winrm.exceptions import InvalidCredentialsError, WinRMTransportError

from sim.tls import TLSFiles, make_tls_files
from sim.winrm import SimWinRMServer
from sim.wsman_config import WinRMConfig
from tests.sim.test_winrm import raw_create

USER, PASSWORD = "Administrator", "s3cret-pw-Zoë"
PROBE = "# hyperv-ci-step: probe\n"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def node(tmp_path: Path) -> Iterator[SimWinRMServer]:
    """A node as Windows Server 2022 ships it, over http."""
    with SimWinRMServer("hv-1", tmp_path / "lab", USER, PASSWORD) as sim:
        yield sim


def start(tmp_path: Path, tls: TLSFiles | None = None, **config: bool) -> SimWinRMServer:
    return SimWinRMServer("hv-1", tmp_path / "lab", USER, PASSWORD,
                          tls=(tls.cert, tls.key) if tls else None,
                          config=WinRMConfig(**config)).start()


def run(sim: SimWinRMServer, transport: str, ca: Path | None = None,
        **options: str) -> winrm.Response:
    sess = winrm.Session(sim.url, auth=(USER, PASSWORD), transport=transport,
                         server_cert_validation="validate" if ca else "ignore",
                         ca_trust_path=str(ca) if ca else None,
                         operation_timeout_sec=2, read_timeout_sec=5, **options)
    return sess.run_ps(PROBE)


def test_basic_is_refused_unless_the_node_allows_it(tmp_path: Path, tls: TLSFiles) -> None:
    sim = start(tmp_path, tls)  # https, so only Service/Auth/Basic stands in the way
    try:
        with pytest.raises(InvalidCredentialsError):
            run(sim, "basic", tls.ca_cert)
        reply = raw_create(sim.url, "uuid:1", tls.ca_cert, PASSWORD)
        assert reply.status_code == 401
        # Only what is enabled is offered: Negotiate, not Basic.
        assert reply.headers["WWW-Authenticate"] == "Negotiate"
        assert sim.scripts == [] and sim.stats["basic-refused"] == 2
    finally:
        sim.stop()
    allowed = start(tmp_path, tls, allow_basic=True)
    try:
        assert run(allowed, "basic", tls.ca_cert).status_code == 0
        assert raw_create(allowed.url, "uuid:2", tls.ca_cert, PASSWORD).status_code == 200
        challenge = requests.post(allowed.url, data=b"<x/>", timeout=5,
                                  verify=str(tls.ca_cert))
        assert 'Basic realm="WSMAN"' in challenge.headers["WWW-Authenticate"]
    finally:
        allowed.stop()


def test_basic_over_http_needs_allow_unencrypted(tmp_path: Path) -> None:
    sim = start(tmp_path, allow_basic=True)
    try:
        with pytest.raises(InvalidCredentialsError):
            run(sim, "basic")  # right credentials, but they and the messages go in clear
        assert sim.scripts == [] and sim.stats["unencrypted-refused"] == 1
    finally:
        sim.stop()
    open_node = start(tmp_path, allow_basic=True, allow_unencrypted=True)
    try:
        assert run(open_node, "basic").status_code == 0
    finally:
        open_node.stop()


def test_ntlm_without_message_encryption_over_http_is_refused(tmp_path: Path,
                                                              node: SimWinRMServer) -> None:
    with pytest.raises(WinRMTransportError) as info:
        run(node, "ntlm", message_encryption="never")
    assert info.value.code == 500
    assert node.scripts == [] and node.stats["unencrypted-refused"] >= 1
    # Sealed (pywinrm's default over http): accepted.
    assert run(node, "ntlm").status_code == 0
    assert node.stats["sealed"] > 0


def test_unsealed_ntlm_is_fine_over_https_and_where_allowed(tmp_path: Path,
                                                            tls: TLSFiles) -> None:
    secure = start(tmp_path, tls)
    try:
        assert run(secure, "ntlm", tls.ca_cert).status_code == 0  # TLS encrypts it
        assert secure.stats["sealed"] == 0
    finally:
        secure.stop()
    open_node = start(tmp_path, allow_unencrypted=True)
    try:
        assert run(open_node, "ntlm", message_encryption="never").status_code == 0
    finally:
        open_node.stop()


def test_a_request_over_max_envelope_size_gets_413(node: SimWinRMServer) -> None:
    proto = winrm.Protocol(node.url, transport="ntlm", username=USER, password=PASSWORD,
                           operation_timeout_sec=2, read_timeout_sec=5)
    shell = proto.open_shell()
    command = proto.run_command(shell, "more")
    proto.send_command_input(shell, command, b"x" * (300 * 1024))  # ~400 KB of base64: fits
    with pytest.raises(WinRMTransportError) as info:
        proto.send_command_input(shell, command, b"x" * (400 * 1024))  # ~530 KB > 500 KB
    assert info.value.code == 413
    assert node.stats["envelope-too-large"] == 1
    proto.close_shell(shell)
    assert node.open_shells == 0


def test_pypsrp_default_negotiate_with_encryption(node: SimWinRMServer) -> None:
    # SPNEGO ends with the acceptor's token on the 200: without it pypsrp's context
    # never completes and the first encrypted reply fails its signature check.
    wsman = WSMan("127.0.0.1", port=node.port, ssl=False, username=USER, password=PASSWORD,
                  auth="negotiate", encryption="auto", operation_timeout=2, read_timeout=5)
    node.faults.set("probe", stdout="prêt 就绪", exit_code=0)
    script = base64.b64encode(PROBE.encode("utf-16-le")).decode()
    with wsman, WinRS(wsman, codepage=65001) as shell:
        process = Process(shell, "powershell", ["-NoProfile", "-EncodedCommand", script])
        process.invoke()
    assert process.rc == 0, process.stderr
    assert process.stdout == "prêt 就绪\r\n".encode()
    assert node.stats["sealed"] >= 4 and node.stats["ntlm"] == 1
    assert node.open_shells == 0


def test_a_bare_challenge_names_negotiate(node: SimWinRMServer) -> None:
    reply = requests.post(node.url, data=b"<x/>", timeout=5)
    assert reply.status_code == 401
    assert reply.headers["WWW-Authenticate"] == "Negotiate"
