"""/docs and /redoc load with no network: every script, stylesheet and icon they name is
served by the API itself (from the fastapi-offline package), none from a CDN or Google Fonts.
The in-process app on the embedded setup, as tests/unit/test_api_jobs.py builds it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from tests.helpers.embedded import embedded_settings

# src= and href= of <script> and <link> tags, as FastAPI's page templates write them.
_ASSET = re.compile(r"<(?:script|link)\b[^>]*?\b(?:src|href)=[\"']([^\"']+)[\"']", re.I)


@pytest.fixture()
def client(state_root: Path) -> Iterator[TestClient]:
    with TestClient(create_app(embedded_settings(state_root))) as client:
        yield client


def _assets(html: str) -> list[str]:
    return _ASSET.findall(html)


@pytest.mark.parametrize(("page", "wanted"), [
    ("/docs", {"swagger-ui-bundle.js", "swagger-ui.css"}),
    ("/redoc", {"redoc.standalone.js"}),
])
def test_docs_page_loads_its_assets_from_the_api(
    client: TestClient, page: str, wanted: set[str],
) -> None:
    response = client.get(page)  # no key: the docs are as open as before
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert "cdn.jsdelivr.net" not in html and "fonts.googleapis.com" not in html
    assets = _assets(html)
    assert {url.rsplit("/", 1)[-1] for url in assets} >= wanted, assets
    for url in assets:
        assert url.startswith("/") and not re.match(r"(?i)(https?:)?//", url), url
        served = client.get(url)
        assert served.status_code == 200, url
        # The real bundles are hundreds of kilobytes; an error page or a stub is not.
        floor = 1000 if url.endswith((".png", ".ico")) else 100_000
        assert len(served.content) > floor, (url, len(served.content))
    assert "/openapi.json" in html


def test_swagger_oauth2_redirect_page_is_still_served(client: TestClient) -> None:
    response = client.get("/docs/oauth2-redirect")
    assert response.status_code == 200 and "oauth2" in response.text.lower()


def test_the_openapi_document_does_not_list_the_docs(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert not any(p.startswith(("/docs", "/redoc")) for p in paths)


@pytest.mark.parametrize("path", [
    "/docs/assets/../../../etc/passwd",
    "/docs/assets/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/docs/assets/..%2f..%2f..%2fetc%2fpasswd",
    "/docs/assets/" + "a" * 5000,
])
def test_the_assets_folder_serves_nothing_outside_it(client: TestClient, path: str) -> None:
    resp = client.get(path)
    assert resp.status_code in (400, 404, 414), resp.status_code
    assert "root:" not in resp.text
