"""NTLM for the simulated WinRM endpoint: the handshake and MS-WSMV message encryption.

pywinrm's `transport="ntlm"` (hyperv-ci's default) authenticates each TCP
connection with a Negotiate/NTLM exchange and then, over plain HTTP, seals
every SOAP body in a `multipart/encrypted` envelope (pywinrm's
winrm/encryption.py; MS-WSMV 2.2.9.1). pyspnego's acceptor does the
cryptography; this module keeps its credential store and speaks the envelope
format.

pyspnego's NTLM acceptor reads its credentials from the file named by
`NTLM_USER_FILE`, a process-wide setting, so the simulators share one file:
two servers running at once may not give one user different passwords.
"""

from __future__ import annotations

import os
import struct
import tempfile
import threading
from collections import Counter
from pathlib import Path

import spnego
from spnego.exceptions import SpnegoError

PROTOCOL = "application/HTTP-SPNEGO-session-encrypted"
CONTENT_TYPE = f'multipart/encrypted;protocol="{PROTOCOL}";boundary="Encrypted Boundary"'
_BOUNDARY = b"--Encrypted Boundary"
_OCTETS = b"\tContent-Type: application/octet-stream\r\n"


class EnvelopeError(ValueError):
    """An encrypted body that cannot be opened (bad framing, signature or length)."""


class _CredentialStore:
    """The `NTLM_USER_FILE` that every running simulator's user is written to."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users: dict[str, tuple[str, int]] = {}  # user (lower) -> (password, holders)
        self._path: Path | None = None

    def add(self, username: str, password: str) -> None:
        key = username.lower()
        with self._lock:
            held = self._users.get(key)
            if held is not None and held[1] > 0 and held[0] != password:
                raise ValueError(f"another running simulator gives NTLM user {username!r} a "
                                 "different password; use another user name")
            self._users[key] = (password, (held[1] if held else 0) + 1)
            self._write()

    def remove(self, username: str) -> None:
        key = username.lower()
        with self._lock:
            password, holders = self._users.get(key, ("", 1))
            self._users[key] = (password, max(holders - 1, 0))

    def _write(self) -> None:
        if self._path is None:
            self._path = Path(tempfile.mkdtemp(prefix="hyperv-ci-sim-ntlm-")) / "users"
        # `:user:password`: a user name given without a domain (research §8).
        lines = [f":{user}:{password}" for user, (password, _n) in self._users.items()]
        self._path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self._path.chmod(0o600)
        os.environ["NTLM_USER_FILE"] = str(self._path)


CREDENTIALS = _CredentialStore()


class NTLMConnection:
    """One TCP connection's NTLM state: handshake first, then sealing and unsealing in order."""

    def __init__(self) -> None:
        self._context = spnego.server(protocol="negotiate")
        self.stats: Counter[str] = Counter()

    @property
    def complete(self) -> bool:
        """Whether the handshake is done (the connection is authenticated)."""
        return bool(self._context.complete)

    def step(self, token: bytes) -> bytes | None:
        """Take the client's token; the challenge to send back, if any.

        Raises SpnegoError for bad credentials or a broken token.
        """
        return self._context.step(token)

    def unseal(self, body: bytes) -> bytes:
        """The SOAP text of a `multipart/encrypted` request body."""
        try:
            head, payload = [p for p in body.split(_BOUNDARY + b"\r\n") if p][:2]
            length = int(head.split(b"Length=")[1].split(b"\r\n")[0])
            payload = payload.removesuffix(_BOUNDARY + b"--\r\n").removeprefix(_OCTETS)
            (sig_len,) = struct.unpack("<i", payload[:4])
            signature, sealed = payload[4:4 + sig_len], payload[4 + sig_len:]
            plain = self._context.unwrap_winrm(signature, sealed)
        except (ValueError, IndexError, struct.error, SpnegoError) as exc:
            raise EnvelopeError(f"cannot open the encrypted request: {exc}") from None
        if len(plain) != length:
            raise EnvelopeError(f"decrypted {len(plain)} bytes, the envelope says {length}")
        self.stats["unsealed"] += 1
        return plain

    def seal(self, xml: bytes) -> bytes:
        """A reply body sealed the way Windows seals it."""
        wrapped = self._context.wrap_winrm(xml)
        self.stats["sealed"] += 1
        return (
            _BOUNDARY + b"\r\n"
            + f"\tContent-Type: {PROTOCOL}\r\n".encode()
            + f"\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length={len(xml)}"
              "\r\n".encode()
            + _BOUNDARY + b"\r\n" + _OCTETS
            + struct.pack("<i", len(wrapped.header)) + wrapped.header + wrapped.data
            + _BOUNDARY + b"--\r\n"
        )


def is_sealed(content_type: str) -> bool:
    """Whether a request's Content-Type says its body is NTLM-sealed."""
    return "multipart/encrypted" in content_type and PROTOCOL in content_type
