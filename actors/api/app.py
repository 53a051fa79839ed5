"""The API's Starlette application: routes, the body-size cap, auth, and errors as JSON.

Every error is ``{"error": "<one line>", "status": <code>}`` (plus ``"field"`` when one field
is at fault): bad requests and spec errors 400, auth 401/403, unknown jobs, nodes, tasks,
objects and routes 404, a wrong method 405, an id taken by another spec or a lost node 409,
a body over ``[api] max_request_bytes`` 413, a backend that fails 503, a bug 500.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from importlib.metadata import PackageNotFoundError, version

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from batchfarm.actors.api import jobs, nodes, page, scaling
from batchfarm.actors.api.auth import BearerAuth
from batchfarm.actors.api.metrics import ApiMetrics
from batchfarm.actors.api.openapi import document
from batchfarm.actors.api.web import ApiContext, ApiError, context, error_response
from batchfarm.actors.errors import (
    BackendError,
    BlobKeyError,
    BlobNotFoundError,
    SpecError,
)
from batchfarm.actors.manager.accept import JobConflictError
from batchfarm.actors.manager.cancel import UnknownJobError

log = logging.getLogger(__name__)


def package_version() -> str:
    """The installed batchfarm's version, or ``unknown`` when run from a source tree."""
    try:
        return version("batchfarm")
    except PackageNotFoundError:
        return "unknown"


class BodyTooLargeError(Exception):
    """A request body grew past the cap while it was read."""


class BodyLimit:
    """ASGI middleware refusing bodies over ``max_bytes``: 413, read no further."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer 413 for a declared length over the cap; count what a chunked body sends."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit():
                    response = error_response(400, "Content-Length: expected a number of bytes")
                    await response(scope, receive, send)
                    return
                if int(value) > self.max_bytes:
                    await too_large(self.max_bytes)(scope, receive, send)
                    return
        seen = 0

        async def limited() -> dict[str, object]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLargeError
            return dict(message)

        await self.app(scope, limited, send)


def too_large(max_bytes: int) -> JSONResponse:
    """The 413 answer to a body over ``max_bytes``."""
    expected = "expected at most [api] max_request_bytes"
    return error_response(413, f"request body over {max_bytes} bytes: {expected}")


# ---------------------------------------------------------------------------------------
# The endpoints that are not about jobs or nodes


def health(request: Request) -> Response:
    """``GET /health``: the manager is up; its grid and version."""
    api = context(request)
    return JSONResponse(
        {"status": "ok", "grid": api.settings.grid.name, "version": package_version()}
    )


def metrics(request: Request) -> Response:
    """``GET /metrics``: Prometheus text, read from the store and queues now."""
    found: ApiMetrics = request.app.state.metrics
    return Response(found.render(), media_type=found.content_type)


def openapi(request: Request) -> Response:
    """``GET /openapi.json``: the API's OpenAPI 3.1 document."""
    return JSONResponse(document(package_version()))


# ---------------------------------------------------------------------------------------
# Errors as JSON


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    method, path = request.method, request.url.path
    if exc.status_code == 404:
        message = f"no route {method} {path}: see /openapi.json for the API's routes"
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        message = f"{method} is not allowed on {path}: expected {allowed or 'another method'}"
    else:
        message = str(exc.detail)
    return error_response(exc.status_code, message, headers=exc.headers)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.message, exc.field, exc.headers)


async def _spec_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SpecError)
    return error_response(400, str(exc), exc.field)


def _status(status: int) -> Callable[[Request, Exception], Awaitable[Response]]:
    async def handler(request: Request, exc: Exception) -> Response:
        return error_response(status, str(exc))

    return handler


async def _backend_error(request: Request, exc: Exception) -> Response:
    log.warning("api: %s %s: %s", request.method, request.url.path, exc)
    return error_response(503, f"a backend failed: {exc}")


async def _too_large(request: Request, exc: Exception) -> Response:
    return too_large(context(request).settings.api.max_request_bytes)


async def _bug(request: Request, exc: Exception) -> Response:
    # Starlette logs the traceback after this answer; the client gets one line.
    return error_response(500, f"internal error ({type(exc).__name__}): see the manager's log")


def routes() -> list[BaseRoute]:
    """Every route of the API."""
    return [
        Route(f"{jobs.PREFIX}/health", health, methods=["GET"]),
        *jobs.ROUTES,
        *nodes.ROUTES,
        *scaling.ROUTES,
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]


def create_app(api: ApiContext, metrics_: ApiMetrics) -> Starlette:
    """The API over ``api`` (the store, blob store, queues and settings) and its metrics."""
    settings = api.settings.api
    app = Starlette(
        # The web page is not part of the JSON API (nor of its OpenAPI document).
        routes=[*routes(), *page.routes()],
        middleware=[
            Middleware(BearerAuth, token=settings.token, read_token=settings.read_token),
            Middleware(BodyLimit, max_bytes=settings.max_request_bytes),
        ],
        exception_handlers={
            HTTPException: _http_error,
            ApiError: _api_error,
            SpecError: _spec_error,
            JobConflictError: _status(409),
            UnknownJobError: _status(404),
            BlobNotFoundError: _status(404),
            BlobKeyError: _status(404),
            BodyTooLargeError: _too_large,
            BackendError: _backend_error,
            Exception: _bug,
        },
    )
    app.state.api = api
    app.state.metrics = metrics_
    return app
