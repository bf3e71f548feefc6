"""The SOAP side of the simulated WinRM endpoint: namespaces, faults, envelopes.

sim/winrm.py keeps the HTTP server and the shell/command state machine; this
module owns the XML it reads and writes, in the shapes pywinrm and Windows
use (MS-WSMV; pywinrm's winrm/protocol.py is the client), so the server
reads as behaviour rather than as element building.
"""

from __future__ import annotations

import base64
import re
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "w": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "x": "http://schemas.xmlsoap.org/ws/2004/09/transfer",
    "rsp": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell",
    "f": "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault",
}
for _prefix, _uri in NS.items():
    ET.register_namespace(_prefix, _uri)
SHELL_URI = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd"
STATE = NS["rsp"] + "/CommandState/"
# WSManFault codes: the Win32 ERROR_WSMAN_* numbers (winerror.h; Windows SDK).
FAULT_TIMEOUT = 2150858793  # ERROR_WSMAN_OPERATION_TIMEDOUT: a Receive with nothing to say
FAULT_SHELL_NOT_FOUND = 2150858843  # ERROR_WSMAN_UNEXPECTED_SELECTORS: the shell is gone
FAULT_ACTION = 2150858891
FAULT_INVALID_PARAMETER = 2150858882
FAULT_INVALID_CODEPAGE = 2150859002
FAULT_QUOTA_MAX_SHELLS = 2150859173  # 0x803381A5 ERROR_WSMAN_QUOTA_MAX_SHELLS


def q(prefix: str, name: str) -> str:
    """The ElementTree name `{namespace}name` for a prefix of `NS`."""
    return f"{{{NS[prefix]}}}{name}"


class WSManFault(Exception):
    """A request the server answers with a SOAP fault (HTTP 500)."""

    def __init__(self, code: int, subcode: str, reason: str) -> None:
        super().__init__(reason)
        self.code, self.subcode, self.reason = code, subcode, reason


@dataclass(frozen=True)
class Request:
    """One parsed SOAP request: its header and body, MessageID and short action name."""

    header: ET.Element | None
    body: ET.Element | None
    message_id: str
    action: str


def parse_request(data: bytes) -> Request | None:
    """The request in `data`, or None if it is not XML."""
    try:
        # Loopback test server: requests come from the client under test.
        envelope = ET.fromstring(data)  # noqa: S314
    except ET.ParseError:
        return None
    header = envelope.find(q("s", "Header"))
    message_id = header.findtext(q("a", "MessageID"), "") if header is not None else ""
    action = (header.findtext(q("a", "Action"), "") if header is not None else "").rsplit(
        "/", 1
    )[-1]
    return Request(header, envelope.find(q("s", "Body")), message_id, action)


def selector(header: ET.Element, name: str) -> str:
    """The value of the header's `w:Selector Name=name` ('' if absent; the last one wins)."""
    value = ""
    for element in header.iter(q("w", "Selector")):
        if element.get("Name") == name:
            value = element.text or ""
    return value


def options(header: ET.Element) -> dict[str, str]:
    """The header's `w:OptionSet` as name → text."""
    return {o.get("Name", ""): (o.text or "") for o in header.iter(q("w", "Option"))}


def seconds(duration: str | None, default: float) -> float:
    """An xs:duration such as `PT20S` or `PT1M30.5S` in seconds (`default` if unreadable)."""
    match = re.fullmatch(r"PT(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?", (duration or "").strip())
    if not match or not any(match.groups()):
        return default
    return float(match.group(1) or 0) * 60 + float(match.group(2) or 0)


def envelope(action: str, relates_to: str, body: list[ET.Element]) -> bytes:
    """A reply envelope for `action` answering the request `relates_to`, UTF-8 encoded."""
    env = ET.Element(q("s", "Envelope"))
    head = ET.SubElement(env, q("s", "Header"))
    ET.SubElement(head, q("a", "Action")).text = f"{NS['rsp']}/{action}"
    ET.SubElement(head, q("a", "MessageID")).text = f"uuid:{str(uuid.uuid4()).upper()}"
    ET.SubElement(head, q("a", "RelatesTo")).text = relates_to
    soap_body = ET.SubElement(env, q("s", "Body"))
    soap_body.extend(body)
    return ET.tostring(env, encoding="utf-8", xml_declaration=True)


def fault_body(fault: WSManFault, machine: str) -> ET.Element:
    """The `s:Fault` element Windows sends, with its WSManFault detail."""
    root = ET.Element(q("s", "Fault"))
    code = ET.SubElement(root, q("s", "Code"))
    ET.SubElement(code, q("s", "Value")).text = "s:Receiver"
    ET.SubElement(ET.SubElement(code, q("s", "Subcode")), q("s", "Value")).text = fault.subcode
    reason = ET.SubElement(ET.SubElement(root, q("s", "Reason")), q("s", "Text"))
    reason.text = fault.reason
    reason.set("{http://www.w3.org/XML/1998/namespace}lang", "en-US")
    detail = ET.SubElement(
        ET.SubElement(root, q("s", "Detail")),
        q("f", "WSManFault"),
        {"Code": str(fault.code), "Machine": machine},
    )
    ET.SubElement(detail, q("f", "Message")).text = fault.reason
    return root


def shell_created(url: str, shell_id: str) -> list[ET.Element]:
    """The body answering a shell Create."""
    created = ET.Element(q("x", "ResourceCreated"))
    ET.SubElement(created, q("a", "Address")).text = url
    params = ET.SubElement(created, q("a", "ReferenceParameters"))
    ET.SubElement(params, q("w", "ResourceURI")).text = SHELL_URI
    selectors = ET.SubElement(params, q("w", "SelectorSet"))
    ET.SubElement(selectors, q("w", "Selector"), {"Name": "ShellId"}).text = shell_id
    # pywinrm reads the Selector; Windows also answers the rsp:Shell, so do both.
    shell_el = ET.Element(q("rsp", "Shell"))
    ET.SubElement(shell_el, q("rsp", "ShellId")).text = shell_id
    ET.SubElement(shell_el, q("rsp", "ResourceUri")).text = SHELL_URI
    ET.SubElement(shell_el, q("rsp", "State")).text = "Connected"
    return [created, shell_el]


def command_line(body: ET.Element | None) -> str:
    """The command line of a Command request: Command and Arguments joined by spaces."""
    line_el = body.find(q("rsp", "CommandLine")) if body is not None else None
    if line_el is None:
        raise WSManFault(FAULT_INVALID_PARAMETER, "w:InvalidParameter", "CommandLine is missing.")
    parts = [line_el.findtext(q("rsp", "Command"), "")]
    parts += [a.text or "" for a in line_el.findall(q("rsp", "Arguments"))]
    return " ".join(p for p in parts if p)


def command_started(command_id: str) -> list[ET.Element]:
    """The body answering a Command."""
    response = ET.Element(q("rsp", "CommandResponse"))
    ET.SubElement(response, q("rsp", "CommandId")).text = command_id
    return [response]


def received(
    command_id: str, out: bytes, err: bytes, *, done: bool, exit_code: int | None
) -> list[ET.Element]:
    """The body answering a Receive: output chunks, end markers and the command state."""
    response = ET.Element(q("rsp", "ReceiveResponse"))
    for name, data in (("stdout", out), ("stderr", err)):
        if data:
            ET.SubElement(
                response, q("rsp", "Stream"), {"Name": name, "CommandId": command_id}
            ).text = base64.b64encode(data).decode("ascii")
    if done:
        for name in ("stdout", "stderr"):
            ET.SubElement(
                response,
                q("rsp", "Stream"),
                {"Name": name, "CommandId": command_id, "End": "true"},
            )
    state = ET.SubElement(
        response,
        q("rsp", "CommandState"),
        {"CommandId": command_id, "State": STATE + ("Done" if done else "Running")},
    )
    if done:
        ET.SubElement(state, q("rsp", "ExitCode")).text = str(exit_code)
    return [response]


def reply(name: str) -> list[ET.Element]:
    """An empty `rsp:<name>` body (SendResponse, SignalResponse)."""
    return [ET.Element(q("rsp", name))]
