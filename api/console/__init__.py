"""The web console at `/console`: static pages and scripts served by the API.

The pages hold no data and no key. The browser keeps the API key in sessionStorage and the
scripts call the public /v1 API with it as a Bearer token, so the console sees exactly what
that key sees (one tenant's objects, or every tenant's for an admin key), under the same
limits, and the server side of the console needs no auth of its own.

Everything is sent with a strict Content-Security-Policy: scripts only from this origin
(no inline script), no frames, no form posts (a sign-in form that submitted natively would
put the key in a URL), and nothing fetched from anywhere else, so the console works on a
machine without the internet and a job's text can never run as script.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

CONSOLE_PATH = "/console"
ASSETS_PATH = f"{CONSOLE_PATH}/static"
_HERE = Path(__file__).parent


@dataclass(frozen=True)
class Page:
    name: str  # its body (pages/<name>.html) and script (static/<name>.js)
    title: str
    nav: str | None  # the header's link marked as the current one
    header: bool = True  # sign-in has none


# Path under /console → page.
PAGES = {
    "": Page("jobs", "Jobs", "jobs"),
    "/signin": Page("signin", "Sign in", None, header=False),
    "/job": Page("job", "Job", None),
    "/submit": Page("submit", "Submit", "submit"),
    "/batches": Page("batches", "Batches", "batches"),
    "/models": Page("models", "Models", "models"),
    "/keys": Page("keys", "Keys", "keys"),
}
_NAV = ("jobs", "submit", "batches", "models", "keys")
# blob: for images the scripts fetched with the key (an <img src> cannot send a header).
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Small files, and a new version must show at once after an upgrade.
    "Cache-Control": "no-cache",
}


class _Assets(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        return response


def install_console(app: FastAPI) -> None:
    app.mount(ASSETS_PATH, _Assets(directory=_HERE / "static"), name="console-assets")
    for suffix, page in PAGES.items():
        _add_page(app, f"{CONSOLE_PATH}{suffix}", render(page))


def render(page: Page) -> str:
    """The page's whole HTML, with `{{root}}` left for the request to fill in: every page
    shares one layout and, but for sign-in, one header."""
    header = ""
    if page.header:
        header = _read("header")
        for link in _NAV:
            current = ' aria-current="page"' if link == page.nav else ""
            header = header.replace(f"{{{{current:{link}}}}}", current)
    return (_read("layout").replace("{{title}}", page.title)
            .replace("{{script}}", page.name).replace("{{header}}", header)
            .replace("{{main}}", _read(page.name)))


def _read(name: str) -> str:
    return (_HERE / "pages" / f"{name}.html").read_text()


def _add_page(app: FastAPI, path: str, template: str) -> None:
    async def page(request: Request) -> HTMLResponse:
        # Behind a proxy's path prefix the links and the API calls carry it too.
        root = html.escape(request.scope.get("root_path", ""), quote=True)
        return HTMLResponse(template.replace("{{root}}", root), headers=SECURITY_HEADERS)

    app.add_api_route(path, page, methods=["GET"], include_in_schema=False,
                      name=f"console{path.replace('/', '-')}")
