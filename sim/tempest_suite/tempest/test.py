"""Base class of the bundled suite (tempest.test.BaseTestCase in spirit).

A test fails on purpose only when the lab says so: the file
`$HYPERV_CI_LAB_DIR/faults/tempest-fail` lists fragments of test ids, one a
line, and a test whose id contains one fails as a nova build error would.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import testtools
from tempest.lib import exceptions


def _fault_fragments() -> list[str]:
    lab = os.environ.get("HYPERV_CI_LAB_DIR")
    if not lab:
        return []
    try:
        text = (Path(lab) / "faults" / "tempest-fail").read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


class BaseTestCase(testtools.testcase.WithAttributes, testtools.TestCase):
    """Every test of the suite: simulated API work plus the lab's failure switch."""

    def setUp(self) -> None:
        super().setUp()
        self.server_name = "tempest-服务器-Zoë-" + uuid.uuid4().hex[:8]

    def call_api(self, what: str) -> dict[str, str]:
        """Stand-in for a REST call: a little latency, and the lab's injected faults."""
        time.sleep(0.01)
        for fragment in _fault_fragments():
            if fragment in self.id():
                raise exceptions.BuildErrorException(
                    server_id=uuid.uuid4(),
                    details={"code": 500, "message": f"{what}: Exceeded maximum number of "
                             f"retries. 实例 {self.server_name} could not be scheduled"})
        return {"name": self.server_name, "status": "ACTIVE", "action": what}
