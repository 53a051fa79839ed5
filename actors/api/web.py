"""What every endpoint shares: the API's context, its error type, JSON bodies and queries.

Endpoints are plain functions: Starlette runs them in its threadpool, so the store, blob
store and queue calls in them stay synchronous. An endpoint that reads a body is wrapped by
:func:`with_body`, which reads and decodes the body on the event loop (the size cap applies
there) and then runs the function in the threadpool.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from batchfarm.actors.backends.blobs import BlobStore
from batchfarm.actors.backends.queue import TaskQueue
from batchfarm.actors.backends.queue.priority import TaskQueues
from batchfarm.actors.backends.store import Store
from batchfarm.actors.messages import Command
from batchfarm.actors.settings import Settings

#: Sends a command to a node from the manager's loop; False if the node is not connected.
SendCommand = Callable[[str, Command], bool]


@dataclass(frozen=True)
class ApiContext:
    """What the endpoints work with, made once by the manager (or a test).

    ``tasks`` are the task queues (one per priority class) new jobs' and retried tasks'
    bodies go to; ``queues`` are the queues ``/metrics`` reports the depth of, by name.
    ``send_command`` is None where no manager loop runs (node commands then answer 503).
    """

    settings: Settings
    store: Store
    blobs: BlobStore
    tasks: TaskQueues
    queues: Mapping[str, TaskQueue]
    send_command: SendCommand | None = None


class ApiError(Exception):
    """An error answered as JSON: ``{"error": message, "status": status[, "field": field]}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.headers = dict(headers or {})


def error_response(
    status: int,
    message: str,
    field: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """The JSON every error is answered with."""
    body: dict[str, Any] = {"error": message, "status": status}
    if field is not None:
        body["field"] = field
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def context(request: Request) -> ApiContext:
    """The API's context, kept on the application's state."""
    found: ApiContext = request.app.state.api
    return found


def decode_json(raw: bytes) -> Any:
    """A request body as JSON: strict (no NaN, no repeated key); None for an empty body."""
    if not raw.strip():
        return None

    def no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(pairs)
        if len(out) != len(pairs):
            raise ValueError("a key repeats in one object")
        return out

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number")

    try:
        return json.loads(
            raw.decode("utf-8"), object_pairs_hook=no_repeats, parse_constant=no_constant
        )
    except (UnicodeDecodeError, ValueError) as e:
        raise ApiError(400, f"request body: expected JSON in UTF-8 ({e})") from None


def with_body(
    function: Callable[[Request, Any], Response],
) -> Callable[[Request], Awaitable[Response]]:
    """An endpoint that reads its JSON body, then runs ``function(request, body)`` in a thread."""

    async def endpoint(request: Request) -> Response:
        body = decode_json(await request.body())
        return await run_in_threadpool(function, request, body)

    endpoint.__name__ = function.__name__
    endpoint.__doc__ = function.__doc__
    return endpoint


def by_method(
    get: Callable[[Request], Response], post: Callable[[Request], Awaitable[Response]]
) -> Callable[[Request], Awaitable[Response]]:
    """One endpoint for a path that reads (``get``, run in a thread) and writes (``post``).

    One route per path, so a wrong method's 405 names every method the path allows.
    """

    async def endpoint(request: Request) -> Response:
        if request.method == "POST":
            return await post(request)
        return await run_in_threadpool(get, request)

    return endpoint


def object_body(body: Any, allowed: tuple[str, ...], *, required: bool = True) -> dict[str, Any]:
    """A body that must be a JSON object with only ``allowed`` keys (or, if not required, none)."""
    if body is None and not required:
        return {}
    if not isinstance(body, dict):
        raise ApiError(400, f"request body: expected a JSON object with keys {', '.join(allowed)}")
    for key in body:
        if key not in allowed:
            expected = f"unknown key: expected one of {', '.join(allowed)}"
            raise ApiError(400, f"request body: {key}: {expected}", field=key)
    return body


def int_query(request: Request, name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter from ``low`` to ``high``, or ``default`` when absent."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise ApiError(400, f"{name}={raw}: expected an integer from {low} to {high}", field=name)
    return value


def states_query(request: Request, name: str, known: tuple[str, ...]) -> list[str] | None:
    """A repeatable state parameter (``?state=a&state=b`` or ``?state=a,b``); None if absent."""
    values = [part for raw in request.query_params.getlist(name) for part in raw.split(",") if part]
    for value in values:
        if value not in known:
            expected = f"expected one of {', '.join(known)}"
            raise ApiError(400, f"{name}={value}: {expected}", field=name)
    return values or None
