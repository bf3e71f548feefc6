"""dashboard/data.build_url and logs_url: the same links as url_for, with or without a
mount prefix, whatever the path holds."""

from __future__ import annotations

import pytest
from flask import Flask, url_for

from dashboard.data import build_url, logs_url


@pytest.mark.parametrize("script_root", ["", "/ci", "/a%20b"])
def test_build_url_is_url_for(app: Flask, script_root: str) -> None:
    with app.test_request_context("/", environ_base={"SCRIPT_NAME": script_root}):
        for build_id in (1, 7, 987654321, 12345678901):
            assert build_url(build_id) == url_for("pages.build", build_id=build_id)


@pytest.mark.parametrize("script_root", ["", "/ci"])
def test_logs_url_is_url_for(app: Flask, script_root: str) -> None:
    paths = ["", "1/2/hyperv-local-3/", "a b/ü 节点/", "x%2Fy/?#/", "~!$&'()*+,;=:@/", "a//b/"]
    with app.test_request_context("/", environ_base={"SCRIPT_NAME": script_root}):
        for path in paths:
            assert logs_url(path) == url_for("logs.serve", subpath=path), path
