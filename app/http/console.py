"""The reference console (console/, a Vite + React single-page app) at /console, `/` sending people
there, and the CORS origins a local frontend's dev server gets in development.

The console is built by `make console` into console/dist (TENANTRY_CONSOLE_DIR elsewhere); a server
without the build answers /console with a page that says how to make it, never a bare Not Found.
"""

from __future__ import annotations

import os
from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from app.settings import Settings

CONSOLE_DIR = Path(__file__).resolve().parents[2] / "console" / "dist"
# Development's CORS default: any port on the loopback names (Vite's localhost:5173, a CRA's :3000).
LOCAL_ORIGINS = r"https?://(localhost|127\.0\.0\.1|\[::1\])(:[0-9]{1,5})?"

_NOT_BUILT = """<!doctype html><html lang="en"><meta charset="utf-8"><title>Tenantry console</title>
<body style="font-family: system-ui; max-width: 40em; margin: 3em auto">
<h1>The console is not built</h1>
<p>Run <code>make console</code> in the repository (it needs Node.js and npm), then reload.
The API itself is at <a href="/graphql">/graphql</a>{graphiql}.</p></body></html>"""


def console_dir() -> Path:
    return Path(os.environ.get("TENANTRY_CONSOLE_DIR") or CONSOLE_DIR)


def console_routes(settings: Settings) -> list[BaseRoute]:
    built = console_dir()

    async def home(request: Request) -> Response:
        return RedirectResponse("/console/", status_code=302)

    async def not_built(request: Request) -> Response:
        graphiql = ', and GraphiQL at <a href="/graphiql/">/graphiql/</a>' if settings.graphiql else ""
        return HTMLResponse(_NOT_BUILT.replace("{graphiql}", graphiql), status_code=503)

    async def slash(request: Request) -> Response:
        return RedirectResponse("/console/", status_code=308)

    console: BaseRoute = (Mount("/console", StaticFiles(directory=built, html=True), name="console")
                          if (built / "index.html").is_file() else Route("/console/{rest:path}", not_built))
    return [Route("/", home), Route("/console", slash), console]
