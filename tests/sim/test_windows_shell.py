"""The simulated node's powershell.exe refuses what PowerShell refuses, before a step runs."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from sim.hyperv_host import HyperVHost
from sim.windows_shell import refusal

HEADER = "# hyperv-ci-step: teardown\n$ErrorActionPreference = 'Stop'\n"


class Recorder:
    """The Console seam: what the WinRM server would stream back to the client."""

    step = ""

    def __init__(self) -> None:
        self.out: list[str] = []
        self.err: list[str] = []

    def write(self, text: str, *, stderr: bool = False) -> None:
        (self.err if stderr else self.out).append(text)

    def write_bytes(self, data: bytes) -> None:
        self.out.append(data.decode("utf-8"))

    def wait(self, seconds: float | None) -> bool:
        return False

    def read_stdin(self) -> bytes | None:
        return b""

    def drop_connection(self) -> None:
        pass


def error_text(console: Recorder) -> str:
    """The CLIXML error stream as the text PowerShell would show."""
    joined = "".join(console.err)
    assert joined.startswith("#< CLIXML\r\n")
    lines = re.findall(r'<S S="Error">(.*?)</S>', joined)
    return "".join(html.unescape(line).replace("_x000D__x000A_", "\n") for line in lines)


def run(tmp_path: Path, script: str) -> tuple[int, Recorder, HyperVHost]:
    host = HyperVHost("hv-1", tmp_path)
    host.add_vm("instance-1")
    console = Recorder()
    return host.run_script(script, console), console, host


def test_unknown_command_is_command_not_found_and_changes_nothing(tmp_path: Path) -> None:
    code, console, host = run(tmp_path, HEADER + "Stop-VM -Name x -TurnOff\nRemove-VMM x\n")
    assert code == 1
    assert console.out == []  # no canned "VMs removed"
    assert host.vms == {"instance-1": "Running"}  # teardown's effects did not happen
    assert error_text(console) == (
        "Remove-VMM : The term 'Remove-VMM' is not recognized as the name of a cmdlet, function, "
        "script file, or operable program. Check the spelling of the name, or if a path was "
        "included, verify that the path is correct and try again.\n"
        "At line:4 char:1\n"
        "+ Remove-VMM x\n"
        "+ ~~~~~~~~~~\n"
        "    + CategoryInfo          : ObjectNotFound: (Remove-VMM:String) [], "
        "CommandNotFoundException\n"
        "    + FullyQualifiedErrorId : CommandNotFoundException\n")


def test_unknown_parameter_is_a_parameter_binding_exception(tmp_path: Path) -> None:
    code, console, _host = run(tmp_path, HEADER + "Get-ChildItem -Path 'C:\\' -Recurce\n")
    assert code == 1
    text = error_text(console)
    assert text.startswith(
        "Get-ChildItem : A parameter cannot be found that matches parameter name 'Recurce'.\n"
        "At line:3 char:27\n+ Get-ChildItem -Path 'C:\\' -Recurce\n+" + " " * 27 + "~~~~~~~~\n")
    assert "+ CategoryInfo          : InvalidArgument: (:) [Get-ChildItem], " \
        "ParameterBindingException" in text
    assert "+ FullyQualifiedErrorId : NamedParameterNotFound," \
        "Microsoft.PowerShell.Commands.GetChildItemCommand" in text


def test_ambiguous_parameter_and_bad_value(tmp_path: Path) -> None:
    code, console, _host = run(tmp_path, HEADER + "Get-ChildItem -f x\n")
    assert code == 1 and "AmbiguousParameter,Microsoft.PowerShell.Commands." in error_text(
        console)
    code, console, _host = run(tmp_path, HEADER + "Set-Service MSiSCSI -StartupType Auto\n")
    text = error_text(console)
    assert code == 1 and "Cannot convert value \"Auto\"" in text
    assert "CannotConvertArgumentNoMessage,Microsoft.PowerShell.Commands.SetServiceCommand" in text


def test_top_level_exit_gives_its_code(tmp_path: Path) -> None:
    code, console, host = run(tmp_path, HEADER + "Write-Output 'x'\nexit 42\n")
    assert (code, console.out, console.err) == (42, [], [])
    assert host.vms  # no success claimed: teardown did not run
    # exit 0 runs the step as usual; an exit inside a block is not evaluated.
    code, console, host = run(tmp_path, HEADER + "if ($false) { exit 3 }\nexit 0\n")
    assert code == 0 and host.vms == {}


def test_top_level_throw_is_exit_one_with_the_message(tmp_path: Path) -> None:
    code, console, host = run(tmp_path, HEADER + "throw 'Hyper-V role missing — 缺少'\n")
    assert code == 1 and host.vms and console.out == []
    text = error_text(console)
    assert text.startswith("Hyper-V role missing — 缺少\nAt line:3 char:1\n")
    assert "+ CategoryInfo          : OperationStopped: (Hyper-V role missing — 缺少:String) " \
        "[], RuntimeException" in text
    assert "&#" in "".join(console.err)  # non-ASCII as character references: valid CLIXML


def test_a_mistake_past_the_top_level_exit_never_runs() -> None:
    assert refusal(HEADER + "exit 5\nGet-Nothing\n").exit_code == 5
    assert refusal(HEADER + "Get-Nothing\nexit 5\n").exit_code == 1


def test_encoded_command_is_checked_too(tmp_path: Path) -> None:
    host = HyperVHost("hv-1", tmp_path)
    console = Recorder()
    script = "# hyperv-ci-step: winrm-get\n$Path = 'C:\\x'\nTest-Pth -LiteralPath $Path\n"
    line = "powershell -NoProfile -EncodedCommand " + base64.b64encode(
        script.encode("utf-16-le")).decode()
    assert host.execute(line, console) == 1
    assert "The term 'Test-Pth' is not recognized" in error_text(console)


def test_a_well_formed_script_still_runs(tmp_path: Path) -> None:
    code, console, host = run(tmp_path, HEADER + "Get-VM | Stop-VM -TurnOff -Force\n")
    assert code == 0 and host.vms == {} and console.err == []
