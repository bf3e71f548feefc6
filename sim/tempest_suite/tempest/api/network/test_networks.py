"""Networks (tempest.api.network.test_networks in spirit)."""

from tempest import test
from tempest.lib import decorators


class NetworksTest(test.BaseTestCase):

    @decorators.attr(type="smoke")
    @decorators.idempotent_id("0e269138-0da6-4efc-a46d-578161e7b221")
    def test_create_update_delete_network_subnet(self) -> None:
        self.assertEqual("ACTIVE", self.call_api("create network")["status"])

    @decorators.idempotent_id("f7ffdeda-e200-4a7a-bcbe-05716e86bf43")
    def test_list_networks(self) -> None:
        self.assertEqual("ACTIVE", self.call_api("list networks")["status"])
