"""Shelve scenario (tempest.scenario.test_shelve_instance in spirit)."""

from tempest import test
from tempest.lib import decorators


class TestShelveInstance(test.BaseTestCase):

    @decorators.attr(type="slow")
    @decorators.idempotent_id("1164e700-0af0-4a4c-8792-35909a88743c")
    def test_shelve_instance(self) -> None:
        self.assertEqual("ACTIVE", self.call_api("shelve instance")["status"])
