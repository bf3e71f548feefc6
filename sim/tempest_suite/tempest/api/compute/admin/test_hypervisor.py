"""Hypervisors (tempest.api.compute.admin.test_hypervisor in spirit)."""

from tempest import test
from tempest.lib import decorators


class HypervisorAdminTestJSON(test.BaseTestCase):

    @decorators.idempotent_id("7f0ceacd-c64d-4e96-b8ee-d02943142cc5")
    def test_get_hypervisor_list(self) -> None:
        self.assertEqual("ACTIVE", self.call_api("list hypervisors")["status"])

    @decorators.idempotent_id("797e4f28-b6e0-454d-a548-80cc77c00816")
    def test_get_hypervisor_stats(self) -> None:
        self.assertIn("action", self.call_api("hypervisor stats"))
