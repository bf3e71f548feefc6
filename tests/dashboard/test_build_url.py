"""dashboard/data.build_url: the same link as url_for, with or without a mount prefix."""

from __future__ import annotations

import pytest
from flask import Flask, url_for

from dashboard.data import build_url


@pytest.mark.parametrize("script_root", ["", "/ci", "/a%20b"])
def test_build_url_is_url_for(app: Flask, script_root: str) -> None:
    with app.test_request_context("/", environ_base={"SCRIPT_NAME": script_root}):
        for build_id in (1, 7, 987654321, 12345678901):
            assert build_url(build_id) == url_for("pages.build", build_id=build_id)
