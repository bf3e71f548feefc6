"""The two tempest decorators that shape test ids: `[id-<uuid>,smoke]`."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TypeVar

from testtools import testcase

F = TypeVar("F", bound=Callable[..., object])


def idempotent_id(id: str) -> Callable[[F], F]:
    """Tag a test with its stable uuid, as tempest does (`id-<uuid>` attribute)."""
    uuid.UUID(id)  # tempest refuses malformed ids, so do we
    return testcase.attr(f"id-{id}")


def attr(type: str) -> Callable[[F], F]:
    """Tag a test with a type such as 'smoke' or 'slow'."""
    return testcase.attr(type)
