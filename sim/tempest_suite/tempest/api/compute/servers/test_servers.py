"""Server basics (tempest.api.compute.servers.test_servers in spirit)."""

from tempest import test
from tempest.lib import decorators


class ServersTestJSON(test.BaseTestCase):

    @decorators.attr(type="smoke")
    @decorators.idempotent_id("9a438d88-10c6-4bcd-8b5b-5b6e25e1346f")
    def test_list_servers(self) -> None:
        server = self.call_api("list servers")
        self.assertEqual("ACTIVE", server["status"])

    @decorators.idempotent_id("5de47127-9977-400a-936f-abcfbec1218f")
    def test_create_server_with_unicode_name(self) -> None:
        # The seed bug of this project: a unicode name broke `nova boot` on Hyper-V.
        server = self.call_api("create server")
        self.assertIn("服务器", server["name"])
        self.assertEqual(server["name"], server["name"].encode("utf-8").decode("utf-8"))

    @decorators.idempotent_id("1a1f6f57-4e5b-4f1b-8f56-a0e2f4b1d5c1")
    def test_update_server_name(self) -> None:
        server = self.call_api("update server")
        self.assertTrue(server["name"].startswith("tempest-"))
