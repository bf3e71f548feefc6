"""What every `hyperv-ci lab check` verdict shares: the result record, the
thresholds, the probes' tagged JSON, and the verdicts of any WinRM host (a
node or a parent host): its connection and its clock.

Pure functions; the I/O is in runners/lab_check.py.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from ci.config import NodeConfig
from ci.errors import PermanentError

FACTS_TAG = "hyperv-ci-lab-facts: "
GIB = 1024 ** 3


class ProbeError(PermanentError):
    """A probe's output is not what the probe prints (another program answered?)."""


@dataclass(frozen=True)
class CheckResult:
    """One line of the report: `name` on `node`, PASS or FAIL, and how to fix a FAIL."""

    name: str
    node: str
    passed: bool
    detail: str
    fix: str = ""
    # Not run, for a reason that is no fault (a provisioned node's VM is off between
    # builds): it counts as no failure, and `fix` says how to run it.
    skipped: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Thresholds:
    """What `lab check` asks of a node's resources (docs/lab.md, "Sizing")."""

    windows_free_gib: float = 40.0  # the instances drive: guests, their resize copies, images
    controller_free_gib: float = 30.0  # devstack's checkout, venvs, glance images, logs
    controller_memory_gib: float = 8.0  # devstack's services plus tempest's workers
    # Kerberos' default "Maximum tolerance for computer clock synchronization" is
    # 5 minutes (Microsoft: Kerberos Policy settings); NTLM over WinRM fails the same way.
    max_clock_skew: float = 300.0


def passed(name: str, node: str, detail: str) -> CheckResult:
    return CheckResult(name, node, True, detail)


def failed(name: str, node: str, detail: str, fix: str) -> CheckResult:
    return CheckResult(name, node, False, detail, fix)


def skipped(name: str, node: str, detail: str, how: str) -> CheckResult:
    return CheckResult(name, node, True, detail, how, skipped=True)


def listify(value: object) -> list[Any]:
    """A JSON array from PowerShell: ConvertTo-Json in Windows PowerShell 5.1 writes a
    one-element array as the element (and an empty one as null)."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def tagged_json(stdout: str, tag: str = FACTS_TAG) -> dict[str, Any]:
    """The JSON object on the probe's tagged line (the last one, if it printed several)."""
    lines = [line[len(tag):] for line in stdout.splitlines() if line.startswith(tag)]
    if not lines:
        raise ProbeError(f"the probe printed no '{tag.strip()}' line")
    try:
        data = json.loads(lines[-1])
    except json.JSONDecodeError as exc:
        raise ProbeError(f"the probe's facts are not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProbeError("the probe's facts are not a JSON object")
    return data


def clock_verdict(node: str, skew: float, limit: float) -> CheckResult:
    detail = f"node clock {'ahead of' if skew >= 0 else 'behind'} the worker by {abs(skew):.1f} s"
    if abs(skew) > limit:
        return failed("clock", node, detail + f" (more than {limit:.0f} s: Kerberos and NTLM "
                      "refuse the logon)",
                      "sync both to one time source: w32tm /resync on the node "
                      "(a domain member follows its domain controller), NTP on the worker")
    return passed("clock", node, detail)


def winrm_failure(node: NodeConfig, error: str) -> CheckResult:
    """The `winrm` check's FAIL for a node the probe could not run on, with its fix."""
    access = node.winrm
    assert access is not None
    where = f"{access.scheme}://{node.address}:{access.endpoint_port}"
    lowered = error.lower()
    if "the probe" in lowered:
        # WinRM works: the probe itself failed (or another program answered).
        fix = ("the node ran the probe and it failed: the error above is PowerShell's "
               "(`hyperv-ci -v lab check NODE` names the script it ran)")
    elif "environment variable" in lowered or "password" in lowered:
        fix = ("winrm.password names a secret this process cannot read: set the variable, "
               "or make the file readable by this user")
    elif "certificate" in lowered or "ssl" in lowered:
        fix = ("the node's certificate must name the address the configuration uses and be "
               "signed by winrm.ca_file's CA (docs/winrm.md, 'The listener')")
    elif "invalidcredentials" in lowered or "401" in lowered:
        fix = (f"check winrm.username/password; with transport {access.transport} the node must "
               "allow it (Basic needs Service\\Auth\\Basic true; docs/winrm.md)")
    elif "refused" in lowered or "newconnectionerror" in lowered or "timed out" in lowered:
        fix = (f"create a {access.scheme.upper()} listener on port {access.endpoint_port} and "
               "open the firewall for it (docs/winrm.md, 'The listener')")
    elif "500" in lowered and access.scheme == "http":
        fix = "the node refuses unencrypted messages: use transport ntlm or scheme https"
    else:
        fix = "run `winrm quickconfig -transport:https` on the node and read docs/winrm.md"
    return failed("winrm", node.name, f"{where}: {error}", fix)
