"""The configuration's building blocks: the error, the strict model, secrets by
reference and the value checks the other config modules share."""

from __future__ import annotations

import os
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, model_validator

from ci.errors import PermanentError


class ConfigError(PermanentError):
    """A configuration file that cannot be used; the message names key and problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _vlan_bounds(value: str) -> tuple[int, int]:
    """`"A:B"` → (A, B); a VLAN ID is 1..4094 (IEEE 802.1Q reserves 0 and 4095)."""
    match = re.fullmatch(r"(\d{1,4}):(\d{1,4})", value)
    if match is None:
        raise ValueError(f"VLAN range {value!r} must look like FIRST:LAST, e.g. 500:599")
    first, last = int(match.group(1)), int(match.group(2))
    if not 1 <= first <= last <= 4094:
        raise ValueError(f"VLAN range {value!r} must lie within 1..4094, first <= last")
    return first, last


def _check_vlan_range(value: str | None) -> str | None:
    if value is not None:
        _vlan_bounds(value)
    return value


# devstack's functions `upload_image` takes *.vhd and *.vhdx as Hyper-V disk
# images; compressed ones are not offered because tempest's scenario tests
# upload [scenario] img_file as it is, and a gzip is no VHD.
_IMAGE_SUFFIXES = (".vhd", ".vhdx")


def _check_image(value: str) -> str:
    if not re.fullmatch(r"(https?://[^\s/,]+/|file:///|/)[^\s,]*", value):
        raise ValueError("must be an http(s):// URL or an absolute path on the controller "
                         "(or file:///path), without spaces or commas (IMAGE_URLS is a list)")
    if not value.lower().endswith(_IMAGE_SUFFIXES):
        raise ValueError("must be a .vhd or .vhdx image: Hyper-V boots only those")
    return value


def _check_regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from exc
    return value


def _check_one_source(password_env: str | None, password_file: Path | None) -> None:
    if password_env and password_file:
        raise ValueError("give password_env or password_file, not both")


def _check_secret_given(value: Secret) -> Secret:
    """For a password that must be configured: it names its source."""
    if not value.given:
        raise ValueError("name the password's source: password_env or password_file")
    return value


class Secret(_Strict):
    """A secret given by reference: an environment variable or a file."""

    password_env: str | None = None
    password_file: Path | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Secret:
        _check_one_source(self.password_env, self.password_file)
        return self

    @property
    def given(self) -> bool:
        """Whether the secret names a source at all."""
        return bool(self.password_env or self.password_file)

    def resolve(self) -> str | None:
        """Read the secret now (never at load time, never into a log)."""
        if self.password_env:
            value = os.environ.get(self.password_env)
            if value is None:
                raise ConfigError(f"environment variable {self.password_env} is not set")
            return value
        if self.password_file:
            return self.password_file.expanduser().read_text(encoding="utf-8").strip()
        return None
