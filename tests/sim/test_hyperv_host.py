"""The simulated Hyper-V node answers the job's real scripts as a Windows node would.

Its output is what the scripts print, a node without the Hyper-V role has
no Hyper-V cmdlets, and bootstrap's files are refused on a wrong SHA-256.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from runners.render import RenderedJob
from sim.artefacts import ArtefactServer
from sim.hyperv_host import HyperVHost
from sim.windows_shell import clixml
from tests.runners.test_render import make_change, make_config, render

STEPS = ("teardown", "bootstrap", "install", "configure-services", "start-services",
         "service-stderr", "stop-services", "collect-logs", "cleanup")
# Lines native programs print: `python --version`, `git --version`, `sc.exe delete`,
# `pip freeze`. Anything else a step prints must come from one of its Write-Output lines.
NATIVE_OUTPUT = (
    re.compile(r"Python \d+\.\d+\.\d+"),
    re.compile(r"git version \S+"),
    re.compile(r"\[SC\] DeleteService SUCCESS"),
    re.compile(r"[A-Za-z0-9._-]+(==\S+| @ file:///\S+)"),
)


class RecordingConsole:
    """The running command, as sim/winrm.py would give it to the model (output kept)."""

    def __init__(self) -> None:
        self.step = ""
        self.stdout: list[str] = []
        self.stderr: list[str] = []

    def write(self, text: str, *, stderr: bool = False) -> None:
        (self.stderr if stderr else self.stdout).append(text)

    def write_bytes(self, data: bytes) -> None:
        self.stdout.append(data.decode("utf-8", "replace"))

    def wait(self, seconds: float | None) -> bool:
        return False

    def read_stdin(self) -> bytes | None:
        return b""

    def drop_connection(self) -> None:
        pass

    def lines(self) -> list[str]:
        return [line for line in "".join(self.stdout).split("\r\n") if line]


@pytest.fixture
def server() -> Iterator[ArtefactServer]:
    started = ArtefactServer().start()
    yield started
    started.stop()


def rendered_for(server: ArtefactServer, **windows: object) -> RenderedJob:
    section = {**server.windows_section(),
               "service_account": {"username": "HVCI\\svc", "password": {"password_env": "P"}},
               **windows}
    config = make_config(windows=section)
    return render(config, make_change(branch="stable/2023.1", subject="修复 Zoë's VM"))


def run(host: HyperVHost, rendered: RenderedJob, step: str,
        text: str | None = None) -> tuple[int, RecordingConsole]:
    console = RecordingConsole()
    script = rendered.for_node("hv-1", step) if text is None else text
    return host.run_script(script, console), console


@pytest.fixture(autouse=True)
def _password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("P", "account-pw")


def write_output_patterns(script: str) -> list[re.Pattern[str]]:
    """What each `Write-Output` in the script can print: its literal text, with `{N}`
    placeholders and concatenated expressions matching anything."""
    patterns = []
    for line in script.splitlines():
        if "Write-Output" not in line:
            continue
        argument = line.split("Write-Output", 1)[1]
        literals = [m.replace("''", "'") for m in re.findall(r"'((?:[^']|'')*)'", argument)]
        if not literals:
            continue
        if " -f " in argument:
            parts = re.split(r"\{\d+\}", literals[0])
            patterns.append(re.compile(".*".join(re.escape(p) for p in parts)))
        elif "+" in argument:
            patterns.append(re.compile(".*".join(re.escape(p) for p in literals) + ".*"))
        else:
            patterns.append(re.compile(re.escape(literals[0])))
    return patterns


def test_each_step_prints_only_lines_its_script_can_print(server: ArtefactServer,
                                                          tmp_path: Path) -> None:
    rendered = rendered_for(server)
    host = HyperVHost("hv-1", tmp_path)
    host.add_vm("instance-0001")
    for step in STEPS:
        script = rendered.for_node("hv-1", step)
        code, console = run(host, rendered, step)
        assert code == 0, (step, console.stderr)
        lines = console.lines()
        assert lines, step
        allowed = write_output_patterns(script) + list(NATIVE_OUTPUT)
        stderr_dump = False
        for line in lines:
            if step == "service-stderr" and stderr_dump and not line.startswith("---"):
                continue  # Get-Content of the service's stderr file
            stderr_dump = step == "service-stderr" and line.endswith(" stderr ---")
            assert any(p.fullmatch(line) for p in allowed), (step, line)
    # The node's own non-ASCII text is the change's subject, as bootstrap prints it.
    _code, console = run(host, rendered, "bootstrap")
    assert "subject: 修复 Zoë's VM" in console.lines()


def test_a_fresh_node_without_the_role_is_torn_down_without_get_vm(
        server: ArtefactServer, tmp_path: Path) -> None:
    rendered = rendered_for(server)
    host = HyperVHost("hv-1", tmp_path, hyperv_role=False)
    code, console = run(host, rendered, "teardown")
    assert code == 0, console.stderr
    assert "Hyper-V module not installed: no VMs to remove" in console.lines()
    # Bootstrap then says the role needs a restart: the CI cannot do it mid-build.
    code, console = run(host, rendered, "bootstrap")
    assert code == 1 and "restart the node" in "".join(console.stderr)


def test_get_vm_outside_the_guard_is_not_recognized_without_the_role(
        server: ArtefactServer, tmp_path: Path) -> None:
    rendered = rendered_for(server)
    script = rendered.for_node("hv-1", "teardown")
    unguarded = script.replace("if (Test-HyperVModule) {", "if ($true) {")
    assert unguarded != script
    fresh = HyperVHost("hv-1", tmp_path, hyperv_role=False)
    code, console = run(fresh, rendered, "teardown", unguarded)
    assert code == 1
    assert console.stderr == [clixml(
        "Get-VM : The term 'Get-VM' is not recognized as the name of a cmdlet, function, "
        "script file, or operable program. Check the spelling of the name, or if a path was "
        "included, verify that the path is correct and try again.")]
    # With the role the same script runs.
    code, _console = run(HyperVHost("hv-1", tmp_path), rendered, "teardown", unguarded)
    assert code == 0


def test_bootstrap_downloads_and_checks_every_file(server: ArtefactServer,
                                                   tmp_path: Path) -> None:
    host = HyperVHost("hv-1", tmp_path)
    code, console = run(host, rendered_for(server), "bootstrap")
    assert code == 0, console.stderr
    for name in ("python-installer.exe", "git-installer.exe", "OpenStackService.exe",
                 "qemu-img.exe", "mkisofs.exe"):
        assert f"/{name}" in server.requests
    assert host.read_file("C:\\OpenStack\\bin\\qemu-img.exe") == server.files["qemu-img.exe"]
    assert host.system_services["MSiSCSI"] == ("Running", "Automatic")
    assert host.migration["authentication"] == "Kerberos"
    # Run again: nothing is downloaded twice.
    before = len(server.requests)
    code, console = run(host, rendered_for(server), "bootstrap")
    assert code == 0 and len(server.requests) == before
    assert "qemu_img: present, C:\\OpenStack\\bin\\qemu-img.exe" in console.lines()


def test_a_wrong_sha256_is_refused_as_on_windows(server: ArtefactServer,
                                                 tmp_path: Path) -> None:
    wrong = "0" * 64
    section = server.windows_section()
    tools = {**section["tools"], "mkisofs": {**section["tools"]["mkisofs"], "sha256": wrong}}
    host = HyperVHost("hv-1", tmp_path)
    code, console = run(host, rendered_for(server, tools=tools), "bootstrap")
    actual = hashlib.sha256(server.files["mkisofs.exe"]).hexdigest()
    assert code == 1
    assert "".join(console.stderr) == clixml(
        f"mkisofs: SHA-256 {actual} does not match the configured {wrong}")
    assert host.read_file("C:\\OpenStack\\bin\\mkisofs.exe") is None


def test_an_uploaded_file_is_checked_and_a_missing_one_fails(server: ArtefactServer,
                                                             tmp_path: Path) -> None:
    data = server.files["qemu-img.exe"]
    local = tmp_path / "qemu-img.exe"
    local.write_bytes(data)
    section = server.windows_section()
    tools = {**section["tools"], "qemu_img": {"path": str(local),
                                              "sha256": hashlib.sha256(data).hexdigest()}}
    rendered = rendered_for(server, tools=tools)
    host = HyperVHost("hv-1", tmp_path)
    code, console = run(host, rendered, "bootstrap")  # the worker has not uploaded it
    assert code == 1 and "Cannot find path" in "".join(console.stderr)
    host.write_file("C:\\OpenStack\\hyperv-ci\\artefacts\\qemu-img.exe", data)
    code, console = run(host, rendered, "bootstrap")
    assert code == 0, console.stderr
    assert host.read_file("C:\\OpenStack\\bin\\qemu-img.exe") == data


def test_a_host_the_node_cannot_reach_fails_the_download(server: ArtefactServer,
                                                         tmp_path: Path) -> None:
    elsewhere = {"url": "https://deploy.example.org/python.exe", "sha256": "a" * 64}
    code, console = run(HyperVHost("hv-1", tmp_path),
                        rendered_for(server, python_installer=elsewhere), "bootstrap")
    assert code == 1
    assert "Unable to connect to the remote server" in "".join(console.stderr)


def test_collect_logs_writes_what_an_operator_needs(server: ArtefactServer,
                                                    tmp_path: Path) -> None:
    rendered = rendered_for(server)
    host = HyperVHost("hv-1", tmp_path)
    for step in ("teardown", "bootstrap", "configure-services", "start-services",
                 "collect-logs"):
        code, console = run(host, rendered, step)
        assert code == 0, (step, console.stderr)
    files = {p.rsplit("\\", 1)[-1] for p in host.files_under("C:\\OpenStack\\collected")}
    for name in ("systeminfo.txt", "hotfixes.txt", "ipconfig.txt", "net-adapters.txt",
                 "vmswitch.txt", "disks.txt", "firewall.txt", "services.txt",
                 "pip-freeze.txt", "System.evtx", "System.txt", "nova-compute.log"):
        assert name in files, name
    services = host.read_file("C:\\OpenStack\\collected\\node\\services.txt") or b""
    assert b"SERVICE_START_NAME : HVCI\\svc" in services
    assert host.read_file("C:\\OpenStack\\hyperv-ci\\logs.zip")
