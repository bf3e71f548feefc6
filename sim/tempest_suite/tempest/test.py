"""Base class of the bundled suite (tempest.test.BaseTestCase in spirit).

A test fails on purpose only when the lab says so: the file
`$HYPERV_CI_LAB_DIR/faults/tempest-fail` lists fragments of test ids, one a
line, and a test whose id contains one fails as a nova build error would.
`faults/tempest-flaky` (same format) makes a test fail the first time it runs
in a build and pass when it runs again: the first failure leaves a marker in
`$HYPERV_CI_FLAKY_STATE`, which every stack.sh empties.
`faults/tempest-slow` holds a number of seconds every test takes (a real
tempest test boots servers for seconds to minutes): the live progress of a
run can then be watched as the stream grows.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from pathlib import Path

import testtools
from tempest.lib import exceptions


def _fault_fragments(name: str = "tempest-fail") -> list[str]:
    lab = os.environ.get("HYPERV_CI_LAB_DIR")
    if not lab:
        return []
    try:
        text = (Path(lab) / "faults" / name).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _fails_first_time(test_id: str) -> bool:
    """A flaky test's first run in this build (and remember it): True once, then False."""
    state = os.environ.get("HYPERV_CI_FLAKY_STATE")
    if not state or not any(f in test_id for f in _fault_fragments("tempest-flaky")):
        return False
    marker = Path(state) / hashlib.sha256(test_id.encode("utf-8")).hexdigest()
    marker.parent.mkdir(parents=True, exist_ok=True)
    try:
        marker.touch(exist_ok=False)
    except FileExistsError:
        return False
    return True


class BaseTestCase(testtools.testcase.WithAttributes, testtools.TestCase):
    """Every test of the suite: simulated API work plus the lab's failure switch."""

    def setUp(self) -> None:
        super().setUp()
        slow = _fault_fragments("tempest-slow")
        if slow:
            time.sleep(float(slow[0]))
        self.server_name = "tempest-服务器-Zoë-" + uuid.uuid4().hex[:8]

    def call_api(self, what: str) -> dict[str, str]:
        """Stand-in for a REST call: a little latency, and the lab's injected faults."""
        time.sleep(0.01)
        failing = any(f in self.id() for f in _fault_fragments())
        if failing or _fails_first_time(self.id()):
            raise exceptions.BuildErrorException(
                server_id=uuid.uuid4(),
                details={"code": 500, "message": f"{what}: Exceeded maximum number of "
                         f"retries. 实例 {self.server_name} could not be scheduled"})
        return {"name": self.server_name, "status": "ACTIVE", "action": what}
