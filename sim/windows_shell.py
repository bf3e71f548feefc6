"""cmd.exe and powershell.exe as a WinRM command line meets them on Windows.

The 8,191-character line limit, the C runtime's argument splitting,
`powershell -EncodedCommand` (UTF-16LE base64), `-File` (UTF-8 only with a
BOM, else the ANSI code page), `-Command`, the CLIXML error stream, and the
ParserError a script with a syntax error gets (checked with
`runners.powershell.syntax_errors`), the errors of a command or parameter
PowerShell cannot resolve (`runners.ps_check`), and a top-level `exit N` or
`throw`. It is separate from sim/hyperv_host.py
because these are Windows' rules, the same for every script; the host model
only decides what a well-formed script does to the node.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol
from xml.sax.saxutils import escape

from runners import ps_check
from runners.powershell import syntax_errors

# cmd.exe's maximum command-line length (Microsoft, "Command prompt (Cmd. exe)
# command-line string limitation").
CMD_LINE_LIMIT = 8191
EXIT_BAD_ARGUMENT = -196608  # powershell.exe's exit code for a bad -File argument
STEP_HEADER = re.compile(r"^\s*#\s*hyperv-ci-step:\s*([^\s]+)")
# `$Name = 'literal'`: how the executor's internal scripts pass parameters (ps_quote'd).
_QUOTES = "'\u2018\u2019\u201a\u201b"
_ASSIGNMENT = re.compile(
    rf"^[ \t]*\$(\w+)[ \t]*=[ \t]*[{_QUOTES}]"
    rf"((?:[^{_QUOTES}]|[{_QUOTES}]{{2}})*)[{_QUOTES}][ \t]*\r?$",
    re.MULTILINE,
)
# powershell.exe switches that take a value (skipped with it while looking for the script).
_VALUED_SWITCHES = (
    "executionpolicy",
    "ex",
    "ep",
    "inputformat",
    "outputformat",
    "windowstyle",
    "version",
)


class Console(Protocol):
    """The running command as a step sees it (implemented by the WinRM server)."""

    step: str  # set by the model once it knows which step the command runs

    def write(self, text: str, *, stderr: bool = False) -> None:
        """Emit text on stdout or stderr (encoded in the shell's code page)."""

    def write_bytes(self, data: bytes) -> None:
        """Emit raw bytes on stdout, as a native tool that ignores the code page does."""

    def wait(self, seconds: float | None) -> bool:
        """Sleep (None: until signalled); True if the command was terminated meanwhile."""

    def read_stdin(self) -> bytes | None:
        """All of stdin once the client closes it; None if terminated first."""

    def drop_connection(self) -> None:
        """Reset the client's TCP connection at its next Receive."""


def clixml(text: str) -> str:
    """PowerShell's serialized error stream, as powershell.exe writes it when redirected."""
    lines = text.replace("\r\n", "\n").rstrip("\n").split("\n")
    # Non-ASCII as character references: CLIXML must stay valid XML whatever the code page.
    body = "".join(
        '<S S="Error">'
        + escape(line).replace("_x", "_x005F_x").encode("ascii", "xmlcharrefreplace").decode()
        + "_x000D__x000A_</S>"
        for line in lines
    )
    return (
        '#< CLIXML\r\n<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">'
        + body
        + "</Objs>"
    )


def split_command_line(line: str) -> list[str]:
    """Split a Windows command line the way the C runtime does (double quotes group)."""
    args: list[str] = []
    current: list[str] = []
    quoted = in_arg = False
    for char in line:
        if char == '"':
            quoted = not quoted
            in_arg = True
        elif char in " \t" and not quoted:
            if in_arg:
                args.append("".join(current))
                current, in_arg = [], False
        else:
            current.append(char)
            in_arg = True
    if in_arg:
        args.append("".join(current))
    return args


def script_parameters(script: str) -> dict[str, str]:
    """The script's `$Name = '...'` single-quoted assignments (names lower-cased)."""
    found: dict[str, str] = {}
    for name, raw in _ASSIGNMENT.findall(script):
        value = raw
        for quote in _QUOTES:
            value = value.replace(quote * 2, quote)
        found.setdefault(name.lower(), value)
    return found


def step_name(script: str) -> str:
    """NAME from the script's first non-blank line `# hyperv-ci-step: NAME` ('' if none)."""
    for line in script.lstrip("\ufeff").splitlines():
        if line.strip():
            match = STEP_HEADER.match(line)
            return match.group(1) if match else ""
    return ""


def decode_script_file(data: bytes) -> str:
    """A .ps1 file's text as Windows PowerShell 5.1 reads it: by its BOM, else in ANSI."""
    if data.startswith(b"\xef\xbb\xbf"):
        return data.decode("utf-8-sig")
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return data.decode("utf-16")
    return data.decode("cp1252", "replace")


def parser_error(script: str) -> str | None:
    """The CLIXML ParserError powershell.exe prints for a script that does not parse."""
    errors = syntax_errors(script)
    if not errors:
        return None
    line_no = int(m.group(1)) if (m := re.match(r"line (\d+), column (\d+)", errors[0])) else 1
    column = int(m.group(2)) if m else 1
    lines = script.splitlines() or [""]
    line_no = min(line_no, len(lines))  # the checker's `$null` suffix lies past the end
    source = lines[line_no - 1]
    return clixml(
        f"At line:{line_no} char:{column}\n+ {source}\n+ {' ' * (column - 1)}~\n"
        "Unexpected token or missing element in the statement ("
        + "; ".join(errors)
        + ").\n"
        "    + CategoryInfo          : ParserError: (:) [], "
        "ParentContainsErrorRecordException\n"
        "    + FullyQualifiedErrorId : ParseError"
    )


@dataclass(frozen=True)
class Refusal:
    """How powershell.exe ends a script before the step's work is done."""

    exit_code: int
    stderr: str  # CLIXML error record ('' for a plain `exit N`)


# (CategoryInfo category, exception) for each kind of ps_check problem, as
# PowerShell 5.1 reports them (about_Parameters, about_Command_Precedence).
_PROBLEM_RECORDS = {
    ps_check.COMMAND_NOT_FOUND: ("ObjectNotFound", "CommandNotFoundException"),
    ps_check.PARAMETER_NOT_FOUND: ("InvalidArgument", "ParameterBindingException"),
    ps_check.AMBIGUOUS_PARAMETER: ("InvalidArgument", "ParameterBindingException"),
    ps_check.VALUE_NOT_ENUM: ("InvalidArgument", "ParameterBindingException"),
    ps_check.VALUE_NOT_IN_SET: ("InvalidData", "ParameterBindingValidationException"),
}


def _command_type(cmdlet: str) -> str:
    """The .NET class of a Windows PowerShell cmdlet (Get-ChildItem -> ...GetChildItemCommand).

    Only the Microsoft.PowerShell.* modules name their classes so; other modules'
    error ids carry the command's name, which is what we use for them.
    """
    cmdlets = ps_check.catalog()["cmdlets"]
    assert isinstance(cmdlets, dict)
    module = str(cmdlets.get(cmdlet, {}).get("module", ""))
    if module.startswith("Microsoft.PowerShell."):
        return f"Microsoft.PowerShell.Commands.{cmdlet.replace('-', '')}Command"
    return cmdlet


def _error_record(script: str, line: int, column: int, width: int, head: str,
                  category: str, error_id: str) -> str:
    lines = script.splitlines() or [""]
    source = lines[min(line, len(lines)) - 1]
    return clixml(
        f"{head}\nAt line:{line} char:{column}\n+ {source}\n"
        f"+ {' ' * (column - 1)}{'~' * max(width, 1)}\n"
        f"    + CategoryInfo          : {category}\n"
        f"    + FullyQualifiedErrorId : {error_id}"
    )


def problem_record(script: str, problem: ps_check.Problem) -> str:
    """The CLIXML error record powershell.exe writes for a ps_check problem."""
    category, exception = _PROBLEM_RECORDS[problem.kind]
    if problem.kind == ps_check.COMMAND_NOT_FOUND:
        return _error_record(
            script, problem.line, problem.column, len(problem.command),
            f"{problem.command} : {problem.message}",
            f"{category}: ({problem.command}:String) [], {exception}", exception)
    return _error_record(
        script, problem.line, problem.column, len(problem.parameter) + 1,
        f"{problem.cmdlet} : {problem.message}",
        f"{category}: (:) [{problem.cmdlet}], {exception}",
        f"{problem.kind},{_command_type(problem.cmdlet)}")


def refusal(script: str) -> Refusal | None:
    """What powershell.exe does instead of running the step: None when the script runs.

    In order: a script that does not parse never starts; the first command or
    parameter PowerShell cannot resolve ends it (our scripts all set
    `$ErrorActionPreference = 'Stop'`, which makes that error terminating; the
    check is static, so a mistake in a function or branch counts whether or not
    it would run); a top-level `throw` ends it with exit code 1, a top-level
    `exit N` with N. Statements inside functions, `if` blocks and loops are not
    evaluated: an `exit` there is not seen.
    """
    error = parser_error(script)
    if error is not None:
        return Refusal(1, error)
    end = ps_check.script_end(script)
    problems = [
        p for p in ps_check.check_script(script)
        if end is None or (p.line, p.column) < (end.line, end.column)  # never reached
    ]
    if problems:
        return Refusal(1, problem_record(script, problems[0]))
    if end is not None and end.kind == "throw":
        head = end.message.replace("\r\n", "\n").split("\n")
        return Refusal(1, _error_record(
            script, end.line, end.column, len(end.source.splitlines()[0]), "\n".join(head),
            f"OperationStopped: ({head[0][:40]}:String) [], RuntimeException", head[0]))
    if end is not None and end.exit_code != 0:
        return Refusal(end.exit_code, "")
    return None


def run_command_line(
    command_line: str,
    console: Console,
    *,
    hostname: str,
    read_file: Callable[[str], bytes | None],
    run_script: Callable[[str, Console], int],
) -> int:
    """Run one command line as cmd.exe would; PowerShell scripts go to `run_script`.

    `read_file` reads the node's files (for `-File`). Returns the exit code.
    """
    if len(command_line) > CMD_LINE_LIMIT:
        console.write("The command line is too long.\r\n", stderr=True)
        return 1
    args = split_command_line(command_line)
    if not args:
        return 0
    program = args[0].casefold().removesuffix(".exe")
    if program == "powershell":
        return _powershell(args[1:], console, read_file, run_script)
    if program == "hostname":
        console.write(hostname + "\r\n")
        return 0
    if program == "echo":
        console.write(
            command_line.split(None, 1)[1] + "\r\n" if len(args) > 1 else "ECHO is on.\r\n"
        )
        return 0
    console.write(
        f"'{args[0]}' is not recognized as an internal or external command,\r\n"
        "operable program or batch file.\r\n",
        stderr=True,
    )
    return 1


def _powershell(
    args: list[str],
    console: Console,
    read_file: Callable[[str], bytes | None],
    run_script: Callable[[str, Console], int],
) -> int:
    script: str | None = None
    i = 0
    while i < len(args):
        name = args[i].lstrip("-/").casefold()
        value = args[i + 1] if i + 1 < len(args) else None
        if name in ("e", "ec") or (len(name) >= 3 and "encodedcommand".startswith(name)):
            try:
                script = base64.b64decode(value or "", validate=True).decode("utf-16-le")
            except (binascii.Error, UnicodeDecodeError):
                console.write(
                    "Cannot process the command because the value specified with "
                    "-EncodedCommand is not properly encoded.\r\n",
                    stderr=True,
                )
                return EXIT_BAD_ARGUMENT
            break
        if name in ("f", "file"):
            data = read_file(value or "")
            if data is None or not (value or "").casefold().endswith(".ps1"):
                console.write(
                    f"The argument '{value}' to the -File parameter does not exist. Provide "
                    "the path to an existing '.ps1' file as an argument to the -File "
                    "parameter.\r\n",
                    stderr=True,
                )
                return EXIT_BAD_ARGUMENT
            script = decode_script_file(data)
            break
        if name in ("c", "command"):
            script = " ".join(args[i + 1 :])
            break
        i += 2 if name in _VALUED_SWITCHES else 1
    if script is None:
        console.write("Windows PowerShell\r\nCopyright (C) Microsoft Corporation.\r\n")
        return 0
    return run_script(script, console)
