"""Snapshot scenario (tempest.scenario.test_snapshot_pattern in spirit)."""

from tempest import test
from tempest.lib import decorators


class TestSnapshotPattern(test.BaseTestCase):

    @decorators.attr(type="slow")
    @decorators.idempotent_id("608e604b-1d63-4a82-8e3e-91bc665c90b4")
    def test_snapshot_pattern(self) -> None:
        self.assertEqual("ACTIVE", self.call_api("snapshot")["status"])
