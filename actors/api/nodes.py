"""The nodes' endpoints: list nodes and workers, steer nodes (drain, pause, resume, cordon).

Commands travel on the control plane: the manager's loop owns the telemetry ROUTER (ZeroMQ
sockets are not thread-safe), so :attr:`ApiContext.send_command` hands each command to the
loop and waits for it to be sent. A cordon is the manager's own record (the store).
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from batchfarm.actors.api import views
from batchfarm.actors.api.web import ApiContext, ApiError, context, object_body, with_body
from batchfarm.actors.backends.store import NodeState, NodeView, WorkerView
from batchfarm.actors.messages import Command, CommandName

PREFIX = "/api/v1"
#: Node states in which a node hears no command.
GONE = (NodeState.LOST, NodeState.STOPPED)


def list_nodes(request: Request) -> Response:
    """``GET /nodes``: every node with its workers."""
    api = context(request)
    workers: defaultdict[str, list[WorkerView]] = defaultdict(list)
    for worker in api.store.workers():
        workers[worker.node_id].append(worker)
    nodes = api.store.nodes()
    return JSONResponse({"nodes": [views.node_view(n, workers[n.id]) for n in nodes]})


def _node(api: ApiContext, node_id: str) -> NodeView:
    for node in api.store.nodes():
        if node.id == node_id:
            return node
    raise ApiError(404, f"no node {node_id!r}: expected a node listed by GET /nodes")


def _command(request: Request, name: CommandName, args: dict[str, Any]) -> Response:
    api = context(request)
    node = _node(api, request.path_params["node"])
    if node.state in GONE:
        raise ApiError(409, f"node {node.id!r} is {node.state}: it hears no command")
    if api.send_command is None:
        raise ApiError(503, "node commands need the manager's control plane, not running here")
    command = Command(name, id=secrets.token_hex(8), args=args)
    try:
        sent = api.send_command(node.id, command)
    except TimeoutError:
        raise ApiError(
            503, f"the manager's loop did not send {name!r} in time: try again"
        ) from None
    return JSONResponse({"node": node.id, "command": name, "sent": sent}, 202)


def drain(request: Request) -> Response:
    """``POST /nodes/{id}/drain``: finish running tasks, take no new ones, then exit."""
    return _command(request, "drain", {})


def pause(request: Request, body: Any) -> Response:
    """``POST /nodes/{id}/pause``: take no new tasks; with ``force``, hand running ones back."""
    data = object_body(body, ("force",), required=False)
    force = data.get("force", False)
    if not isinstance(force, bool):
        raise ApiError(400, "request body: force: expected true or false", field="force")
    return _command(request, "pause", {"force": force})


def resume(request: Request) -> Response:
    """``POST /nodes/{id}/resume``: take tasks again after a pause."""
    return _command(request, "resume", {})


def cordon(request: Request, body: Any) -> Response:
    """``POST /nodes/{id}/cordon``: the node takes no new work (``reason`` optional).

    The mark is the store's; the manager's loop pauses cordoned nodes (softly: running
    tasks finish) within a second.
    """
    api = context(request)
    node_id = request.path_params["node"]
    reason = object_body(body, ("reason",), required=False).get("reason", "cordoned (API)")
    if not isinstance(reason, str):
        raise ApiError(400, "request body: reason: expected text", field="reason")
    if not api.store.set_cordoned(node_id, True, reason):
        raise ApiError(404, f"no node {node_id!r}: expected a node listed by GET /nodes")
    return JSONResponse({"node": node_id, "cordoned": True})


def uncordon(request: Request) -> Response:
    """``POST /nodes/{id}/uncordon``: the node takes work again, and is resumed.

    ``resumed`` says whether the resume went out (false for a node that does not report).
    """
    api = context(request)
    node = _node(api, request.path_params["node"])
    api.store.set_cordoned(node.id, False)
    resumed = False
    if node.state not in GONE and api.send_command is not None:
        try:
            resumed = api.send_command(node.id, Command("resume", id=secrets.token_hex(8)))
        except TimeoutError:
            resumed = False  # the mark is gone; the node can be resumed by hand
    return JSONResponse({"node": node.id, "cordoned": False, "resumed": resumed})


ROUTES: list[BaseRoute] = [
    Route(f"{PREFIX}/nodes", list_nodes, methods=["GET"]),
    Route(f"{PREFIX}/nodes/{{node}}/drain", drain, methods=["POST"]),
    Route(f"{PREFIX}/nodes/{{node}}/pause", with_body(pause), methods=["POST"]),
    Route(f"{PREFIX}/nodes/{{node}}/resume", resume, methods=["POST"]),
    Route(f"{PREFIX}/nodes/{{node}}/cordon", with_body(cordon), methods=["POST"]),
    Route(f"{PREFIX}/nodes/{{node}}/uncordon", uncordon, methods=["POST"]),
]
