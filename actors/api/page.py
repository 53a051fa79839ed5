"""The web page: static HTML, small JavaScript modules and a style sheet, no build step.

The files ship in ``static/`` beside this module and are served at ``/ui/`` (``/`` redirects
there). They hold no data: the page reads the same HTTP API as the CLI, from the browser,
with the bearer token the user types into it when the API has one. So the page's paths need
no token (:mod:`batchfarm.actors.api.auth` lets them through) and every answer carries a
Content-Security-Policy that allows scripts, styles and requests from this origin only.
"""

from __future__ import annotations

import os

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import PathLike, StaticFiles
from starlette.types import Scope

#: Where the page lives.
PAGE = "/ui/"

#: Scripts, styles, images and API calls from this origin only; no plugins, no framing.
CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
#: Headers of every file of the page. ``no-cache`` still lets the browser reuse a file
#: whose ETag did not change, and shows a new page at once after the manager is upgraded.
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class PageFiles(StaticFiles):
    """The page's files (index.html at ``/ui/``), each answered with :data:`HEADERS`."""

    def file_response(
        self,
        full_path: PathLike,
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        """The file (or a 304), with the page's security and cache headers."""
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(HEADERS)
        return response


def home(request: Request) -> Response:
    """``GET /``: the page is at ``/ui/``."""
    return RedirectResponse(PAGE, status_code=307)


def routes() -> list[BaseRoute]:
    """The page's routes: ``/`` and everything under ``/ui/``."""
    files = PageFiles(packages=[("batchfarm.actors.api", "static")], html=True)
    return [Route("/", home, methods=["GET"]), Mount(PAGE.rstrip("/"), app=files, name="ui")]
