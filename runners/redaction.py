"""Masking secrets in every form the job writes them.

A secret reaches output not only as itself: render.py percent-encodes the
RabbitMQ password into `transport_url`, shell-quotes passwords in local.conf
and escapes `$` as `$$` for oslo.config. `secret_forms` lists each encoded
form in one place, and `Redactor` masks all of them in text and finds them in
bytes (for binary files, which cannot be rewritten safely).
"""

from __future__ import annotations

import html
import json
import re
import shlex
from collections.abc import Callable, Iterable
from urllib.parse import quote, quote_plus

from runners.powershell import ps_quote

REDACTED = "********"
#: Shorter secrets are not masked: they would blank out ordinary words.
MIN_SECRET_CHARS = 3
#: The encodings a binary file is searched in: UTF-8, Windows' UTF-16 and ANSI.
BYTE_ENCODINGS = ("utf-8", "utf-16-le", "cp1252")


def _percent_forms(secret: str) -> set[str]:
    # render.py uses quote(safe=""); quote() and quote_plus() are what other
    # URL builders (oslo, devstack, requests) emit. Lower-case hex is legal too.
    forms = {quote(secret, safe=""), quote(secret), quote_plus(secret)}
    lower = {re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), f) for f in forms}
    return forms | lower


_ESCAPES: tuple[Callable[[str], str], ...] = (
    lambda s: s,
    shlex.quote,  # local.conf values (the `sh` filter)
    ps_quote,  # PowerShell literals (the `ps` filter)
    lambda s: s.replace("$", "$$"),  # oslo.config's escape (the `ini` filter)
    html.escape,
    lambda s: html.escape(s, quote=False),
    lambda s: html.escape(s).replace("&#x27;", "&apos;"),  # XML's spelling
    lambda s: json.dumps(s)[1:-1],
    lambda s: json.dumps(s, ensure_ascii=False)[1:-1],
    lambda s: repr(s)[1:-1],  # a secret inside an exception message
)


def secret_forms(secret: str) -> set[str]:
    """Every form in which `secret` may appear in the job's output: itself,
    percent-encoded, and each of those shell-, PowerShell-, oslo-, HTML/XML-,
    JSON- and repr-escaped. Empty for a secret too short to mask."""
    if len(secret) < MIN_SECRET_CHARS:
        return set()
    bases = {secret} | _percent_forms(secret)
    return {escape(base) for base in bases for escape in _ESCAPES}


class Redactor:
    """Replaces every form of every secret with `REDACTED` (call it on text)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        forms: set[str] = set()
        for secret in secrets:
            if secret:
                forms |= secret_forms(secret)
        self.forms = frozenset(forms)
        # Longest first, so a quoted form wins over the raw secret inside it.
        ordered = sorted(self.forms, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None
        self._needles = sorted(
            {_encode(form, enc) for form in self.forms for enc in BYTE_ENCODINGS} - {b""},
            key=len, reverse=True,
        )

    def __call__(self, text: str) -> str:
        """`text` with every secret form masked, and without NUL characters.

        Everything bound for the database passes through here, and PostgreSQL
        refuses NUL in text: one stray byte of a tool's output would turn the
        change's verdict into an error of the CI's own.
        """
        text = text.replace("\x00", "")
        if self._pattern is None:
            return text
        return self._pattern.sub(REDACTED, text)

    def found_in(self, data: bytes) -> bool:
        """Whether any secret form occurs in `data` in one of `BYTE_ENCODINGS`."""
        return any(needle in data for needle in self._needles)


def _encode(form: str, encoding: str) -> bytes:
    try:
        return form.encode(encoding)
    except UnicodeEncodeError:
        return b""  # not representable in this code page: it cannot occur in it
