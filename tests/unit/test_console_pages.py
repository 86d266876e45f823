"""The console's pages and scripts as the API serves them (in-process, embedded setup): every
page and asset comes with the strict Content-Security-Policy and X-Frame-Options DENY, no
page carries inline script or style, nothing is loaded from another origin, and no script
writes HTML from data."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.console import PAGES
from tests.helpers.embedded import embedded_settings

CONSOLE = Path(__file__).resolve().parents[2] / "api" / "console"
SCRIPTS = sorted((CONSOLE / "static").glob("*.js"))


@pytest.fixture()
def app(state_root: Path) -> Iterator[TestClient]:
    with TestClient(create_app(embedded_settings(state_root))) as client:
        yield client


class Page(HTMLParser):
    """What a page loads and whether it holds anything inline."""

    def __init__(self) -> None:
        super().__init__()
        self.loads: list[str] = []
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        for name, _ in attrs:
            if name.startswith("on") or name == "style":
                self.inline.append(f"<{tag} {name}=...>")
        if tag == "style":
            self.inline.append("<style>")
        if tag == "script":
            self._in_script = True
            if not named.get("src"):
                self.inline.append("<script> without src")
        for name in ("src", "href"):
            if tag in ("script", "link", "img") and named.get(name):
                self.loads.append(str(named[name]))

    def handle_endtag(self, tag: str) -> None:
        self._in_script = self._in_script and tag != "script"

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append("script body")


def assert_strict(headers: object) -> None:
    csp = headers["content-security-policy"]  # type: ignore[index]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["script-src"] == "'self'"
    assert directives["default-src"] == "'none'"
    assert directives["frame-ancestors"] == "'none'"
    assert directives["form-action"] == "'none'"  # a native submit would put the key in a URL
    assert "unsafe" not in csp
    assert headers["x-frame-options"] == "DENY"  # type: ignore[index]
    assert headers["x-content-type-options"] == "nosniff"  # type: ignore[index]


@pytest.mark.parametrize("suffix", sorted(PAGES))
def test_every_page_is_strict_static_html_whose_assets_are_served(
    app: TestClient, suffix: str,
) -> None:
    resp = app.get(f"/console{suffix}")  # no key: the pages hold no data
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/html")
    assert_strict(resp.headers)
    page = Page()
    page.feed(resp.text)
    assert not page.inline, page.inline
    assert page.loads
    for url in page.loads:
        assert url.startswith("/console/static/"), url  # this origin only
        asset = app.get(url)
        assert asset.status_code == 200, url
        assert_strict(asset.headers)


def test_a_proxy_prefix_reaches_the_links_escaped(state_root: Path) -> None:
    app = create_app(embedded_settings(state_root))
    with TestClient(app, root_path='/pre"fix') as client:
        text = client.get("/console").text
    assert 'href="/pre&quot;fix/console/static/console.css"' in text
    assert '"/pre"fix' not in text


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_no_script_writes_html_or_evaluates_strings(script: Path) -> None:
    source = script.read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                 "new Function", "setAttribute(\"on", "setAttribute(\"style"):
        assert sink not in source, f"{script.name} uses {sink}"
    # The SVG namespace is a name, never fetched.
    names = source.replace('"http://www.w3.org/2000/svg"', "")
    assert not re.search(r"https?://", names), f"{script.name} names another origin"
    # The key is sent as a header only, never put in a URL.
    assert not re.search(r"[?&]key=", source)


def test_the_stylesheet_loads_nothing(app: TestClient) -> None:
    css = app.get("/console/static/console.css").text
    assert "url(" not in css and "@import" not in css
