"""Pure helpers of the WinRM executor (runners/winrm.py): command lines, step names, hints.

They decide without talking to a node: how a helper script is inlined within
cmd.exe's line limit, how arguments are quoted for cmd.exe, which step a
script is, whether this host has a transport's library, and what a node's
quota fault means to an operator.
"""

from __future__ import annotations

import base64
import re

import winrm.transport
from winrm.exceptions import WinRMTransportError, WSManFaultError

CMD_LINE_LIMIT = 8191  # cmd.exe runs every WinRM command line (WINRS_SKIP_CMD_SHELL=FALSE)
FAULT_QUOTA_MAX_SHELLS = 2150859173  # ERROR_WSMAN_QUOTA_MAX_SHELLS: MaxShellsPerUser reached
HTTP_TOO_LARGE = 413  # how a node refuses a request over its MaxEnvelopeSizekb
_STEP = re.compile(r"^\s*#\s*hyperv-ci-step:\s*([A-Za-z0-9_.-]+)")


def encoded_command(script: str) -> str:
    """`powershell -EncodedCommand ...` for a short helper script (within cmd.exe's limit)."""
    encoded = base64.b64encode(script.encode("utf-16-le")).decode("ascii")
    line = " ".join(["powershell", "-NoProfile", "-NonInteractive", "-EncodedCommand", encoded])
    if len(line) > CMD_LINE_LIMIT:
        raise ValueError(
            f"helper script too long to inline ({len(line)} > {CMD_LINE_LIMIT} characters)"
        )
    return line


def windows_command_line(args: list[str]) -> str:
    """Join arguments for cmd.exe + the C runtime: quote any with spaces or cmd metacharacters."""
    parts = []
    for arg in args:
        if any(c in arg for c in '"%\r\n'):
            raise ValueError(f"argument cannot be passed safely through cmd.exe: {arg!r}")
        parts.append(f'"{arg}"' if not arg or re.search(r"[\s&|<>^(),;=!]", arg) else arg)
    return " ".join(parts)


def step_of(script: str) -> str:
    """The script's step name from its `# hyperv-ci-step: NAME` first line ('script' if none)."""
    for line in script.lstrip("\ufeff").splitlines():
        if line.strip():
            match = _STEP.match(line)
            return match.group(1) if match else "script"
    return "script"


def quota_hint(exc: BaseException) -> str:
    """What an operator should know about a node quota behind `exc` ('' if none)."""
    if isinstance(exc, WSManFaultError) and exc.wsman_fault_code == FAULT_QUOTA_MAX_SHELLS:
        return (" (the node's MaxShellsPerUser quota is used up: another client leaves "
                "shells open, or raise it: see docs/winrm.md)")
    if isinstance(exc, WinRMTransportError) and exc.code == HTTP_TOO_LARGE:
        return " (the request is larger than the node's MaxEnvelopeSizekb: see docs/winrm.md)"
    return ""


def missing_transport_support(transport: str) -> str | None:
    """Why this host cannot use a WinRM `transport`, or None when it can.

    pywinrm only finds out at the first request; saying so up front names the fix.
    """
    needs = {
        "kerberos": (winrm.transport.HAVE_KERBEROS,
                     "install hyperv-ci's 'kerberos' extra (pip install -e '.[kerberos]', "
                     "which builds against Debian's libkrb5-dev)"),
        "credssp": (winrm.transport.HAVE_CREDSSP, "pip install 'pywinrm[credssp]'"),
        "ntlm": (winrm.transport.HAVE_NTLM, "pip install 'pywinrm'"),
    }
    if transport not in needs or needs[transport][0]:
        return None
    return (f"WinRM transport {transport!r} is not available on this host: "
            f"{needs[transport][1]}")
