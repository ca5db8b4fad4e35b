"""``bourse serve`` serves the built web UI (docs/decisions/0030-serving-the-ui.md).

Each test builds the app on a build directory of its own, laid out as Vite writes it.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import bourse.webui
from bourse.app import create_app
from tests.support.services import make_settings

INDEX = '<!doctype html><html><head><script type="module" src="/assets/index-3f9a1c2b.js"></script></head></html>\n'
SCRIPT = "export const greeting = 'hello from the trade screen';\n" * 200  # well over the gzip threshold
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)


def _build(root: Path) -> Path:
    dist = root / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text(INDEX)
    (dist / "assets" / "index-3f9a1c2b.js").write_text(SCRIPT)
    (dist / "assets" / "index-77aa01ff.css").write_text("body{margin:0}\n" * 200)
    (dist / "favicon.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>\n')
    (root / "secret.txt").write_text("not part of the build\n")
    return dist


def _client(sqlite_url: str, dist: Path) -> Iterator[TestClient]:
    app = create_app(make_settings(sqlite_url), web_dist=dist)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def ui(sqlite_url: str, tmp_path: Path) -> Iterator[TestClient]:
    yield from _client(sqlite_url, _build(tmp_path))


@pytest.fixture
def unbuilt(sqlite_url: str, tmp_path: Path) -> Iterator[TestClient]:
    yield from _client(sqlite_url, tmp_path / "no-such-dist")


def _assert_secured(headers: object) -> None:
    assert headers["content-security-policy"] == CSP  # type: ignore[index]
    assert headers["x-content-type-options"] == "nosniff"  # type: ignore[index]
    assert headers["referrer-policy"] == "no-referrer"  # type: ignore[index]
    assert "unsafe-inline" not in headers["content-security-policy"]  # type: ignore[index]


@pytest.mark.parametrize("path", ["/", "/trade/BTC-USD", "/backoffice/withdrawals?state=pending_review", "/index.html"])
def test_the_root_and_client_side_routes_answer_index_html_revalidated(ui: TestClient, path: str) -> None:
    response = ui.get(path)
    assert response.status_code == 200
    assert response.text == INDEX
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["cache-control"] == "no-cache"
    _assert_secured(response.headers)


def test_hashed_assets_are_immutable_and_compressed_for_clients_that_accept_it(ui: TestClient) -> None:
    path = "/assets/index-3f9a1c2b.js"
    compressed = ui.get(path, headers={"Accept-Encoding": "gzip"})
    assert compressed.status_code == 200
    assert compressed.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert "javascript" in compressed.headers["content-type"]
    assert compressed.headers["content-encoding"] == "gzip"
    assert int(compressed.headers["content-length"]) < len(SCRIPT) / 10
    assert compressed.text == SCRIPT  # the client decoded it
    _assert_secured(compressed.headers)
    css = ui.get("/assets/index-77aa01ff.css", headers={"Accept-Encoding": "gzip"})
    assert (css.headers["content-encoding"], css.headers["content-type"].split(";")[0]) == ("gzip", "text/css")
    plain = ui.get(path, headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    assert plain.content == SCRIPT.encode()
    # The raw bytes really are gzip, not just labelled so.
    with ui.stream("GET", path, headers={"Accept-Encoding": "gzip"}) as raw:
        assert gzip.decompress(b"".join(raw.iter_raw())) == SCRIPT.encode()


def test_top_level_files_of_the_build_are_served_as_themselves(ui: TestClient) -> None:
    response = ui.get("/favicon.svg")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("image/svg+xml")
    assert response.headers["cache-control"] == "no-cache"


def test_a_missing_asset_is_a_404_not_the_index(ui: TestClient) -> None:
    for path in ("/assets/index-00000000.js", "/assets/", "/assets/%2e%2e/%2e%2e/secret.txt"):
        response = ui.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"] == "not_found"
    # Nothing outside the build is ever served, whatever the path says.
    escaped = ui.get("/%2e%2e/secret.txt")
    assert "not part of the build" not in escaped.text


def test_the_api_keeps_its_own_answers(ui: TestClient) -> None:
    unknown = ui.get("/api/v1/no-such-thing")
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "not_found"
    assert unknown.headers["content-type"] == "application/json"
    assert ui.get("/api").json()["error"] == "not_found"
    assert ui.get("/healthz").json()["error"] == "not_found"
    # A route that exists for another method is still 405, not the UI.
    assert ui.get("/api/v1/auth/login").status_code == 405
    assert ui.get("/livez").json() == {"status": "alive"}
    assert ui.get("/api/openapi.json").json()["info"]["title"] == "Bourse"
    assert "swagger" in ui.get("/api/docs").text.lower()
    assert ui.get("/metrics").headers["content-type"].startswith("text/plain")
    # Only GET and HEAD reach the UI.
    posted = ui.post("/trade/BTC-USD")
    assert posted.status_code == 404
    assert posted.json()["error"] == "not_found"


def test_ui_requests_are_counted_under_two_templates_not_as_unmatched(ui: TestClient) -> None:
    ui.get("/trade/ETH-USD")
    ui.get("/assets/index-3f9a1c2b.js")
    ui.get("/assets/index-00000000.js")
    metrics = ui.get("/metrics").text
    assert 'bourse_http_requests_total{method="GET",route="/{ui_path}",status="200"}' in metrics
    assert 'bourse_http_requests_total{method="GET",route="/assets/{file}",status="200"}' in metrics
    assert 'bourse_http_requests_total{method="GET",route="/assets/{file}",status="404"}' in metrics


def test_head_answers_the_headers_without_a_body(ui: TestClient) -> None:
    for path, size in (("/", len(INDEX)), ("/orders", len(INDEX)), ("/assets/index-3f9a1c2b.js", len(SCRIPT))):
        response = ui.head(path)
        assert response.status_code == 200, path
        assert response.content == b""
        assert int(response.headers["content-length"]) == size
        _assert_secured(response.headers)
    assert ui.head("/assets/nope.js").status_code == 404


def test_without_a_build_the_root_says_how_to_build_it(unbuilt: TestClient) -> None:
    for path in ("/", "/trade/BTC-USD"):
        response = unbuilt.get(path)
        assert response.status_code == 503
        assert response.headers["content-type"].startswith("text/html")
        assert "The web UI is not built" in response.text
        assert "make web" in response.text
        assert "npm ci &amp;&amp; npm run build" in response.text
        assert 'href="/api/docs"' in response.text
        assert response.headers["cache-control"] == "no-store"
        _assert_secured(response.headers)
    assert unbuilt.get("/assets/index-3f9a1c2b.js").status_code == 404
    assert unbuilt.get("/api/v1/version").status_code == 200


def test_the_default_build_directory_is_the_packages_and_git_ignored() -> None:
    assert Path(bourse.webui.__file__).parent / "dist" == bourse.webui.PACKAGE_DIST
    root = Path(__file__).resolve().parents[2]
    assert "/src/bourse/webui/dist/" in (root / ".gitignore").read_text().splitlines()
    assert 'artifacts = ["src/bourse/webui/dist/**"]' in (root / "pyproject.toml").read_text()
