"""Network scenario (tempest.scenario.test_network_basic_ops in spirit).

The real Hyper-V CI excluded this test; it is here so exclude lists can be tested.
"""

from tempest import test
from tempest.lib import decorators


class TestNetworkBasicOps(test.BaseTestCase):

    @decorators.attr(type="slow")
    @decorators.idempotent_id("f323b3ba-82f8-4db7-8ea6-6a895869ec49")
    def test_network_basic_ops(self) -> None:
        self.assertEqual("ACTIVE", self.call_api("network basic ops")["status"])
