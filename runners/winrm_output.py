"""Reading what a Windows command writes: its streams decoded as they arrive.

PowerShell writes UTF-8 (the shell runs in code page 65001) and its error
stream as CLIXML; native tools may write UTF-16 or the node's OEM code page;
the get helper writes base64 lines. Split from runners/winrm.py, which drives
the WS-Management exchange.
"""

from __future__ import annotations

import base64
import codecs
import html
import re
from collections.abc import Callable
from typing import BinaryIO

from runners.base import OutputSink

_CLIXML = "#< CLIXML"
_CLIXML_STRING = re.compile(
    r'<S S="(?:Error|Warning|Verbose|Debug|Information)">(.*?)</S>', re.DOTALL | re.IGNORECASE
)
_CLIXML_ESCAPE = re.compile(r"_x([0-9A-Fa-f]{4})_")


def clixml_to_text(text: str) -> str:
    """The readable text of PowerShell's CLIXML error stream (the input if it is not CLIXML)."""
    if not text.startswith(_CLIXML):
        return text
    strings = _CLIXML_STRING.findall(text)
    if not strings:
        return text
    decoded = "".join(
        _CLIXML_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), html.unescape(s)) for s in strings
    )
    return decoded.replace("\r\n", "\n")


def _oem_fallback(codepage: str) -> str:
    """The name of a decode error handler that reads non-UTF-8 bytes in `codepage`."""
    name = f"hyperv-ci-oem-{codepage}"
    try:
        codecs.lookup_error(name)
    except LookupError:
        def handler(exc: UnicodeError) -> tuple[str, int]:
            assert isinstance(exc, UnicodeDecodeError)
            return exc.object[exc.start:exc.end].decode(codepage, errors="replace"), exc.end

        codecs.register_error(name, handler)
    return name


class OutputDecoder:
    """Decodes one stream of a command as it arrives, whatever wrote it.

    The shell runs in code page 65001, so PowerShell writes UTF-8; native tools
    may not: a stream that starts as UTF-16 (a BOM, or Latin text's zero high
    bytes) is read as UTF-16, bytes that are not UTF-8 are read in the node's
    OEM code page, and stray NULs of UTF-16 text mid-stream are dropped.
    """

    def __init__(self, oem_codepage: str = "cp437") -> None:
        self._oem = oem_codepage
        self._head = b""
        self._decoder: codecs.IncrementalDecoder | None = None
        self._utf8 = True

    def decode(self, data: bytes, final: bool = False) -> str:
        """The text of `data` (more may be held back until the next call or `final`)."""
        if self._decoder is None:
            self._head += data
            # Enough to tell UTF-16 from UTF-8: 16 bytes or a line, whichever comes first.
            if len(self._head) < 16 and b"\n" not in self._head and not final:
                return ""
            data, self._head = self._head, b""
            self._decoder = self._pick(data)
        text = self._decoder.decode(data, final)
        return text.replace("\x00", "") if self._utf8 else text

    def _pick(self, head: bytes) -> codecs.IncrementalDecoder:
        if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            self._utf8 = False
            return codecs.getincrementaldecoder("utf-16")(errors="replace")
        pairs = len(head) // 2
        odd_nuls = head[1:2 * pairs:2].count(0)
        # UTF-16LE text has zero high bytes wherever it is Latin; UTF-8 has no NUL at all.
        if pairs and odd_nuls * 4 >= pairs and not head[0:2 * pairs:2].count(0):
            self._utf8 = False
            return codecs.getincrementaldecoder("utf-16-le")(errors="replace")
        return codecs.getincrementaldecoder("utf-8-sig")(errors=_oem_fallback(self._oem))


class CommandOutput:
    """Decodes a command's streams as they arrive and forwards them to the live view."""

    def __init__(
        self, sink: OutputSink | None, stdout_bytes: Callable[[bytes], None] | None,
        oem_codepage: str = "cp437",
    ) -> None:
        self._sink = sink
        self._stdout_bytes = stdout_bytes
        self._out = OutputDecoder(oem_codepage)
        # stderr is PowerShell's own (CLIXML, UTF-8); only the OEM fallback applies.
        self._err = codecs.getincrementaldecoder("utf-8")(errors=_oem_fallback(oem_codepage))
        self.stdout: list[str] = []
        self.stderr = ""
        self._err_mode = (
            ""  # "" undecided, "plain" streamed as it comes, "clixml" cleaned at the end
        )

    def _emit(self, text: str) -> None:
        if text and self._sink is not None:
            self._sink(text)

    def feed(self, out: bytes, err: bytes, *, final: bool = False) -> None:
        if self._stdout_bytes is not None:
            if out:
                self._stdout_bytes(out)
        else:
            text = self._out.decode(out, final)
            self.stdout.append(text)
            self._emit(text)
        new = self._err.decode(err, final)
        self.stderr += new
        if self._err_mode == "plain":
            self._emit(new)
        elif self._err_mode == "" and self.stderr:
            if self.stderr.startswith(_CLIXML):
                self._err_mode = "clixml"
            elif not _CLIXML.startswith(self.stderr):
                self._err_mode = "plain"
                self._emit(self.stderr)
        if final and self._err_mode != "plain" and self.stderr:
            # CLIXML is only readable whole; an undecided short stderr is plain text.
            self.stderr = clixml_to_text(self.stderr)
            self._emit(self.stderr if self.stderr.endswith("\n") else self.stderr + "\n")


class Base64Lines:
    """Writes base64 lines (the get helper's stdout) to a file as they arrive."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self._pending = b""

    def feed(self, data: bytes) -> None:
        lines = (self._pending + data).split(b"\n")
        self._pending = lines.pop()
        for line in lines:
            self._write(line)

    def close(self) -> None:
        self._write(self._pending)
        self._pending = b""

    def _write(self, line: bytes) -> None:
        line = line.strip()
        if line:
            self._fh.write(base64.b64decode(line, validate=True))
