"""Server actions (tempest.api.compute.servers.test_server_actions in spirit)."""

import testtools
from tempest import test
from tempest.lib import decorators


class ServerActionsTestJSON(test.BaseTestCase):

    @decorators.attr(type="smoke")
    @decorators.idempotent_id("2cb1baf6-ac8d-4429-bf0d-ba8a0ba53e32")
    def test_reboot_server_hard(self) -> None:
        self.assertEqual("ACTIVE", self.call_api("reboot")["status"])

    @decorators.idempotent_id("1499262a-9328-4eda-9068-db1ac57498d2")
    def test_resize_server_confirm(self) -> None:
        self.assertEqual("ACTIVE", self.call_api("resize")["status"])

    @decorators.idempotent_id("77eba8e0-036e-4635-944b-f7a8f3b78dc9")
    def test_shelve_unshelve_server(self) -> None:
        self.assertEqual("ACTIVE", self.call_api("shelve")["status"])

    @decorators.idempotent_id("c6bc11bf-592e-4015-9319-1c98dc64daf5")
    def test_get_vnc_console(self) -> None:
        self.skipTest("VNC console is not supported by the Hyper-V driver (it offers RDP)")

    @testtools.skip("Rescue is not supported on this branch")
    @decorators.idempotent_id("fd032140-714c-42e4-a8fd-adcd8df06be6")
    def test_rescue_unrescue_instance(self) -> None:
        self.call_api("rescue")
