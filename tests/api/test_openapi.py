"""``/openapi.json`` describes every route of the API, and nothing else."""

from __future__ import annotations

from starlette.routing import Route

from batchfarm.actors.api.app import routes


def described(grid) -> set[tuple[str, str]]:
    document = grid.client.get("/openapi.json").json()
    assert document["openapi"].startswith("3.1")
    return {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
    }


def test_every_route_is_described_and_every_description_is_a_route(grid):
    served = {
        (method, route.path.replace(":path", "").replace(":int", ""))
        for route in routes()
        if isinstance(route, Route)
        for method in route.methods or ()
        if method != "HEAD"
    }
    assert described(grid) == served


def test_every_operation_names_its_answers_and_its_path_parameters(grid):
    document = grid.client.get("/openapi.json").json()
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert operation["summary"], (method, path)
            assert operation["responses"], (method, path)
            named = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            wanted = {part[1:-1] for part in path.split("/") if part.startswith("{")}
            assert named == wanted, (method, path)
    schemas = document["components"]["schemas"]
    for name in ("Job", "JobDetail", "Stage", "Task", "Node", "Worker", "Error"):
        assert name in schemas
