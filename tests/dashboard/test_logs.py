"""The /logs/ tree: listings, gzip files readable in a browser, no way out of the tree."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

from flask.testing import FlaskClient

from ci.config import Config


def test_listing(client: FlaskClient, world: Any) -> None:
    response = client.get(f"/logs/1001/1/{world.finished_id}/")
    assert response.status_code == 200 and response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assert 'href="01-prepare.log"' in html and 'href="02-tempest.log.gz"' in html
    assert 'href="../"' in html
    root = client.get("/logs/").get_data(as_text=True)
    assert 'href="1001/"' in root and 'href="../"' not in root


def test_build_tree_says_which_build_and_puts_the_test_report_first(
        client: FlaskClient, world: Any) -> None:
    (world.build_log_dir / "test-results.txt").write_text("FAIL: test_名前\n", encoding="utf-8")
    html = client.get(f"/logs/1001/1/{world.finished_id}/").get_data(as_text=True)
    assert f'<a href="/builds/{world.finished_id}">Build #{world.finished_id}</a>' in html
    assert "1 test failed" in html  # the build's summary
    assert html.index('href="test-results.txt"') < html.index('href="01-prepare.log"')
    # Directories that are not a build's tree have no banner.
    assert "Build #" not in client.get("/logs/1001/").get_data(as_text=True)


def test_directory_without_slash_redirects(client: FlaskClient, world: Any) -> None:
    response = client.get("/logs/1001")
    assert response.status_code == 308 and response.headers["Location"] == "/logs/1001/"


def test_untrusted_file_names_are_escaped_and_quoted(client: FlaskClient,
                                                     dash_config: Config) -> None:
    name = "节点 <b>&\"x\".log"
    (dash_config.logs.dir / name).write_text("ok\n", encoding="utf-8")
    html = client.get("/logs/").get_data(as_text=True)
    assert "<b>" not in html
    assert "节点 &lt;b&gt;&amp;&#34;x&#34;.log" in html
    assert 'href="%E8%8A%82%E7%82%B9%20%3Cb%3E%26%22x%22.log"' in html
    assert client.get("/logs/%E8%8A%82%E7%82%B9%20%3Cb%3E%26%22x%22.log").data == b"ok\n"


def test_text_file_is_utf8_plain_text(client: FlaskClient, world: Any) -> None:
    response = client.get(f"/logs/1001/1/{world.finished_id}/01-prepare.log")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert response.get_data(as_text=True) == "preparing 准备\n"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_html_in_logs_is_never_html(client: FlaskClient, dash_config: Config) -> None:
    (dash_config.logs.dir / "report.html").write_text("<script>x()</script>", encoding="utf-8")
    response = client.get("/logs/report.html")
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert response.headers["Content-Security-Policy"].startswith("sandbox")


def test_gz_inflated_for_a_client_without_gzip(client: FlaskClient, world: Any) -> None:
    response = client.get(f"/logs/1001/1/{world.finished_id}/02-tempest.log.gz")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert "Content-Encoding" not in response.headers
    assert response.get_data(as_text=True) == "tempest ran: 3 tests, 1 failure — 失败\n"


def test_gz_sent_encoded_to_a_browser(client: FlaskClient, world: Any) -> None:
    response = client.get(f"/logs/1001/1/{world.finished_id}/02-tempest.log.gz",
                          headers={"Accept-Encoding": "gzip, deflate, br"})
    assert response.headers["Content-Encoding"] == "gzip"
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert gzip.decompress(response.data).decode() == "tempest ran: 3 tests, 1 failure — 失败\n"


def test_binary_gz_is_a_download(client: FlaskClient, dash_config: Config) -> None:
    (dash_config.logs.dir / "images.tar.gz").write_bytes(gzip.compress(b"\x00\x01"))
    response = client.get("/logs/images.tar.gz")
    assert response.mimetype == "application/gzip"
    assert response.headers["Content-Disposition"].startswith("attachment")


def test_traversal_refused(client: FlaskClient, dash_config: Config, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret", encoding="utf-8")
    (dash_config.logs.dir / "escape").symlink_to(tmp_path)
    for path in ("/logs/../secret.txt", "/logs/%2e%2e/secret.txt", "/logs/..%2fsecret.txt",
                 "/logs/escape/secret.txt", "/logs/escape/", "/logs//etc/passwd",
                 "/logs/%2Fetc%2Fpasswd"):
        response = client.get(path, follow_redirects=True)
        assert response.status_code == 404, path
        assert b"top secret" not in response.data and b"root:" not in response.data


def test_missing_file_is_404(client: FlaskClient) -> None:
    assert client.get("/logs/nothing/here.log").status_code == 404
