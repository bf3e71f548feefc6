"""The simulated lab's artefact server: installers and tools over HTTP on loopback.

A real lab serves Python's and git's installers and the job's three tools
from a web server the nodes reach (never a share: a UNC path fails over NTLM
WinRM, the second hop). The simulated nodes download from this one, and
check each file's SHA-256 as bootstrap does on Windows, so a wrong hash in
the config fails in the simulation as it would on a node.
"""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from runners.windows_values import ARTEFACTS


def artefact_bytes(key: str) -> bytes:
    """Stand-in content of one artefact (a PE header, then its name)."""
    return b"MZ\x90\x00" + f"hyperv-ci simulated {key}\n".encode() * 64


class ArtefactServer:
    """Serves `/<file name>` for every artefact; `.start()`, `.stop()`."""

    def __init__(self) -> None:
        self.files = {name: artefact_bytes(key) for key, _var, name in ARTEFACTS}
        self.requests: list[str] = []
        files, requests = self.files, self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                requests.append(self.path)
                data = files.get(self.path.lstrip("/"))
                if data is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_HEAD(self) -> None:
                # `hyperv-ci lab check` asks whether the node can fetch each file
                # (RFC 9110 9.3.2: a HEAD is answered as a GET, without the content).
                data = files.get(self.path.lstrip("/"))
                if data is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> ArtefactServer:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="sim-artefacts")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def windows_section(self) -> dict[str, Any]:
        """The `windows:` artefact entries of a job config pointing at this server."""
        entries = {
            key: {"url": f"http://127.0.0.1:{self.port}/{name}",
                  "sha256": hashlib.sha256(self.files[name]).hexdigest()}
            for key, _var, name in ARTEFACTS
        }
        tools = {key: entries.pop(key) for key in ("openstack_service", "qemu_img", "mkisofs")}
        return {**entries, "tools": tools}
