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
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

CONSOLE_PATH = "/console"
ASSETS_PATH = f"{CONSOLE_PATH}/static"
_HERE = Path(__file__).parent
# Path under /console → page file.
PAGES = {
    "": "jobs.html",
    "/signin": "signin.html",
    "/job": "job.html",
    "/submit": "submit.html",
    "/batches": "batches.html",
    "/models": "models.html",
    "/keys": "keys.html",
}
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
    for suffix, name in PAGES.items():
        _add_page(app, f"{CONSOLE_PATH}{suffix}", (_HERE / "pages" / name).read_text())


def _add_page(app: FastAPI, path: str, template: str) -> None:
    async def page(request: Request) -> HTMLResponse:
        # Behind a proxy's path prefix the links and the API calls carry it too.
        root = html.escape(request.scope.get("root_path", ""), quote=True)
        return HTMLResponse(template.replace("{{root}}", root), headers=SECURITY_HEADERS)

    app.add_api_route(path, page, methods=["GET"], include_in_schema=False,
                      name=f"console{path.replace('/', '-')}")
